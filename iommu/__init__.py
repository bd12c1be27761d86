"""Intel VT-d emulation and the DMA address spaces of devices.

  dmaspace      DmaSpace: DirectDma (no IOMMU) and TranslatedDma (through the
                remapping unit for one requester id); DmaError
  vtd           VtdIommu: the register page, GCMD/GSTS, translate() with its
                caches; VtdConfig (`--iommu vtd,...` options, CAP/ECAP)
  translate     root/context tables and the second-level walk; fault reasons
  cache         the context cache and the IOTLB (bounded, domain-tagged)
  invalidation  CCMD / IOTLB registers and the invalidation queue
  faults        FSTS, fault recording registers, fault and completion events
  checker       the IOTLB coherence checker (`check=on|stop`)

The machine builds one VtdIommu when asked, maps its registers at
layout.VTD_BASE, describes it in a DMAR table (vmm/tables/dmar.py) and
hands each PCI device a TranslatedDma; without an IOMMU devices get a
DirectDma. Nothing is imported here: a machine without an IOMMU loads
only dmaspace.
"""
