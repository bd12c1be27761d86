"""The Intel MultiProcessor Specification 1.4 table for the akvm PC.

Akaros parses the MP table before the MADT and prefers it for IOAPIC and ISA
interrupt routing, so it must agree with the MADT: the same APIC IDs, the same
IOAPIC ID and address, and ISA IRQ n on IOAPIC pin n (KVM's default GSI
routing), with IRQ 9 (the SCI) level-triggered, active high.

Bus IDs: PCI bus 0 has MP bus ID 0 and ISA has ID 1. The spec assigns IDs
from zero, and Akaros (like Plan 9) finds a PCI device's I/O interrupt entry
by its PCI bus number, so a PCI bus's ID must equal its bus number.
"""
from __future__ import annotations

from dataclasses import dataclass

from construct import Bytes, Const, Int8ul, Int16ul, Int32ul, Padding, Struct

from akvm.tables import layout
from akvm.tables.acpi import SCI_INTI_FLAGS, checksum_fix

SPEC_REV = 4                       # MP 1.4
PCI_BUS_ID = 0
ISA_BUS_ID = 1
ALL_LOCAL_APICS = 0xFF

OEM_ID = b"AKVM    "
PRODUCT_ID = b"AKVM PC     "

# A plausible processor: family 6, model 15, stepping 1, and the CPUID.1 EDX
# features every x86-64 CPU has (FPU VME DE PSE TSC MSR PAE MCE CX8 APIC SEP
# MTRR PGE MCA CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2).
DEFAULT_CPU_SIGNATURE = (6 << 8) | (15 << 4) | 1
DEFAULT_CPU_FEATURES = sum(1 << b for b in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14,
                                            15, 16, 17, 19, 23, 24, 25, 26))

# 4.1 MP Floating Pointer Structure
MpFloatingPointer = Struct(
    "signature" / Const(b"_MP_"),
    "physical_address_pointer" / Int32ul,
    "length" / Const(1, Int8ul),            # in 16-byte units
    "spec_rev" / Int8ul,
    "checksum" / Int8ul,
    "feature1" / Int8ul,                    # 0: a configuration table is present
    "feature2" / Int8ul,                    # bit 7 IMCRP clear: virtual wire mode
    Padding(3),
)
FLOATING_POINTER_SIZE = 16

# 4.2 MP Configuration Table Header
MpConfigHeader = Struct(
    "signature" / Const(b"PCMP"),
    "base_table_length" / Int16ul,
    "spec_rev" / Int8ul,
    "checksum" / Int8ul,
    "oem_id" / Bytes(8),
    "product_id" / Bytes(12),
    "oem_table_pointer" / Int32ul,
    "oem_table_size" / Int16ul,
    "entry_count" / Int16ul,
    "local_apic_address" / Int32ul,
    "extended_table_length" / Int16ul,
    "extended_table_checksum" / Int8ul,
    Padding(1),
)
CONFIG_HEADER_SIZE = 44

# 4.3 Base MP configuration table entries
ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_IO_INTERRUPT, ENTRY_LOCAL_INTERRUPT = range(5)

CPU_ENABLED = 1 << 0
CPU_BOOTSTRAP = 1 << 1
IOAPIC_ENABLED = 1 << 0

# Interrupt types (Table 4-11)
INT_VECTORED, INT_NMI, INT_SMI, INT_EXTINT = range(4)

MpProcessor = Struct(
    "entry_type" / Const(ENTRY_PROCESSOR, Int8ul),
    "local_apic_id" / Int8ul,
    "local_apic_version" / Int8ul,
    "cpu_flags" / Int8ul,
    "cpu_signature" / Int32ul,
    "feature_flags" / Int32ul,
    Padding(8),
)
MpBus = Struct(
    "entry_type" / Const(ENTRY_BUS, Int8ul),
    "bus_id" / Int8ul,
    "bus_type" / Bytes(6),
)
MpIoApic = Struct(
    "entry_type" / Const(ENTRY_IOAPIC, Int8ul),
    "ioapic_id" / Int8ul,
    "ioapic_version" / Int8ul,
    "ioapic_flags" / Int8ul,
    "ioapic_address" / Int32ul,
)
MpIoInterrupt = Struct(
    "entry_type" / Const(ENTRY_IO_INTERRUPT, Int8ul),
    "interrupt_type" / Int8ul,
    "flags" / Int16ul,                      # polarity 1:0, trigger 3:2 (as the MADT's)
    "source_bus_id" / Int8ul,
    "source_bus_irq" / Int8ul,
    "dest_ioapic_id" / Int8ul,
    "dest_ioapic_intin" / Int8ul,
)
MpLocalInterrupt = Struct(
    "entry_type" / Const(ENTRY_LOCAL_INTERRUPT, Int8ul),
    "interrupt_type" / Int8ul,
    "flags" / Int16ul,
    "source_bus_id" / Int8ul,
    "source_bus_irq" / Int8ul,
    "dest_local_apic_id" / Int8ul,
    "dest_local_apic_lintin" / Int8ul,
)


@dataclass(frozen=True)
class PciInterrupt:
    """A PCI INTx line wired to an IOAPIC pin: device 0-31 on bus 0, pin 0-3 = INTA#-INTD#.

    Flags 0 mean "conforms to the bus": level-triggered, active low for PCI.
    (KVM's IOAPIC takes the line level as asserted whatever the polarity.)
    """
    device: int
    pin: int
    ioapic_pin: int


@dataclass
class MpTable:
    """Where build_mptable put things."""
    floating_pointer: int
    config_table: int
    end: int              # first byte after the configuration table


class MpTableError(ValueError):
    """The table cannot be built as asked."""


def _entries(cpus: int, pci_interrupts, cpu_signature: int, cpu_features: int) -> list[bytes]:
    entries = [MpProcessor.build(dict(
        local_apic_id=i, local_apic_version=layout.LAPIC_VERSION,
        cpu_flags=CPU_ENABLED | (CPU_BOOTSTRAP if i == 0 else 0),
        cpu_signature=cpu_signature, feature_flags=cpu_features)) for i in range(cpus)]
    entries.append(MpBus.build(dict(bus_id=PCI_BUS_ID, bus_type=b"PCI   ")))
    entries.append(MpBus.build(dict(bus_id=ISA_BUS_ID, bus_type=b"ISA   ")))
    entries.append(MpIoApic.build(dict(ioapic_id=layout.IOAPIC_ID,
                                       ioapic_version=layout.IOAPIC_VERSION,
                                       ioapic_flags=IOAPIC_ENABLED,
                                       ioapic_address=layout.IOAPIC_BASE)))
    for irq in range(16):
        if irq == 2:           # the cascade from the slave 8259: no device
            continue
        entries.append(MpIoInterrupt.build(dict(
            interrupt_type=INT_VECTORED,
            flags=SCI_INTI_FLAGS if irq == layout.SCI_IRQ else 0,
            source_bus_id=ISA_BUS_ID, source_bus_irq=irq,
            dest_ioapic_id=layout.IOAPIC_ID, dest_ioapic_intin=irq)))
    for p in pci_interrupts:
        if not (0 <= p.device < 32 and 0 <= p.pin < 4 and 0 <= p.ioapic_pin < layout.IOAPIC_PINS):
            raise MpTableError(f"bad PCI interrupt {p}")
        entries.append(MpIoInterrupt.build(dict(
            interrupt_type=INT_VECTORED, flags=0,
            source_bus_id=PCI_BUS_ID, source_bus_irq=(p.device << 2) | p.pin,
            dest_ioapic_id=layout.IOAPIC_ID, dest_ioapic_intin=p.ioapic_pin)))
    # The virtual-wire wiring every local APIC has: 8259 output on LINT0, NMI on LINT1.
    for lint, kind in ((0, INT_EXTINT), (1, INT_NMI)):
        entries.append(MpLocalInterrupt.build(dict(
            interrupt_type=kind, flags=0, source_bus_id=ISA_BUS_ID, source_bus_irq=0,
            dest_local_apic_id=ALL_LOCAL_APICS, dest_local_apic_lintin=lint)))
    return entries


def build_mptable(memory, cpus: int, base: int = layout.MPTABLE_AREA_START, *,
                  limit: int = layout.MPTABLE_AREA_END, pci_interrupts=(),
                  cpu_signature: int = DEFAULT_CPU_SIGNATURE,
                  cpu_features: int = DEFAULT_CPU_FEATURES) -> MpTable:
    """Write the floating pointer at `base` (16-byte aligned) and the
    configuration table right after it, inside [base, limit)."""
    if not 1 <= cpus <= layout.MAX_CPUS:
        raise MpTableError(f"cpus must be 1..{layout.MAX_CPUS}, not {cpus}")
    if base % 16:
        raise MpTableError(f"MP floating pointer base {base:#x} is not 16-byte aligned")
    if not (layout.BIOS_AREA_START <= base < limit <= layout.BIOS_AREA_END):
        raise MpTableError(f"MP table area [{base:#x}, {limit:#x}) is not inside the BIOS area")

    entries = _entries(cpus, pci_interrupts, cpu_signature, cpu_features)
    body = b"".join(entries)
    length = CONFIG_HEADER_SIZE + len(body)
    config_addr = base + FLOATING_POINTER_SIZE
    end = config_addr + length
    if end > limit:
        raise MpTableError(f"MP table needs {end - base:#x} bytes; area is "
                           f"[{base:#x}, {limit:#x})")
    if not memory.contains(base, end - base):
        raise MpTableError(f"guest RAM does not cover the MP table at [{base:#x}, {end:#x})")

    config = bytearray(MpConfigHeader.build(dict(
        base_table_length=length, spec_rev=SPEC_REV, checksum=0, oem_id=OEM_ID,
        product_id=PRODUCT_ID, oem_table_pointer=0, oem_table_size=0,
        entry_count=len(entries), local_apic_address=layout.LAPIC_BASE,
        extended_table_length=0, extended_table_checksum=0)) + body)
    config[7] = checksum_fix(config)

    pointer = bytearray(MpFloatingPointer.build(dict(
        physical_address_pointer=config_addr, spec_rev=SPEC_REV, checksum=0,
        feature1=0, feature2=0)))
    pointer[10] = checksum_fix(pointer)

    memory.write(base, pointer)
    memory.write(config_addr, config)
    return MpTable(floating_pointer=base, config_table=config_addr, end=end)
