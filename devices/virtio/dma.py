"""The DMA interface a virtio device reaches guest memory through.

Every ring and buffer access of a device goes through one DmaSpace
(akvm.iommu.dmaspace) with

    read(addr, n) -> bytes       n bytes at bus address addr
    write(addr, data) -> None    data at bus address addr

that raises DmaError when the access cannot be made (outside guest RAM, or
refused by the IOMMU, which records the fault). DirectDma(memory) is the
space without an IOMMU; TranslatedDma(iommu, requester_id) the one behind it.
"""
from akvm.iommu.dmaspace import DirectDma, DmaError

__all__ = ["DirectDma", "DmaError"]
