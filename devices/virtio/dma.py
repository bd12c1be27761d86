"""The DMA interface a virtio device reaches guest memory through.

Every ring and buffer access of a device goes through one object with

    read(addr, n) -> bytes       n bytes at bus address addr
    write(addr, data) -> None    data at bus address addr

that raises an exception from DMA_ERRORS when the access cannot be made
(outside guest RAM, or refused by the IOMMU). The IOMMU's DmaSpace objects
(iommu.dmaspace: DirectDma(memory), TranslatedDma(iommu, requester_id))
have this shape; GuestMemoryDma is the direct one, for when iommu/ has none.
"""
from __future__ import annotations

from vmm.memory import GuestMemory, GuestMemoryError


class DmaError(Exception):
    """A device access to memory that could not be made."""


try:                                    # the IOMMU's error, when iommu/ provides one
    from iommu.dmaspace import DmaError as _IommuDmaError
except ImportError:
    DMA_ERRORS: tuple[type[Exception], ...] = (DmaError,)
else:
    DMA_ERRORS = (DmaError, _IommuDmaError)


class GuestMemoryDma:
    """Bus address = guest-physical address: DMA without an IOMMU."""

    def __init__(self, memory: GuestMemory):
        self.memory = memory

    def read(self, addr: int, n: int) -> bytes:
        try:
            return self.memory.read(addr, n)
        except GuestMemoryError as e:
            raise DmaError(str(e)) from None

    def write(self, addr: int, data) -> None:
        try:
            self.memory.write(addr, data)
        except GuestMemoryError as e:
            raise DmaError(str(e)) from None


def direct_dma(memory: GuestMemory):
    """The direct DmaSpace: iommu.dmaspace.DirectDma when it exists, else GuestMemoryDma."""
    try:
        from iommu.dmaspace import DirectDma
    except ImportError:
        return GuestMemoryDma(memory)
    return DirectDma(memory)
