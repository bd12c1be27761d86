"""PCI: configuration spaces, the PciDevice base class, and the host side.

  config   a function's configuration space: bytes, per-bit write masks,
           capability lists (PCI Local Bus 3.0 ch. 6, PCIe extended space)
  device   PciDevice: type 0 header, BARs that move on the buses, INTx,
           MSI and MSI-X, signal(vector)
  host     PciHostBridge (00:00.0) and PciRoot: mechanism #1 (0xCF8/0xCFC),
           ECAM, slot and BAR allocation, INTx -> IOAPIC GSI routing

Device models build on PciDevice; only the machine builds a PciRoot.
"""
from akvm.devices.pci.config import ConfigSpace
from akvm.devices.pci.device import Bar, BarKind, Msi, MsiX, PciAddress, PciDevice, PciError
from akvm.devices.pci.host import IntxRoute, PciHostBridge, PciRoot

__all__ = ["Bar", "BarKind", "ConfigSpace", "IntxRoute", "Msi", "MsiX", "PciAddress",
           "PciDevice", "PciError", "PciHostBridge", "PciRoot"]
