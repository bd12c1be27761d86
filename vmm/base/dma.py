"""DmaSpace: how a device reaches guest memory.

Every emulated PCI device is handed one when it is attached. Without an
IOMMU it is a DirectDma (device addresses are guest-physical addresses);
with `--iommu vtd` it is akvm.iommu.dmaspace.TranslatedDma, which asks the
remapping unit to translate each access for the device's requester id.

A transfer that cannot be done raises DmaError and nothing else: a
translation fault (which the IOMMU has recorded, as hardware would) or an
address outside guest RAM (a master abort). The device decides what a
failed transfer means for it; the VMM never sees an exception.
"""
from __future__ import annotations

from akvm.base.memory import GuestMemory, GuestMemoryError


class DmaError(Exception):
    """A DMA that did not happen (or happened only up to `address`).

    `reason` is the VT-d fault reason when the IOMMU refused the access,
    None when the address was simply not guest RAM.
    """

    def __init__(self, message: str, address: int, write: bool, reason: int | None = None):
        super().__init__(message)
        self.address = address
        self.write = write
        self.reason = reason


class DmaSpace:
    """A device's view of memory: read/write by device (bus) address.

    `translate(address, size, write)` returns the guest-physical pieces a
    transfer covers, for code that copies through GuestMemory itself (the
    C virtqueue paths); it raises DmaError like read/write.
    """

    translated = False

    def __init__(self, memory: GuestMemory):
        self.memory = memory

    def translate(self, address: int, size: int, write: bool) -> list[tuple[int, int]]:
        raise NotImplementedError

    def untranslated(self) -> bool:
        """Whether device addresses are guest-physical addresses right now."""
        return not self.translated

    def fast_translator(self, passthrough: bool = False):
        """A struct akvm_dma_xlate * (dmaxlate.h) through which C code may translate
        this space's addresses for now, or None (then untranslated() DMA goes
        straight to RAM and the rest through this object). With passthrough, one
        also while the addresses are guest-physical (an IOMMU passing them
        through), for C that cannot ask untranslated() before each access. What it
        cannot translate stays this object's to do; call fast_done() after a use."""
        return None

    def fast_done(self) -> None:
        """C is done with the fast translator for now (its counts are collected)."""

    def read(self, address: int, size: int) -> bytes:
        if size <= 0:
            return b""
        parts = []
        for gpa, n in self.translate(address, size, False):
            parts.append(self._memory_read(gpa, n, address))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, address: int, data) -> None:
        data = memoryview(data).cast("B")
        done = 0
        for gpa, n in self.translate(address, len(data), True):
            try:
                self.memory.write(gpa, data[done:done + n])
            except GuestMemoryError:
                raise DmaError(f"DMA write to {address + done:#x} (guest-physical {gpa:#x}) "
                               "is outside guest RAM", address + done, True) from None
            done += n

    def views(self, address: int, size: int, write: bool) -> list[memoryview]:
        """Guest memory behind [address, address + size) as views, for I/O straight into
        or out of guest RAM (preadv/pwritev) without a copy in between."""
        out = []
        for gpa, n in self.translate(address, size, write):
            try:
                out.append(self.memory.view(gpa, n))
            except GuestMemoryError:
                raise DmaError(f"DMA {'write' if write else 'read'} of {address:#x} (guest-physical "
                               f"{gpa:#x}) is outside guest RAM", address, write) from None
        return out

    def _memory_read(self, gpa: int, n: int, address: int) -> bytes:
        try:
            return self.memory.read(gpa, n)
        except GuestMemoryError:
            raise DmaError(f"DMA read of {address:#x} (guest-physical {gpa:#x}) is outside "
                           "guest RAM", address, False) from None

    # --- fixed-size helpers (little-endian, as PCI devices see memory) -----------

    def read_u16(self, address: int) -> int:
        return int.from_bytes(self.read(address, 2), "little")

    def read_u32(self, address: int) -> int:
        return int.from_bytes(self.read(address, 4), "little")

    def read_u64(self, address: int) -> int:
        return int.from_bytes(self.read(address, 8), "little")

    def write_u16(self, address: int, value: int) -> None:
        self.write(address, (value & 0xFFFF).to_bytes(2, "little"))

    def write_u32(self, address: int, value: int) -> None:
        self.write(address, (value & 0xFFFF_FFFF).to_bytes(4, "little"))

    def write_u64(self, address: int, value: int) -> None:
        self.write(address, (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"))


class DirectDma(DmaSpace):
    """No IOMMU: device addresses are guest-physical addresses."""

    def translate(self, address: int, size: int, write: bool) -> list[tuple[int, int]]:
        if address < 0 or size < 0 or not self.memory.contains(address, max(size, 1)):
            raise DmaError(f"DMA {'write' if write else 'read'} of {address:#x}+{size:#x} is "
                           "outside guest RAM", address, write)
        return [(address, size)] if size else []

    def __repr__(self) -> str:
        return "DirectDma()"
