"""The physical layout of the akvm PC: where firmware tables, chipset MMIO and
fixed I/O ports live, and the e820 map a guest is given.

One place for these numbers, so the ACPI tables, the MP table, the device
models and the boot loader cannot disagree about them.
"""
from __future__ import annotations

from typing import NamedTuple

from akvm.base.memory import FOUR_GIB, PCI_HOLE_START

KiB = 1024
MiB = 1024 * KiB

# --- Low memory -------------------------------------------------------------
# Conventional memory ends at 639 KiB; the last KiB is the EBDA (reserved).
EBDA_START = 0x9FC00
LOW_RAM_END = 0xA0000          # start of the legacy VGA hole
HIGH_RAM_START = 0x100000      # 1 MiB

# The BIOS area: guests (Akaros, Linux) scan it for the RSDP and the MP
# floating pointer, so our firmware tables live here. ACPI takes the first
# 64 KiB, the MP table the second (Linux only scans 0xF0000-0xFFFFF for _MP_).
BIOS_AREA_START = 0xE0000
BIOS_AREA_END = 0x100000
ACPI_AREA_START = 0xE0000
ACPI_AREA_END = 0xF0000
MPTABLE_AREA_START = 0xF0000
MPTABLE_AREA_END = 0x100000

# --- The 32-bit hole (PCI_HOLE_START .. 4 GiB) -------------------------------
PCI_MMIO_START = 0xC000_0000   # 32-bit PCI BAR window
PCI_MMIO_END = 0xE000_0000     # exclusive
ECAM_BASE = 0xE000_0000        # PCIe enhanced configuration space (MCFG)
ECAM_SIZE = 256 * MiB          # 1 MiB per bus
ECAM_START_BUS = 0
ECAM_END_BUS = 255
ECAM_SEGMENT = 0

# virtio-mmio devices: one 4 KiB page each in the hole between ECAM and the
# IOAPIC (not the PCI BAR window), each with its own ISA-range IOAPIC pin that
# no PC device uses here (PCI INTx has GSIs 16-23). Guests learn them from
# `virtio_mmio.device=SIZE@ADDR:IRQ` on their command line (akvm prints it).
VIRTIO_MMIO_BASE = 0xF000_0000
VIRTIO_MMIO_STRIDE = 0x1000
VIRTIO_MMIO_GSIS = (5, 10, 11, 3, 6, 7, 14, 15)
VIRTIO_MMIO_END = VIRTIO_MMIO_BASE + VIRTIO_MMIO_STRIDE * len(VIRTIO_MMIO_GSIS)

IOAPIC_BASE = 0xFEC0_0000
IOAPIC_SIZE = 0x1000
# KVM's in-kernel IOAPIC resets its ID register to 0; the MADT and the MP
# table say the same, and a DMAR device scope can name it by this constant.
IOAPIC_ID = 0
IOAPIC_GSI_BASE = 0
IOAPIC_PINS = 24               # KVM_IOAPIC_NUM_PINS
IOAPIC_VERSION = 0x11          # what KVM's IOAPIC version register reports

VTD_BASE = 0xFED9_0000         # VT-d remapping unit register page
VTD_SIZE = 0x1000

LAPIC_BASE = 0xFEE0_0000
LAPIC_SIZE = 0x1000
LAPIC_VERSION = 0x14           # integrated APIC, as KVM reports it

# xAPIC IDs are 8 bits and 0xFF is the broadcast ID.
MAX_CPUS = 255

# --- Fixed I/O ports ----------------------------------------------------------
CMOS_PORT = 0x70               # index (bit 7 = NMI disable); 0x71 = data
CMOS_PORT_SIZE = 2

ACPI_PM_BASE = 0x600           # one 12-byte block, see devices/acpi_pm.py
ACPI_PM_SIZE = 12
PM1A_EVT_BLK = 0x600           # PM1_STS (2) + PM1_EN (2)
PM1_EVT_LEN = 4
PM1A_CNT_BLK = 0x604           # PM1_CNT (2)
PM1_CNT_LEN = 2
PM_TMR_BLK = 0x608             # PM_TMR (4, 24 bits used)
PM_TMR_LEN = 4
SCI_IRQ = 9

RESET_PORT = 0xCF9             # reset control register
RESET_VALUE = 0x06             # full reset (SYS_RST | RST_CPU)

# --- e820 ---------------------------------------------------------------------
E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3


class MemoryRegion(NamedTuple):
    """One e820 entry: [base, base + size) of the given type."""
    base: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.base + self.size


def memory_map(ram_size: int) -> list[MemoryRegion]:
    """The e820 map for a guest with `ram_size` bytes of RAM, sorted by base.

    RAM that does not fit below the PCI hole continues at 4 GiB, as
    GuestMemory.anonymous() lays it out.
    """
    if ram_size <= 0:
        raise ValueError(f"RAM size must be positive, not {ram_size}")
    regions = [
        MemoryRegion(0, min(ram_size, EBDA_START), E820_RAM),
    ]
    if ram_size > EBDA_START:
        regions.append(MemoryRegion(EBDA_START, LOW_RAM_END - EBDA_START, E820_RESERVED))
    regions.append(MemoryRegion(BIOS_AREA_START, BIOS_AREA_END - BIOS_AREA_START, E820_RESERVED))
    low_end = min(ram_size, PCI_HOLE_START)
    if low_end > HIGH_RAM_START:
        regions.append(MemoryRegion(HIGH_RAM_START, low_end - HIGH_RAM_START, E820_RAM))
    if ram_size > PCI_HOLE_START:
        regions.append(MemoryRegion(FOUR_GIB, ram_size - PCI_HOLE_START, E820_RAM))
    regions += [
        MemoryRegion(ECAM_BASE, ECAM_SIZE, E820_RESERVED),
        MemoryRegion(VIRTIO_MMIO_BASE, VIRTIO_MMIO_END - VIRTIO_MMIO_BASE, E820_RESERVED),
        MemoryRegion(IOAPIC_BASE, IOAPIC_SIZE, E820_RESERVED),
        MemoryRegion(VTD_BASE, VTD_SIZE, E820_RESERVED),
        MemoryRegion(LAPIC_BASE, LAPIC_SIZE, E820_RESERVED),
    ]
    return sorted(regions, key=lambda r: r.base)
