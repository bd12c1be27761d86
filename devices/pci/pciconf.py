"""PCI configuration accesses in C (pciconf.c), for PciRoot (host.py, the twin).

A bus scan (Akaros reads the vendor id of all 8192 bus/device pairs) then
never enters Python: C holds the mechanism #1 latch and answers every
CONFIG_DATA or ECAM access that reaches no function present.
"""
from __future__ import annotations

from akvm.base.native import ffi, lib
from akvm.base.runloop import MMIO, PIO, FastPath

CONFIG_ADDRESS = lib.AKVM_PCI_CONFIG_ADDRESS
CONFIG_DATA = lib.AKVM_PCI_CONFIG_DATA


class PciConfShortcut:
    """PCI configuration accesses in C (devices/pci/pciconf.c): the 0xCF8 latch,
    and CONFIG_DATA / ECAM accesses to functions not marked present."""

    def __init__(self, fastpath: FastPath, ecam_base: int, ecam_size: int):
        self.handle = ffi.gc(lib.akvm_pci_conf_new(ecam_base, ecam_size), lib.akvm_pci_conf_free)
        if self.handle == ffi.NULL:
            raise MemoryError("akvm_pci_conf_new")
        self._hids = [fastpath.add(PIO, CONFIG_ADDRESS, 4, "akvm_pci_conf_complete", self),
                      fastpath.add(PIO, CONFIG_DATA, 4, "akvm_pci_conf_complete", self),
                      fastpath.add(MMIO, ecam_base, ecam_size, "akvm_pci_conf_complete", self)]

    @property
    def latch(self) -> int:
        return lib.akvm_pci_conf_latch(self.handle)

    @latch.setter
    def latch(self, value: int) -> None:
        lib.akvm_pci_conf_set_latch(self.handle, value & 0xFFFFFFFF)

    def set_present(self, bdf: int, present: bool) -> None:
        lib.akvm_pci_conf_set_present(self.handle, bdf, int(present))

    def stats(self) -> dict:
        s = ffi.new("struct akvm_pci_conf_stats *")
        lib.akvm_pci_conf_stats(self.handle, s)
        return {"latch_accesses": s.latch_accesses, "absent_reads": s.absent_reads,
                "absent_writes": s.absent_writes}
