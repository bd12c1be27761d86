"""TranslatedDma: a device's DMA remapped by the IOMMU for its requester id.

The DmaSpace it implements (read, write, views, translate; DmaError and
nothing else) is akvm.base.dma's, beside DirectDma, the space without an
IOMMU.
"""
from __future__ import annotations

import logging
from typing import Protocol

from akvm.base.dma import DmaError, DmaSpace
from akvm.base.memory import GuestMemory
from akvm.iommu.fastdma import FastTranslator
from akvm.iommu.translate import TranslationFault, format_sid

log = logging.getLogger("akvm.iommu")


class Translator(Protocol):
    """What TranslatedDma needs from an IOMMU (akvm.iommu.vtd.VtdIommu)."""
    memory: GuestMemory

    def translate(self, sid: int, address: int, write: bool) -> tuple[int, int]:
        """(guest-physical address, bytes valid from it) or raise TranslationFault."""

    def untranslated(self, sid: int) -> bool:
        """Whether sid's DMA reaches guest-physical addresses unchanged right now."""


class TranslatedDma(DmaSpace):
    """DMA remapped by an IOMMU for one requester id (source id)."""

    translated = True

    def __init__(self, iommu: Translator, requester_id: int):
        super().__init__(iommu.memory)
        self.iommu = iommu
        self.requester_id = requester_id & 0xFFFF
        self._fast: FastTranslator | None = None

    def translate(self, address: int, size: int, write: bool) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        end = address + size
        if address < 0 or end > 1 << 64:
            raise DmaError(f"DMA of {address:#x}+{size:#x} is beyond 64-bit bus addresses",
                           address, write)
        while address < end:
            try:
                gpa, span = self.iommu.translate(self.requester_id, address, write)
            except TranslationFault as f:
                raise DmaError(f"DMA {'write' if write else 'read'} of {address:#x} by "
                               f"{format_sid(self.requester_id)} blocked by the IOMMU: {f}",
                               address, write, f.reason) from None
            except Exception as e:          # the IOMMU promises not to; a device must not crash
                log.error("%r: translation of %#x failed: %r", self, address, e)
                raise DmaError(f"DMA of {address:#x} failed: {e!r}", address, write) from None
            n = min(span, end - address)
            if n <= 0:                      # cannot happen below 2^64; never loop forever
                raise DmaError(f"DMA of {address:#x}: empty translation", address, write)
            if out and out[-1][0] + out[-1][1] == gpa:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((gpa, n))
            address += n
        return out

    def fast_translator(self, passthrough: bool = False):
        """C may translate this requester's IOTLB hits itself (akvm.iommu.fastdma);
        with passthrough, also pass its DMA through while the unit does."""
        if getattr(self.iommu, "doorbell", None) is None:
            return None
        if self._fast is None:
            self._fast = FastTranslator(self.iommu, self.requester_id)
        return self._fast.get(passthrough)

    def fast_done(self) -> None:
        if self._fast is not None:
            self._fast.done()

    def untranslated(self) -> bool:
        """True while the unit passes this requester's DMA through unchanged
        (translation off, or a pass-through context covering RAM): a device
        may then reach guest RAM directly, as with DirectDma, until the guest
        changes the context and invalidates it."""
        return self.iommu.untranslated(self.requester_id)

    def __repr__(self) -> str:
        return f"TranslatedDma({format_sid(self.requester_id)})"

