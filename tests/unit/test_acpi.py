"""ACPI tables: found and followed the way a guest does, checked field by
field at the offsets the ACPI 6.3 spec gives, and decompiled with iasl."""
import re
import shutil
import subprocess

import pytest

from akvm.base.memory import GuestMemory
from akvm.tables import acpi, layout
from akvm.tables.acpi import AcpiError, build_acpi
from akvm.tables.layout import E820_RAM, E820_RESERVED, MemoryRegion, memory_map

MiB = 1 << 20
needs_iasl = pytest.mark.skipif(shutil.which("iasl") is None,
                                reason="iasl (Debian package acpica-tools) is not installed")


def u16(b, o):
    return int.from_bytes(b[o:o + 2], "little")


def u32(b, o):
    return int.from_bytes(b[o:o + 4], "little")


def u64(b, o):
    return int.from_bytes(b[o:o + 8], "little")


def find_rsdp(mem):
    """Scan 0xE0000-0xFFFFF on 16-byte boundaries, as Akaros does."""
    for addr in range(0xE0000, 0x100000 - 20 + 1, 16):
        head = mem.read(addr, 20)
        if head[:8] == b"RSD PTR " and sum(head) & 0xFF == 0:
            return addr
    return None


def read_table(mem, addr):
    length = mem.read_u32(addr + 4)
    assert length >= 36
    assert 0xE0000 <= addr and addr + length <= 0x100000, "table outside the BIOS area"
    data = mem.read(addr, length)
    assert sum(data) & 0xFF == 0, f"bad checksum in {data[:4]!r}"
    assert data[10:16] == b"AKVM  "
    return data


def walk(mem):
    """RSDP -> XSDT and RSDT; returns {signature: bytes} and checks they agree."""
    rsdp_addr = find_rsdp(mem)
    assert rsdp_addr is not None, "no RSDP in 0xE0000-0xFFFFF"
    rsdp = mem.read(rsdp_addr, 36)
    assert rsdp[15] == 2, "revision"
    assert u32(rsdp, 20) == 36, "length"
    assert sum(rsdp) & 0xFF == 0, "extended checksum"
    assert rsdp[9:15] == b"AKVM  "
    xsdt = read_table(mem, u64(rsdp, 24))
    rsdt = read_table(mem, u32(rsdp, 16))
    assert xsdt[:4] == b"XSDT" and rsdt[:4] == b"RSDT"
    assert (len(xsdt) - 36) % 8 == 0 and (len(rsdt) - 36) % 4 == 0
    x_entries = [u64(xsdt, o) for o in range(36, len(xsdt), 8)]
    r_entries = [u32(rsdt, o) for o in range(36, len(rsdt), 4)]
    assert x_entries == r_entries
    tables = {}
    for addr in x_entries:
        t = read_table(mem, addr)
        tables.setdefault(t[:4].decode(), t)
    assert len(tables) == len(x_entries), "one table per signature"
    fadt = tables["FACP"]
    tables["DSDT"] = read_table(mem, u64(fadt, 140))
    facs_addr = u64(fadt, 132)
    assert facs_addr % 64 == 0
    tables["FACS"] = mem.read(facs_addr, mem.read_u32(facs_addr + 4))
    return tables


def madt_entries(madt):
    entries, o = [], 44
    while o < len(madt):
        etype, elen = madt[o], madt[o + 1]
        assert elen >= 2 and o + elen <= len(madt)
        entries.append((etype, madt[o:o + elen]))
        o += elen
    assert o == len(madt), "entries overrun the table"
    return entries


@pytest.fixture
def mem():
    return GuestMemory.from_bytearray(MiB)


def test_rsdp_found_and_tables_linked(mem):
    t = build_acpi(mem, 2)
    assert t.rsdp % 16 == 0 and find_rsdp(mem) == t.rsdp
    tables = walk(mem)
    assert set(tables) == {"FACP", "APIC", "MCFG", "DSDT", "FACS"}
    assert t.end <= layout.ACPI_AREA_END


def test_fadt_fields(mem):
    t = build_acpi(mem, 1)
    f = walk(mem)["FACP"]
    assert f[8] == 6 and len(f) == 276
    assert u32(f, 36) == t.facs and u64(f, 132) == t.facs
    assert u32(f, 40) == t.dsdt and u64(f, 140) == t.dsdt
    assert u16(f, 46) == 9                      # SCI_INT
    assert u32(f, 48) == 0                      # no SMI_CMD: always in ACPI mode
    assert u32(f, 56) == 0x600 and f[88] == 4   # PM1a_EVT_BLK, PM1_EVT_LEN
    assert u32(f, 64) == 0x604 and f[89] == 2   # PM1a_CNT_BLK, PM1_CNT_LEN
    assert u32(f, 76) == 0x608 and f[91] == 4   # PM_TMR_BLK, PM_TMR_LEN
    assert f[108] == 0x32                       # CENTURY
    assert u16(f, 109) & 0b10                   # IAPC_BOOT_ARCH: 8042
    flags = u32(f, 112)
    assert flags & (1 << 10)                    # RESET_REG_SUP
    assert not flags & (1 << 8)                 # 24-bit PM timer
    assert f[116:120] == bytes([1, 8, 0, 1]) and u64(f, 120) == 0xCF9   # RESET_REG
    assert f[128] == 6                          # RESET_VALUE
    for off, port, width in ((148, 0x600, 32), (172, 0x604, 16), (208, 0x608, 32)):
        assert f[off] == 1 and f[off + 1] == width and u64(f, off + 4) == port


def test_facs_and_dsdt(mem):
    build_acpi(mem, 1)
    tables = walk(mem)
    facs = tables["FACS"]
    assert facs[:4] == b"FACS" and len(facs) == 64
    dsdt = tables["DSDT"]
    assert dsdt[:4] == b"DSDT" and dsdt[8] == 2
    # Name(_S5_, Package(){5, 5, 0, 0})
    assert dsdt[36:] == bytes([0x08]) + b"_S5_" + bytes([0x12, 0x08, 0x04, 0x0A, 5, 0x0A, 5, 0, 0])


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_madt(mem, cpus):
    build_acpi(mem, cpus)
    madt = walk(mem)["APIC"]
    assert u32(madt, 36) == 0xFEE00000
    assert u32(madt, 40) & 1                    # PCAT_COMPAT
    entries = madt_entries(madt)
    lapics = [e for t, e in entries if t == 0]
    assert [(e[2], e[3]) for e in lapics] == [(i, i) for i in range(cpus)]
    assert all(u32(e, 4) == 1 for e in lapics)
    ioapics = [e for t, e in entries if t == 1]
    assert len(ioapics) == 1
    assert ioapics[0][2] == layout.IOAPIC_ID
    assert u32(ioapics[0], 4) == 0xFEC00000 and u32(ioapics[0], 8) == 0
    assert 0xFEC00000 <= u32(ioapics[0], 4) < 0xFED00000
    overrides = [e for t, e in entries if t == 2]
    assert [(e[2], e[3], u32(e, 4), u16(e, 8)) for e in overrides] == [(0, 9, 9, 0x000D)]
    nmis = [e for t, e in entries if t == 4]
    assert [(e[2], e[5]) for e in nmis] == [(0xFF, 1)]
    assert {t for t, _ in entries} == {0, 1, 2, 4}


def test_mcfg(mem):
    build_acpi(mem, 1)
    m = walk(mem)["MCFG"]
    assert len(m) == 60
    assert u64(m, 44) == 0xE0000000 and u16(m, 52) == 0 and m[54] == 0 and m[55] == 255
    assert layout.ECAM_BASE + layout.ECAM_SIZE <= 0xF0000000


def fake_dmar():
    """A small valid DMAR: 48-bit host address width, one DRHD with INCLUDE_PCI_ALL."""
    drhd = bytes([0, 0, 16, 0, 1, 0, 0, 0]) + layout.VTD_BASE.to_bytes(8, "little")
    return acpi.sdt(b"DMAR", 1, bytes([47, 0]) + bytes(10) + drhd)


def test_extra_tables_are_linked(mem):
    dmar = fake_dmar()
    t = build_acpi(mem, 4, extra_tables=[dmar])
    tables = walk(mem)
    assert tables["DMAR"] == dmar
    assert mem.read(t.extra[0], len(dmar)) == dmar


def test_bad_extra_table_refused(mem):
    dmar = bytearray(fake_dmar())
    dmar[9] ^= 1
    with pytest.raises(AcpiError, match="checksum"):
        build_acpi(mem, 1, extra_tables=[bytes(dmar)])
    with pytest.raises(AcpiError, match="length"):
        build_acpi(mem, 1, extra_tables=[fake_dmar() + b"\0"])


def test_refuses_when_tables_do_not_fit(mem):
    huge = acpi.sdt(b"SSDT", 2, bytes(70 * 1024))
    with pytest.raises(AcpiError, match="area"):
        build_acpi(mem, 1, extra_tables=[huge])
    assert find_rsdp(mem) is None, "nothing is written when the tables do not fit"


def test_bad_arguments(mem):
    with pytest.raises(AcpiError):
        build_acpi(mem, 0)
    with pytest.raises(AcpiError):
        build_acpi(mem, 256)
    with pytest.raises(AcpiError):
        build_acpi(mem, 1, base=0xE0008)
    with pytest.raises(AcpiError):
        build_acpi(GuestMemory.from_bytearray(512 * 1024), 1)


def test_max_cpus_fit(mem):
    build_acpi(mem, layout.MAX_CPUS)
    lapics = [e for t, e in madt_entries(walk(mem)["APIC"]) if t == 0]
    assert len(lapics) == layout.MAX_CPUS


def test_aml_pkg_length_encodings():
    assert acpi.aml_pkg_length(0) == b"\x01"
    assert acpi.aml_pkg_length(62) == b"\x3f"
    # 63 body bytes + 2 length bytes = 65 = 0x41: lead 0x41, then 0x04
    assert acpi.aml_pkg_length(63) == bytes([0x41, 0x04])
    assert acpi.aml_integer(0) == b"\x00" and acpi.aml_integer(1) == b"\x01"
    assert acpi.aml_integer(5) == b"\x0a\x05" and acpi.aml_integer(0x1234) == b"\x0b\x34\x12"


# --- iasl ---------------------------------------------------------------------------

def iasl_disassemble(tmp_path, name, data):
    path = tmp_path / f"{name}.dat"
    path.write_bytes(data)
    proc = subprocess.run(["iasl", "-d", path.name], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert not re.search(r"error|warning", output, re.I), output
    dsl = (tmp_path / f"{name}.dsl").read_text()
    assert not re.search(r"invalid|incorrect|\*\*\*\*", dsl, re.I), dsl
    return dsl


@needs_iasl
@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_iasl_decompiles_every_table(mem, tmp_path, cpus):
    build_acpi(mem, cpus, extra_tables=[fake_dmar()])
    tables = walk(mem)
    assert set(tables) == {"FACP", "APIC", "MCFG", "DMAR", "DSDT", "FACS"}
    rsdp = mem.read(find_rsdp(mem), 36)
    xsdt, rsdt = u64(rsdp, 24), u32(rsdp, 16)
    tables["XSDT"] = mem.read(xsdt, mem.read_u32(xsdt + 4))
    tables["RSDT"] = mem.read(rsdt, mem.read_u32(rsdt + 4))
    # (iasl -d cannot take a bare RSDP from a binary file; walk() checked it.)
    for sig, data in tables.items():
        dsl = iasl_disassemble(tmp_path, sig.lower(), data)
        if sig == "APIC":
            assert dsl.count("[Processor Local APIC]") == cpus


@needs_iasl
def test_iasl_dsdt_has_s5_and_round_trips(mem, tmp_path):
    build_acpi(mem, 1)
    dsdt = walk(mem)["DSDT"]
    dsl = iasl_disassemble(tmp_path, "dsdt", dsdt)
    assert "_S5_" in dsl
    assert re.search(r"Name \(_S5_?, Package \(0x04\)\s*(//.*)?\s*\{\s*0x05,\s*0x05,\s*Zero,\s*Zero\s*\}",
                     dsl), dsl
    # Compiling the decompiled source gives back the same AML.
    (tmp_path / "again.dsl").write_text(dsl)
    proc = subprocess.run(["iasl", "-p", "again", "again.dsl"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 Errors, 0 Warnings" in proc.stdout
    assert (tmp_path / "again.aml").read_bytes()[36:] == dsdt[36:]


# --- layout.memory_map ------------------------------------------------------------------

def ram(regions):
    return sum(r.size for r in regions if r.type == E820_RAM)


def test_memory_map_1g():
    regions = memory_map(1 << 30)
    assert regions[0] == MemoryRegion(0, 0x9FC00, E820_RAM)
    assert MemoryRegion(0x9FC00, 0x400, E820_RESERVED) in regions
    assert MemoryRegion(0xE0000, 0x20000, E820_RESERVED) in regions
    assert MemoryRegion(0x100000, (1 << 30) - 0x100000, E820_RAM) in regions
    for base in (layout.ECAM_BASE, layout.IOAPIC_BASE, layout.LAPIC_BASE, layout.VTD_BASE):
        assert any(r.base == base and r.type == E820_RESERVED for r in regions)
    assert [r.base for r in regions] == sorted(r.base for r in regions)
    for a, b in zip(regions, regions[1:]):
        assert a.end <= b.base, "overlap"


def test_memory_map_above_4g():
    size = 6 << 30
    regions = memory_map(size)
    assert MemoryRegion(0x100000, 0xC0000000 - 0x100000, E820_RAM) in regions
    assert MemoryRegion(1 << 32, size - 0xC0000000, E820_RAM) in regions
    assert ram(regions) == size - 0x100000 + 0x9FC00


def test_memory_map_small():
    regions = memory_map(0x80000)
    assert regions[0] == MemoryRegion(0, 0x80000, E820_RAM)
    assert ram(regions) == 0x80000
