"""VT-d translation: root and context entries, 3- and 4-level second-level walks, large
pages, permissions, reserved bits, address widths, pass-through, EPT-format entries; every
table built in bytearray RAM as a guest driver would."""
import random

import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import examples

from akvm.base.dma import DmaError
from akvm.iommu.translate import (
    FR_ADDRESS_BEYOND_MGAW, FR_CONTEXT_ACCESS, FR_CONTEXT_INVALID, FR_CONTEXT_NOT_PRESENT,
    FR_CONTEXT_RESERVED, FR_PAGING_ACCESS, FR_PAGING_RESERVED, FR_READ, FR_ROOT_ACCESS,
    FR_ROOT_NOT_PRESENT, FR_ROOT_RESERVED, FR_WRITE, ContextEntry, TranslationFault, WalkParams,
    walk,
)
from tests.unit.vtd_tables import (EPT_A, EPT_D, EPT_IPAT, EPT_WB, GiB, MiB, PAGE, PS, R, SID,
                                   SID2, W, X, Rig, sid_of)


def translate(rig, iova, write=False, sid=SID):
    return rig.iommu.translate(sid, iova, write)


def reason(rig, iova, write=False, sid=SID):
    with pytest.raises(TranslationFault) as e:
        translate(rig, iova, write, sid)
    return e.value.reason


@pytest.fixture
def rig():
    r = Rig()
    r.enable()
    return r


def test_translation_off_is_identity():
    r = Rig()
    assert translate(r, 0x1234_5678) == (0x1234_5678, (1 << 64) - 0x1234_5678)
    r.mem.write(0x5000, b"direct")
    assert r.dma().read(0x5000, 6) == b"direct"
    assert r.iommu.stats()["passthrough"] == 2


@pytest.mark.parametrize("levels,aw", [(4, 2), (3, 1)])
def test_4k_page_walk(rig, levels, aw):
    table = rig.page()
    frame = rig.data_page(0xAB)
    rig.set_context(SID, did=5, table=table, aw=aw)
    rig.map(table, 0x7654_3000, frame, levels=levels)
    assert translate(rig, 0x7654_3123) == (frame + 0x123, PAGE - 0x123)
    assert rig.dma().read(0x7654_3FFE, 2) == b"\xAB\xAB"


@pytest.mark.parametrize("levels,aw", [(4, 2), (3, 1)])
def test_2m_and_1g_pages(rig, levels, aw):
    table = rig.page()
    rig.set_context(SID, table=table, aw=aw)
    rig.map(table, 0x4000_0000, 0x20_0000, levels=levels, size=2 * MiB)
    rig.map(table, 0x80_0000_0000 if levels == 4 else 0x40_0000_0000, 0x4000_0000,
            levels=levels, size=GiB)
    assert translate(rig, 0x4012_3456) == (0x32_3456, 2 * MiB - 0x12_3456)
    big = 0x80_0000_0000 if levels == 4 else 0x40_0000_0000
    assert translate(rig, big + 0x1234_5678) == (0x4000_0000 + 0x1234_5678, GiB - 0x1234_5678)


def test_dma_across_pages_uses_each_translation(rig):
    table = rig.page()
    a, b = rig.data_page(0x11), rig.data_page(0x22)
    rig.set_context(SID, table=table)
    rig.map(table, 0x10000, b)          # deliberately reversed order in RAM
    rig.map(table, 0x11000, a)
    data = rig.dma().read(0x10FFE, 4)
    assert data == b"\x22\x22\x11\x11"
    rig.dma().write(0x10FFF, b"xy")
    assert rig.mem.read(b + 0xFFF, 1) == b"x" and rig.mem.read(a, 1) == b"y"
    assert rig.dma().translate(0x10800, 0x1000, False) == [(b + 0x800, 0x800), (a, 0x800)]


def test_contiguous_pieces_merge(rig):
    table = rig.page()
    rig.set_context(SID, table=table)
    rig.map(table, 0x0, 0x30_0000)
    rig.map(table, 0x1000, 0x30_1000)
    assert rig.dma().translate(0x800, 0x1000, True) == [(0x30_0800, 0x1000)]


@pytest.mark.parametrize("perms,write,ok", [
    (R, False, True), (R, True, False), (W, True, True), (W, False, False), (R | W, True, True),
])
def test_leaf_permissions(rig, perms, write, ok):
    table = rig.page()
    rig.set_context(SID, table=table)
    rig.map(table, 0x5000, 0x9000, perms=perms)
    if ok:
        assert translate(rig, 0x5000, write)[0] == 0x9000
    else:
        assert reason(rig, 0x5000, write) == (FR_WRITE if write else FR_READ)


def test_permissions_are_anded_over_levels(rig):
    table = rig.page()
    rig.set_context(SID, table=table)
    rig.map(table, 0x5000, 0x9000, perms=R | W, dir_perms=R)
    assert translate(rig, 0x5000)[0] == 0x9000
    assert reason(rig, 0x5000, write=True) == FR_WRITE


def test_not_present_entries_fault_by_request_type(rig):
    table = rig.page()
    rig.set_context(SID, table=table)
    assert reason(rig, 0x5000) == FR_READ
    assert reason(rig, 0x6000, write=True) == FR_WRITE
    rig.map(table, 0x5000, 0x9000, perms=X)         # execute-only: not present for DMA
    assert reason(rig, 0x5000) == FR_READ


def test_ept_format_entries_are_accepted(rig):
    """Akaros gives the IOMMU its EPT: memory type, ignore-PAT, A/D and X bits set."""
    table = rig.page()
    frame = rig.data_page(0x5A)
    rig.set_context(SID, table=table, did=42)
    rig.map(table, 0x40_0000, frame, perms=R | W | X, dir_perms=R | W | X | EPT_A,
            leaf_extra=EPT_WB | EPT_IPAT | EPT_A | EPT_D | 1 << 11 | 1 << 62 | 1 << 63)
    rig.map(table, 0x80_0000, 0x60_0000, size=2 * MiB, perms=R | X,
            leaf_extra=EPT_WB | EPT_A)
    assert rig.dma().read(0x40_0010, 1) == b"\x5A"
    assert translate(rig, 0x81_0000)[0] == 0x61_0000
    assert reason(rig, 0x81_0000, write=True) == FR_WRITE


@pytest.mark.parametrize("aw,levels", [(48, 4), (39, 3)])
def test_address_beyond_the_width(aw, levels):
    rig = Rig(aw=aw)
    rig.enable()
    table = rig.page()
    rig.set_context(SID, table=table, aw=2 if levels == 4 else 1)
    assert reason(rig, 1 << aw) == FR_ADDRESS_BEYOND_MGAW
    assert reason(rig, (1 << 64) - PAGE) == FR_ADDRESS_BEYOND_MGAW
    assert reason(rig, -PAGE) == FR_ADDRESS_BEYOND_MGAW


def test_3_level_context_on_48_bit_unit_limits_to_39_bits(rig):
    table = rig.page()
    rig.set_context(SID, table=table, aw=1)
    assert reason(rig, 1 << 39) == FR_ADDRESS_BEYOND_MGAW
    assert reason(rig, (1 << 39) - PAGE) == FR_READ


def test_4_level_context_on_39_bit_unit_is_invalid():
    rig = Rig(aw=39)
    rig.enable()
    rig.set_context(SID, table=rig.page(), aw=2)
    assert reason(rig, 0) == FR_CONTEXT_INVALID


@pytest.mark.parametrize("build,expected", [
    # address bits above the host address width (48) in a directory entry
    (lambda rig, t: rig.mem.write_u64(t, rig.page() | 1 << 50 | R | W), FR_PAGING_RESERVED),
    # PS set in a PML4 entry (no 512 GiB pages)
    (lambda rig, t: rig.mem.write_u64(t, PS | R | W), FR_PAGING_RESERVED),
    # a 2 MiB page whose address is not 2 MiB aligned
    (lambda rig, t: rig.map(t, 0, 0x20_1000, size=2 * MiB), FR_PAGING_RESERVED),
    # a 1 GiB page whose address is not 1 GiB aligned
    (lambda rig, t: rig.map(t, 0, 0x4020_0000, size=GiB), FR_PAGING_RESERVED),
    # a directory pointing outside guest RAM
    (lambda rig, t: rig.mem.write_u64(t, 0x7_0000_0000 | R | W), FR_PAGING_ACCESS),
])
def test_malformed_paging_entries(rig, build, expected):
    table = rig.page()
    rig.set_context(SID, table=table)
    build(rig, table)
    assert reason(rig, 0x123) == expected


def test_large_pages_refused_when_not_supported():
    """With CAP.SLLPS clear, PS in a directory entry is a reserved bit."""
    rig = Rig()
    table = rig.page()
    rig.map(table, 0, 0x20_0000, size=2 * MiB)
    ctx = ContextEntry(SID, 1, 0, False, table, 4, 48)
    assert walk(rig.mem, ctx, 0x1000, False, WalkParams()).shift == 21
    with pytest.raises(TranslationFault) as e:
        walk(rig.mem, ctx, 0x1000, False, WalkParams(large_pages=0))
    assert e.value.reason == FR_PAGING_RESERVED


def test_root_entry_faults(rig):
    other_bus = sid_of(3, 0, 0)
    assert reason(rig, 0, sid=other_bus) == FR_ROOT_NOT_PRESENT
    rig.mem.write_u64(rig.root + 3 * 16, rig.page() | 1 | 1 << 5)        # reserved bit 5
    assert reason(rig, 0, sid=other_bus) == FR_ROOT_RESERVED
    rig.mem.write_u64(rig.root + 3 * 16, rig.page() | 1)
    rig.mem.write_u64(rig.root + 3 * 16 + 8, 1)                          # high word: reserved
    assert reason(rig, 0, sid=other_bus) == FR_ROOT_RESERVED


def test_root_table_outside_ram():
    rig = Rig()
    rig.root = 0x7_0000_0000
    rig.enable()
    assert reason(rig, 0) == FR_ROOT_ACCESS


def test_context_table_outside_ram(rig):
    rig.mem.write_u64(rig.root, 0x7_0000_0000 | 1)
    assert reason(rig, 0) == FR_CONTEXT_ACCESS


@pytest.mark.parametrize("kwargs,expected", [
    (dict(present=False), FR_CONTEXT_NOT_PRESENT),
    (dict(lo_extra=1 << 4), FR_CONTEXT_RESERVED),
    (dict(hi_extra=1 << 7), FR_CONTEXT_RESERVED),
    (dict(hi_extra=1 << 30), FR_CONTEXT_RESERVED),
    (dict(tt=3), FR_CONTEXT_INVALID),
    (dict(tt=1), FR_CONTEXT_INVALID),              # no device-TLB (ECAP.DT = 0)
    (dict(aw=0), FR_CONTEXT_INVALID),
    (dict(aw=3), FR_CONTEXT_INVALID),              # 5-level: not in SAGAW
    (dict(table=1 << 49), FR_CONTEXT_RESERVED),    # SLPTPTR beyond the host address width
])
def test_context_entry_faults(rig, kwargs, expected):
    kwargs.setdefault("table", rig.page())
    rig.set_context(SID, **kwargs)
    assert reason(rig, 0) == expected


def test_pass_through(rig):
    rig.set_context(SID, tt=2, did=1)
    rig.mem.write(0x7000, b"pt")
    assert translate(rig, 0x7000, True) == (0x7000, (1 << 48) - 0x7000)
    assert rig.dma().read(0x7000, 2) == b"pt"
    assert reason(rig, 1 << 48) == FR_ADDRESS_BEYOND_MGAW


def test_pass_through_refused_when_not_offered():
    rig = Rig(pt=False)
    rig.enable()
    rig.set_context(SID, tt=2)
    assert reason(rig, 0) == FR_CONTEXT_INVALID


def test_devices_are_told_apart_by_source_id(rig):
    t1, t2 = rig.page(), rig.page()
    rig.set_context(SID, table=t1, did=1)
    rig.set_context(SID2, table=t2, did=2)
    rig.map(t1, 0x1000, 0xA000)
    rig.map(t2, 0x1000, 0xB000)
    assert translate(rig, 0x1000, sid=SID)[0] == 0xA000
    assert translate(rig, 0x1000, sid=SID2)[0] == 0xB000
    assert reason(rig, 0x1000, sid=sid_of(0, 5, 0)) == FR_CONTEXT_NOT_PRESENT


def test_dma_error_carries_the_reason_and_nothing_else_escapes(rig):
    table = rig.page()
    rig.set_context(SID, table=table)
    rig.map(table, 0x1000, 0x2000, perms=R)
    with pytest.raises(DmaError) as e:
        rig.dma().write(0x1000, b"x")
    assert e.value.reason == FR_WRITE and e.value.write and e.value.address == 0x1000
    # A translation that lands outside guest RAM is a master abort, not an IOMMU fault.
    rig.map(table, 0x3000, 0x7_0000_0000)
    with pytest.raises(DmaError) as e:
        rig.dma().read(0x3000, 4)
    assert e.value.reason is None


def test_dma_write_that_would_fault_writes_nothing(rig):
    table = rig.page()
    a = rig.data_page(0)
    rig.set_context(SID, table=table)
    rig.map(table, 0x1000, a)
    with pytest.raises(DmaError) as e:
        rig.dma().write(0x1FFE, b"abcd")
    assert e.value.address == 0x2000
    # every page is translated before a byte moves
    assert rig.mem.read(a + 0xFFE, 2) == b"\0\0"


# --- hostile tables -----------------------------------------------------------------------


@settings(max_examples=examples(300), deadline=None)
@given(st.integers(0, 1 << 64), st.integers(0, 0xFFFF), st.integers(0, (1 << 64) - 1),
       st.booleans(), st.sampled_from([39, 48]))
def test_random_tables_only_ever_fault(seed, sid, iova, write, aw):
    """16 KiB of root, context and paging entries, random but mostly plausible (low
    permission and type bits, addresses inside those 16 KiB), some entirely random: a
    translation or a TranslationFault, first from the tables and then from the caches."""
    rng = random.Random(seed)
    rig = Rig(size=1 << 20, aw=aw)
    for i in range(0x4000 // 8):
        word = rng.getrandbits(64)
        if rng.random() < 0.1:
            pass                                          # entirely random
        elif i < 0x1000 // 8:                             # the root table
            word = 0 if i & 1 else (word & 0x3000) | 1
        else:                                             # context and paging entries
            word = word & 0x300F | (0x80 if rng.random() < 0.15 else 0)
        rig.mem.write_u64(i * 8, word)
    rig.root = 0
    rig.enable()
    iova = iova if rng.random() < 0.2 else iova & 0x7F_FFFF_FFFF
    for _ in range(2):
        try:
            gpa, span = rig.iommu.translate(sid & 0x7F, iova, write)
            assert span > 0
        except TranslationFault as f:
            assert 1 <= f.reason <= 0xC
    assert rig.iommu.internal_errors == 0
