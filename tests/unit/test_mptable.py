"""MP table: found by a signature scan, parsed back at the MP 1.4 offsets,
and checked against the MADT built into the same memory."""
import pytest

from akvm.base.memory import GuestMemory
from akvm.tables import layout
from akvm.tables.acpi import build_acpi
from akvm.tables.mptable import MpTableError, PciInterrupt, build_mptable

ENTRY_SIZES = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}


def u16(b, o):
    return int.from_bytes(b[o:o + 2], "little")


def u32(b, o):
    return int.from_bytes(b[o:o + 4], "little")


def find_mp(mem):
    """Scan 0xE0000-0xFFFFF for _MP_ on 16-byte boundaries with a good checksum."""
    for addr in range(0xE0000, 0x100000, 16):
        fp = mem.read(addr, 16)
        if fp[:4] == b"_MP_" and sum(fp[:16 * fp[8]]) & 0xFF == 0:
            return addr
    return None


def parse(mem):
    fp_addr = find_mp(mem)
    assert fp_addr is not None, "no _MP_ in 0xE0000-0xFFFFF"
    fp = mem.read(fp_addr, 16)
    assert fp[8] == 1 and fp[9] == 4            # length 1 (16 bytes), spec rev 1.4
    assert fp[11] == 0                          # a configuration table is present
    assert not fp[12] & 0x80                    # IMCRP clear: virtual wire mode
    pcmp_addr = u32(fp, 4)
    length = u16(mem.read(pcmp_addr, 6), 4)
    table = mem.read(pcmp_addr, length)
    assert table[:4] == b"PCMP" and table[6] == 4
    assert sum(table) & 0xFF == 0, "PCMP checksum"
    assert u16(table, 40) == 0                  # no extended table
    assert pcmp_addr + length <= 0x100000
    entries, o = [], 44
    while o < length:
        etype = table[o]
        size = ENTRY_SIZES[etype]
        entries.append((etype, table[o:o + size]))
        o += size
    assert o == length
    assert u16(table, 34) == len(entries), "entry count"
    return table, entries


@pytest.fixture
def mem():
    return GuestMemory.from_bytearray(1 << 20)


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_mptable_entries(mem, cpus):
    mp = build_mptable(mem, cpus)
    assert find_mp(mem) == mp.floating_pointer
    table, entries = parse(mem)
    assert u32(table, 36) == 0xFEE00000
    types = [t for t, _ in entries]
    assert types == sorted(types), "entries are in the order the spec gives"

    cpus_seen = [e for t, e in entries if t == 0]
    assert [e[1] for e in cpus_seen] == list(range(cpus))
    assert [e[3] for e in cpus_seen] == [0b11] + [0b01] * (cpus - 1)   # EN, BP only on 0
    assert all(e[2] == layout.LAPIC_VERSION for e in cpus_seen)
    assert all((u32(e, 4) >> 8) & 0xF == 6 for e in cpus_seen)       # family 6
    assert all(u32(e, 8) & (1 << 9) for e in cpus_seen)              # APIC feature

    buses = {e[1]: e[2:8] for t, e in entries if t == 1}
    assert buses == {0: b"PCI   ", 1: b"ISA   "}

    ioapics = [e for t, e in entries if t == 2]
    assert len(ioapics) == 1
    assert ioapics[0][1] == layout.IOAPIC_ID and ioapics[0][3] & 1
    assert u32(ioapics[0], 4) == 0xFEC00000

    io_ints = [e for t, e in entries if t == 3]
    isa = {e[5]: e for e in io_ints if e[4] == 1}
    assert sorted(isa) == [i for i in range(16) if i != 2]
    for irq, e in isa.items():
        assert e[1] == 0                                   # INT
        assert e[6] == layout.IOAPIC_ID and e[7] == irq    # identity routing
        assert u16(e, 2) == (0x000D if irq == 9 else 0)    # SCI level/high as in MADT

    lints = sorted((e[7], e[1], e[6]) for t, e in entries if t == 4)
    assert lints == [(0, 3, 0xFF), (1, 1, 0xFF)]           # ExtINT LINT0, NMI LINT1


def test_pci_interrupts(mem):
    build_mptable(mem, 1, pci_interrupts=[PciInterrupt(device=3, pin=0, ioapic_pin=16),
                                          PciInterrupt(device=4, pin=1, ioapic_pin=17)])
    _, entries = parse(mem)
    pci = [e for t, e in entries if t == 3 and e[4] == 0]
    assert [(e[5], e[7], u16(e, 2)) for e in pci] == [((3 << 2) | 0, 16, 0), ((4 << 2) | 1, 17, 0)]
    with pytest.raises(MpTableError):
        build_mptable(mem, 1, pci_interrupts=[PciInterrupt(32, 0, 16)])


def madt_of(mem, tables):
    """The MADT's (local APIC IDs, [(IOAPIC id, address)]), via the XSDT."""
    xsdt = mem.read(tables.xsdt, mem.read_u32(tables.xsdt + 4))
    for o in range(36, len(xsdt), 8):
        addr = int.from_bytes(xsdt[o:o + 8], "little")
        if mem.read(addr, 4) == b"APIC":
            madt = mem.read(addr, mem.read_u32(addr + 4))
            break
    lapics, ioapics, o = [], [], 44
    while o < len(madt):
        if madt[o] == 0:
            lapics.append(madt[o + 3])
        elif madt[o] == 1:
            ioapics.append((madt[o + 2], u32(madt, o + 4)))
        o += madt[o + 1]
    return lapics, ioapics


@pytest.mark.parametrize("cpus", [1, 4])
def test_agrees_with_madt(mem, cpus):
    tables = build_acpi(mem, cpus)
    build_mptable(mem, cpus)
    table, entries = parse(mem)
    lapics, ioapics = madt_of(mem, tables)
    assert [e[1] for t, e in entries if t == 0] == lapics
    assert [(e[1], u32(e, 4)) for t, e in entries if t == 2] == ioapics
    assert u32(table, 36) == u32(mem.read(tables.madt, 40), 36)


def test_coexists_with_acpi(mem):
    acpi = build_acpi(mem, 8)
    mp = build_mptable(mem, 8)
    assert acpi.end <= mp.floating_pointer
    parse(mem)
    assert mem.read(acpi.rsdp, 8) == b"RSD PTR "


def test_bad_arguments(mem):
    with pytest.raises(MpTableError):
        build_mptable(mem, 0)
    with pytest.raises(MpTableError):
        build_mptable(mem, 1, base=0xF0004)
    with pytest.raises(MpTableError):
        build_mptable(mem, 1, base=0x90000)
    with pytest.raises(MpTableError, match="needs"):
        build_mptable(mem, 255, base=0xFFC00)


def test_max_cpus(mem):
    build_mptable(mem, layout.MAX_CPUS)
    _, entries = parse(mem)
    assert sum(1 for t, _ in entries if t == 0) == layout.MAX_CPUS
