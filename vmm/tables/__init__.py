"""Firmware tables the guest finds in the BIOS area: ACPI and the Intel MP table.

layout.py holds the physical layout they describe (and the e820 map).
"""
from vmm.tables.layout import MemoryRegion, memory_map
from vmm.tables.acpi import AcpiTables, build_acpi
from vmm.tables.mptable import MpTable, build_mptable

__all__ = ["AcpiTables", "MemoryRegion", "MpTable", "build_acpi", "build_mptable", "memory_map"]
