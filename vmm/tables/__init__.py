"""Firmware tables the guest finds in the BIOS area: ACPI and the Intel MP table.

layout.py holds the physical layout they describe (and the e820 map);
acpi.py, dmar.py and mptable.py build the tables with construct. Nothing
is imported here, so that reading the layout does not load construct.
"""
