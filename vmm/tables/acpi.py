"""ACPI tables for the akvm PC, written from the ACPI 6.3 specification.

Akaros asserts an RSDP and a MADT early in boot, counts cores from the MADT's
Processor Local APIC entries, and uses the FADT, MCFG and (later) DMAR when
present. We give it: RSDP (revision 2) -> XSDT and RSDT -> FADT (-> FACS,
DSDT), MADT, MCFG and any extra tables the caller passes (the DMAR).
Everything lives in the BIOS area, where the guest scans for the RSDP.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from construct import (Array, Bytes, Const, Default, Int8ul, Int16ul, Int32ul,
                       Int64ul, Padding, Struct)

from akvm.tables import layout

OEM_ID = b"AKVM  "
OEM_REVISION = 1
CREATOR_ID = b"AKVM"
CREATOR_REVISION = 1

HEADER_SIZE = 36


class AcpiError(ValueError):
    """The tables cannot be built as asked (too big, bad extra table, ...)."""


def checksum_fix(data: bytes) -> int:
    """The byte that makes `data` sum to zero mod 256 (the ACPI/MP checksum rule)."""
    return (-sum(data)) & 0xFF


def _sum_ok(data: bytes) -> bool:
    return sum(data) & 0xFF == 0


# --- Common structures (ACPI 6.3 section 5.2) -------------------------------

# 5.2.6 System Description Table Header
SdtHeader = Struct(
    "signature" / Bytes(4),
    "length" / Int32ul,
    "revision" / Int8ul,
    "checksum" / Int8ul,
    "oem_id" / Bytes(6),
    "oem_table_id" / Bytes(8),
    "oem_revision" / Int32ul,
    "creator_id" / Bytes(4),
    "creator_revision" / Int32ul,
)

# 5.2.3.2 Generic Address Structure
ADDRESS_SPACE_SYSTEM_MEMORY = 0
ADDRESS_SPACE_SYSTEM_IO = 1
ACCESS_BYTE, ACCESS_WORD, ACCESS_DWORD = 1, 2, 3

Gas = Struct(
    "address_space_id" / Int8ul,
    "register_bit_width" / Int8ul,
    "register_bit_offset" / Int8ul,
    "access_size" / Int8ul,
    "address" / Int64ul,
)
GAS_NONE = dict(address_space_id=0, register_bit_width=0, register_bit_offset=0,
                access_size=0, address=0)


def io_gas(port: int, length: int, access_size: int) -> dict:
    """A Generic Address for an I/O port block of `length` bytes."""
    return dict(address_space_id=ADDRESS_SPACE_SYSTEM_IO, register_bit_width=8 * length,
                register_bit_offset=0, access_size=access_size, address=port)


def sdt(signature: bytes, revision: int, body: bytes, *, oem_table_id: bytes | None = None) -> bytes:
    """A complete system description table: header (length, checksum) + body.

    Public so that other table builders (the DMAR) produce tables that
    build_acpi(extra_tables=...) accepts.
    """
    if len(signature) != 4:
        raise AcpiError(f"bad table signature {signature!r}")
    if oem_table_id is None:
        oem_table_id = b"AKVM" + signature
    data = bytearray(SdtHeader.build(dict(
        signature=signature, length=HEADER_SIZE + len(body), revision=revision, checksum=0,
        oem_id=OEM_ID, oem_table_id=oem_table_id.ljust(8)[:8], oem_revision=OEM_REVISION,
        creator_id=CREATOR_ID, creator_revision=CREATOR_REVISION)) + body)
    data[9] = checksum_fix(data)
    return bytes(data)


# --- RSDP (5.2.5.3) ------------------------------------------------------------

RSDP_SIZE = 36
RSDP_V1_SIZE = 20

Rsdp = Struct(
    "signature" / Const(b"RSD PTR "),
    "checksum" / Int8ul,               # over the first 20 bytes
    "oem_id" / Bytes(6),
    "revision" / Int8ul,
    "rsdt_address" / Int32ul,
    "length" / Int32ul,
    "xsdt_address" / Int64ul,
    "extended_checksum" / Int8ul,      # over all 36 bytes
    Padding(3),
)


def build_rsdp(rsdt: int, xsdt: int) -> bytes:
    data = bytearray(Rsdp.build(dict(checksum=0, oem_id=OEM_ID, revision=2, rsdt_address=rsdt,
                                     length=RSDP_SIZE, xsdt_address=xsdt, extended_checksum=0)))
    data[8] = checksum_fix(data[:RSDP_V1_SIZE])
    data[32] = checksum_fix(data)
    return bytes(data)


# --- RSDT / XSDT (5.2.7, 5.2.8) -----------------------------------------------

def build_rsdt(addresses: list[int]) -> bytes:
    return sdt(b"RSDT", 1, Array(len(addresses), Int32ul).build(addresses))


def build_xsdt(addresses: list[int]) -> bytes:
    return sdt(b"XSDT", 1, Array(len(addresses), Int64ul).build(addresses))


# --- FADT (5.2.9), revision 6 = ACPI 6.x ----------------------------------------

FADT_REVISION = 6
FADT_MINOR_REVISION = 3

# Fixed feature flags (Table 5-34)
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_PWR_BUTTON = 1 << 4        # set = no fixed-feature power button
FADT_SLP_BUTTON = 1 << 5        # set = no fixed-feature sleep button
FADT_FIX_RTC = 1 << 6           # set = no RTC wake status in PM1_STS
FADT_RESET_REG_SUP = 1 << 10

# IA-PC boot architecture flags (Table 5-35)
IAPC_LEGACY_DEVICES = 1 << 0
IAPC_8042 = 1 << 1

CMOS_CENTURY_INDEX = 0x32      # devices/cmos.py keeps the century here

FadtBody = Struct(
    "firmware_ctrl" / Int32ul,
    "dsdt" / Int32ul,
    Padding(1),
    "preferred_pm_profile" / Default(Int8ul, 0),
    "sci_int" / Int16ul,
    "smi_cmd" / Default(Int32ul, 0),
    "acpi_enable" / Default(Int8ul, 0),
    "acpi_disable" / Default(Int8ul, 0),
    "s4bios_req" / Default(Int8ul, 0),
    "pstate_cnt" / Default(Int8ul, 0),
    "pm1a_evt_blk" / Int32ul,
    "pm1b_evt_blk" / Default(Int32ul, 0),
    "pm1a_cnt_blk" / Int32ul,
    "pm1b_cnt_blk" / Default(Int32ul, 0),
    "pm2_cnt_blk" / Default(Int32ul, 0),
    "pm_tmr_blk" / Int32ul,
    "gpe0_blk" / Default(Int32ul, 0),
    "gpe1_blk" / Default(Int32ul, 0),
    "pm1_evt_len" / Int8ul,
    "pm1_cnt_len" / Int8ul,
    "pm2_cnt_len" / Default(Int8ul, 0),
    "pm_tmr_len" / Int8ul,
    "gpe0_blk_len" / Default(Int8ul, 0),
    "gpe1_blk_len" / Default(Int8ul, 0),
    "gpe1_base" / Default(Int8ul, 0),
    "cst_cnt" / Default(Int8ul, 0),
    "p_lvl2_lat" / Int16ul,
    "p_lvl3_lat" / Int16ul,
    "flush_size" / Default(Int16ul, 0),
    "flush_stride" / Default(Int16ul, 0),
    "duty_offset" / Default(Int8ul, 0),
    "duty_width" / Default(Int8ul, 0),
    "day_alrm" / Default(Int8ul, 0),
    "mon_alrm" / Default(Int8ul, 0),
    "century" / Int8ul,
    "iapc_boot_arch" / Int16ul,
    Padding(1),
    "flags" / Int32ul,
    "reset_reg" / Gas,
    "reset_value" / Int8ul,
    "arm_boot_arch" / Default(Int16ul, 0),
    "fadt_minor_version" / Int8ul,
    "x_firmware_ctrl" / Int64ul,
    "x_dsdt" / Int64ul,
    "x_pm1a_evt_blk" / Gas,
    "x_pm1b_evt_blk" / Default(Gas, GAS_NONE),
    "x_pm1a_cnt_blk" / Gas,
    "x_pm1b_cnt_blk" / Default(Gas, GAS_NONE),
    "x_pm2_cnt_blk" / Default(Gas, GAS_NONE),
    "x_pm_tmr_blk" / Gas,
    "x_gpe0_blk" / Default(Gas, GAS_NONE),
    "x_gpe1_blk" / Default(Gas, GAS_NONE),
    "sleep_control_reg" / Default(Gas, GAS_NONE),
    "sleep_status_reg" / Default(Gas, GAS_NONE),
    "hypervisor_vendor_identity" / Default(Int64ul, 0),
)
FADT_SIZE = HEADER_SIZE + FadtBody.sizeof()    # 276


def build_fadt(facs: int, dsdt: int) -> bytes:
    """The FADT: our PM block ports, SCI on IRQ 9, reset through port 0xCF9.

    No SMI_CMD: the machine is always in ACPI mode (SCI_EN reads 1). C2/C3
    are unsupported (latencies above the limits), there are no GPE blocks.
    The 32-bit and 64-bit (X_) fields say the same thing.
    """
    body = FadtBody.build(dict(
        firmware_ctrl=facs, dsdt=dsdt,
        sci_int=layout.SCI_IRQ,
        pm1a_evt_blk=layout.PM1A_EVT_BLK, pm1a_cnt_blk=layout.PM1A_CNT_BLK,
        pm_tmr_blk=layout.PM_TMR_BLK,
        pm1_evt_len=layout.PM1_EVT_LEN, pm1_cnt_len=layout.PM1_CNT_LEN,
        pm_tmr_len=layout.PM_TMR_LEN,
        p_lvl2_lat=101, p_lvl3_lat=1001,
        century=CMOS_CENTURY_INDEX,
        iapc_boot_arch=IAPC_LEGACY_DEVICES | IAPC_8042,
        flags=FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_FIX_RTC | FADT_RESET_REG_SUP,
        reset_reg=io_gas(layout.RESET_PORT, 1, ACCESS_BYTE),
        reset_value=layout.RESET_VALUE,
        fadt_minor_version=FADT_MINOR_REVISION,
        x_firmware_ctrl=facs, x_dsdt=dsdt,
        x_pm1a_evt_blk=io_gas(layout.PM1A_EVT_BLK, layout.PM1_EVT_LEN, ACCESS_WORD),
        x_pm1a_cnt_blk=io_gas(layout.PM1A_CNT_BLK, layout.PM1_CNT_LEN, ACCESS_WORD),
        x_pm_tmr_blk=io_gas(layout.PM_TMR_BLK, layout.PM_TMR_LEN, ACCESS_DWORD),
    ))
    return sdt(b"FACP", FADT_REVISION, body)


# --- FACS (5.2.10): no checksum, 64-byte aligned ----------------------------------

FACS_SIZE = 64
FACS_ALIGN = 64

Facs = Struct(
    "signature" / Const(b"FACS"),
    "length" / Int32ul,
    "hardware_signature" / Int32ul,
    "firmware_waking_vector" / Int32ul,
    "global_lock" / Int32ul,
    "flags" / Int32ul,
    "x_firmware_waking_vector" / Int64ul,
    "version" / Int8ul,
    Padding(3),
    "ospm_flags" / Int32ul,
    Padding(24),
)


def build_facs() -> bytes:
    return Facs.build(dict(length=FACS_SIZE, hardware_signature=0, firmware_waking_vector=0,
                           global_lock=0, flags=0, x_firmware_waking_vector=0, version=2,
                           ospm_flags=0))


# --- DSDT: hand-assembled AML (ACPI 6.3 chapter 20) -------------------------------

AML_ZERO_OP = 0x00
AML_ONE_OP = 0x01
AML_NAME_OP = 0x08
AML_BYTE_PREFIX = 0x0A
AML_WORD_PREFIX = 0x0B
AML_DWORD_PREFIX = 0x0C
AML_QWORD_PREFIX = 0x0E
AML_PACKAGE_OP = 0x12

SLP_TYP_S5 = 5     # what devices/acpi_pm.py powers off on


def aml_pkg_length(body_len: int) -> bytes:
    """PkgLength for `body_len` bytes following it; the encoding counts itself."""
    if body_len + 1 <= 0x3F:
        return bytes([body_len + 1])
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            return bytes([(extra << 6) | (total & 0x0F)]) + (total >> 4).to_bytes(extra, "little")
    raise AcpiError(f"AML package of {body_len} bytes is too long")


def aml_integer(value: int) -> bytes:
    """The shortest ComputationalData encoding of an integer."""
    if value == 0:
        return bytes([AML_ZERO_OP])
    if value == 1:
        return bytes([AML_ONE_OP])
    for prefix, size in ((AML_BYTE_PREFIX, 1), (AML_WORD_PREFIX, 2),
                         (AML_DWORD_PREFIX, 4), (AML_QWORD_PREFIX, 8)):
        if 0 <= value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    raise AcpiError(f"AML integer {value} out of range")


def aml_name_seg(name: str) -> bytes:
    """A NameSeg: 4 characters, lead A-Z or '_', padded with '_'."""
    if not 1 <= len(name) <= 4 or not (name[0].isupper() or name[0] == "_"):
        raise AcpiError(f"bad AML name {name!r}")
    return name.ljust(4, "_").encode("ascii")


def aml_package(elements: list[int]) -> bytes:
    body = bytes([len(elements)]) + b"".join(aml_integer(e) for e in elements)
    return bytes([AML_PACKAGE_OP]) + aml_pkg_length(len(body)) + body


def aml_name(name: str, value: bytes) -> bytes:
    """DefName: Name(name, value)."""
    return bytes([AML_NAME_OP]) + aml_name_seg(name) + value


def build_dsdt() -> bytes:
    """A DSDT holding only \\_S5_: SLP_TYP 5 for PM1a and PM1b, so OSPM can power off.

    Revision 2 means 64-bit AML integers.
    """
    aml = aml_name("_S5_", aml_package([SLP_TYP_S5, SLP_TYP_S5, 0, 0]))
    return sdt(b"DSDT", 2, aml)


# --- MADT (5.2.12), revision 5 = ACPI 6.3 ------------------------------------------

MADT_REVISION = 5
MADT_PCAT_COMPAT = 1 << 0           # dual 8259s present (KVM's in-kernel PIC)
LOCAL_APIC_ENABLED = 1 << 0
ALL_PROCESSORS = 0xFF

# MPS INTI flags (Table 5-50); the same encoding as the MP table's.
MPS_INTI_POLARITY_CONFORMS = 0b00
MPS_INTI_POLARITY_ACTIVE_HIGH = 0b01
MPS_INTI_POLARITY_ACTIVE_LOW = 0b11
MPS_INTI_TRIGGER_CONFORMS = 0b00 << 2
MPS_INTI_TRIGGER_EDGE = 0b01 << 2
MPS_INTI_TRIGGER_LEVEL = 0b11 << 2

# The SCI: ISA IRQ 9 on IOAPIC pin 9 (KVM's default routing is the identity
# for ISA IRQs, so no IRQ0 -> pin 2 override), level-triggered, active high.
SCI_INTI_FLAGS = MPS_INTI_TRIGGER_LEVEL | MPS_INTI_POLARITY_ACTIVE_HIGH

MadtBody = Struct(
    "local_interrupt_controller_address" / Int32ul,
    "flags" / Int32ul,
)
MadtProcessorLocalApic = Struct(
    "type" / Const(0, Int8ul),
    "length" / Const(8, Int8ul),
    "acpi_processor_uid" / Int8ul,
    "apic_id" / Int8ul,
    "flags" / Int32ul,
)
MadtIoApic = Struct(
    "type" / Const(1, Int8ul),
    "length" / Const(12, Int8ul),
    "io_apic_id" / Int8ul,
    Padding(1),
    "io_apic_address" / Int32ul,
    "global_system_interrupt_base" / Int32ul,
)
MadtInterruptSourceOverride = Struct(
    "type" / Const(2, Int8ul),
    "length" / Const(10, Int8ul),
    "bus" / Const(0, Int8ul),           # 0 = ISA
    "source" / Int8ul,
    "global_system_interrupt" / Int32ul,
    "flags" / Int16ul,
)
MadtLocalApicNmi = Struct(
    "type" / Const(4, Int8ul),
    "length" / Const(6, Int8ul),
    "acpi_processor_uid" / Int8ul,
    "flags" / Int16ul,
    "local_apic_lint" / Int8ul,
)


def build_madt(cpus: int) -> bytes:
    """One enabled Processor Local APIC per vCPU (APIC ID = UID = index), the
    IOAPIC, the SCI override and LINT1 = NMI on every processor."""
    entries = [MadtProcessorLocalApic.build(dict(acpi_processor_uid=i, apic_id=i,
                                                  flags=LOCAL_APIC_ENABLED))
               for i in range(cpus)]
    entries.append(MadtIoApic.build(dict(io_apic_id=layout.IOAPIC_ID,
                                         io_apic_address=layout.IOAPIC_BASE,
                                         global_system_interrupt_base=layout.IOAPIC_GSI_BASE)))
    entries.append(MadtInterruptSourceOverride.build(dict(
        source=layout.SCI_IRQ, global_system_interrupt=layout.IOAPIC_GSI_BASE + layout.SCI_IRQ,
        flags=SCI_INTI_FLAGS)))
    entries.append(MadtLocalApicNmi.build(dict(acpi_processor_uid=ALL_PROCESSORS,
                                               flags=0, local_apic_lint=1)))
    body = MadtBody.build(dict(local_interrupt_controller_address=layout.LAPIC_BASE,
                               flags=MADT_PCAT_COMPAT))
    return sdt(b"APIC", MADT_REVISION, body + b"".join(entries))


# --- MCFG (PCI Firmware Specification 3.x, 4.1.2) -------------------------------------

McfgAllocation = Struct(
    "base_address" / Int64ul,
    "pci_segment_group" / Int16ul,
    "start_bus" / Int8ul,
    "end_bus" / Int8ul,
    Padding(4),
)


def build_mcfg() -> bytes:
    """One ECAM window: segment 0, buses 0-255."""
    allocation = McfgAllocation.build(dict(base_address=layout.ECAM_BASE,
                                           pci_segment_group=layout.ECAM_SEGMENT,
                                           start_bus=layout.ECAM_START_BUS,
                                           end_bus=layout.ECAM_END_BUS))
    return sdt(b"MCFG", 1, bytes(8) + allocation)


# --- Putting them in guest memory ------------------------------------------------------

@dataclass
class AcpiTables:
    """Guest-physical addresses of what build_acpi wrote."""
    rsdp: int
    xsdt: int
    rsdt: int
    fadt: int
    facs: int
    dsdt: int
    madt: int
    mcfg: int
    extra: list[int] = field(default_factory=list)
    end: int = 0          # first byte after the last table


class _Allocator:
    """Hands out aligned addresses in [base, limit), refusing to overflow."""

    def __init__(self, base: int, limit: int):
        self.next = base
        self.base = base
        self.limit = limit

    def alloc(self, size: int, align: int = 16) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        self.next = addr + size
        if self.next > self.limit:
            raise AcpiError(f"ACPI tables need more than {self.limit - self.base:#x} bytes "
                            f"({self.next - self.base:#x} so far); area is "
                            f"[{self.base:#x}, {self.limit:#x})")
        return addr


def _check_extra(table: bytes) -> None:
    if len(table) < HEADER_SIZE:
        raise AcpiError(f"extra ACPI table of {len(table)} bytes is shorter than a header")
    header = SdtHeader.parse(table)
    if header.length != len(table):
        raise AcpiError(f"extra ACPI table {header.signature!r}: header length "
                        f"{header.length} != {len(table)} bytes")
    if not _sum_ok(table):
        raise AcpiError(f"extra ACPI table {header.signature!r}: bad checksum")


def build_acpi(memory, cpus: int, *, extra_tables=(),
               base: int = layout.ACPI_AREA_START,
               limit: int = layout.ACPI_AREA_END) -> AcpiTables:
    """Write RSDP, XSDT, RSDT, FADT, FACS, DSDT, MADT, MCFG and `extra_tables`
    (complete tables as bytes, e.g. from sdt()) into guest RAM at [base, limit).

    The RSDP goes first, at `base` (16-byte aligned, inside 0xE0000-0xFFFFF
    where guests look for it). Nothing is written unless everything fits.
    """
    if not 1 <= cpus <= layout.MAX_CPUS:
        raise AcpiError(f"cpus must be 1..{layout.MAX_CPUS}, not {cpus}")
    if base % 16:
        raise AcpiError(f"RSDP base {base:#x} is not 16-byte aligned")
    if not (layout.BIOS_AREA_START <= base < limit <= layout.BIOS_AREA_END):
        raise AcpiError(f"ACPI area [{base:#x}, {limit:#x}) is not inside the BIOS area")
    if not memory.contains(base, limit - base):
        raise AcpiError(f"guest RAM does not cover the ACPI area [{base:#x}, {limit:#x})")
    extra_tables = [bytes(t) for t in extra_tables]
    for t in extra_tables:
        _check_extra(t)

    area = _Allocator(base, limit)
    writes: list[tuple[int, bytes]] = []

    def place(data: bytes, align: int = 16) -> int:
        addr = area.alloc(len(data), align)
        writes.append((addr, data))
        return addr

    rsdp = area.alloc(RSDP_SIZE)
    facs = place(build_facs(), FACS_ALIGN)
    dsdt = place(build_dsdt())
    fadt = place(build_fadt(facs, dsdt))
    madt = place(build_madt(cpus))
    mcfg = place(build_mcfg())
    extra = [place(t) for t in extra_tables]
    described = [fadt, madt, mcfg, *extra]
    xsdt = place(build_xsdt(described))
    rsdt = place(build_rsdt(described))
    writes.append((rsdp, build_rsdp(rsdt, xsdt)))

    for addr, data in writes:
        memory.write(addr, data)
    return AcpiTables(rsdp=rsdp, xsdt=xsdt, rsdt=rsdt, fadt=fadt, facs=facs, dsdt=dsdt,
                      madt=madt, mcfg=mcfg, extra=extra, end=area.next)
