"""The ACPI DMAR table (Intel VT-d 3.x chapter 8): where the remapping unit is.

One DRHD with INCLUDE_PCI_ALL at layout.VTD_BASE, segment 0: every PCI
device behind it. The host address width is the unit's (aw). No interrupt
remapping (flags 0), so no IOAPIC/HPET device scopes and no RMRRs.
Pass the result to build_acpi(extra_tables=[...]).
"""
from __future__ import annotations

from construct import Bytes, Int8ul, Int16ul, Int64ul, Padding, Struct

from akvm.tables import layout
from akvm.tables.acpi import sdt

DMAR_REVISION = 1
DMAR_INTR_REMAP = 1 << 0
DMAR_X2APIC_OPT_OUT = 1 << 1

DRHD_TYPE = 0
DRHD_INCLUDE_PCI_ALL = 1 << 0

DmarBody = Struct(
    "host_address_width" / Int8ul,      # width - 1
    "flags" / Int8ul,
    "reserved" / Bytes(10),
)

Drhd = Struct(
    "type" / Int16ul,
    "length" / Int16ul,
    "flags" / Int8ul,
    Padding(1),
    "segment" / Int16ul,
    "register_base" / Int64ul,
)


def build_drhd(base: int, *, include_pci_all: bool = True, segment: int = 0) -> bytes:
    return Drhd.build(dict(type=DRHD_TYPE, length=Drhd.sizeof(),
                           flags=DRHD_INCLUDE_PCI_ALL if include_pci_all else 0,
                           segment=segment, register_base=base))


def build_dmar(host_address_width: int, base: int = layout.VTD_BASE) -> bytes:
    """A complete DMAR table (header included) for one INCLUDE_PCI_ALL unit."""
    if not 32 <= host_address_width <= 64:
        raise ValueError(f"host address width {host_address_width} is out of range")
    body = DmarBody.build(dict(host_address_width=host_address_width - 1, flags=0,
                               reserved=bytes(10)))
    return sdt(b"DMAR", DMAR_REVISION, body + build_drhd(base))
