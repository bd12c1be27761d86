"""akvm_sl_walk (iommu/slwalk.c) against its Python twin, akvm.iommu.translate.walk_python:
hypothesis builds second-level tables, well-formed and not (reserved bits, not-present
entries, pointers outside RAM or wrapping, large pages at every level, 3 and 4 levels),
and both walks must give the same Leaf or the same fault."""
import pytest
from hypothesis import given, settings, strategies as st

from akvm.iommu import translate
from akvm.iommu.translate import (FR_PAGING_ACCESS, FR_PAGING_RESERVED, FR_READ, FR_WRITE,
                                  ContextEntry, Leaf, TranslationFault, WalkParams, walk,
                                  walk_native, walk_python)
from tests.unit.vtd_tables import GiB, MiB, PAGE, PS, R, SID, W, X, Rig
from akvm.base.memory import GuestMemory

LOW, HIGH, HIGH_SIZE = 0x40000, 0x1_0000_0000, 0x10000     # two slots with a hole between
U64 = 1 << 64


def memory():
    mem = GuestMemory()
    mem.add_slot(0, bytearray(LOW))
    mem.add_slot(HIGH, bytearray(HIGH_SIZE))
    return mem


def outcome(fn, mem, ctx, address, write, params):
    try:
        return fn(mem, ctx, address, write, params)
    except TranslationFault as f:
        return ("fault", f.reason, f.address, f.fpd, f.did, str(f))


tables = st.one_of(st.integers(1, LOW // PAGE - 1).map(lambda k: k * PAGE),
                   st.integers(0, HIGH_SIZE // PAGE - 1).map(lambda k: HIGH + k * PAGE))
pointer = st.one_of(tables, tables, tables,                          # mostly into RAM
                    st.sampled_from([LOW, HIGH - PAGE, HIGH + HIGH_SIZE, (1 << 52) - PAGE,
                                     2 * MiB, GiB, 0x8000_0000]),    # outside RAM, aligned
                    st.integers(0, (1 << 52) - 1).map(lambda a: a & ~0xFFF))
entry = st.builds(lambda ptr, perms, ps, low, high, junk:
                  ptr | perms | (PS if ps else 0) | (low << 2 & 0xF7C) | high << 52 | junk,
                  pointer, st.sampled_from([0, R, W, R | W, R | W, R | W]), st.booleans(),
                  st.integers(0, 0x3FF),                            # X, EMT, IPAT, A, D, ...
                  st.integers(0, 0xFFF),                            # bits 63:52 (ignored)
                  st.one_of(st.just(0), st.just(0), st.just(0),    # reserved address bits
                            st.integers(0, 51).map(lambda b: 1 << b)))
slptptr = st.one_of(tables, tables,
                    st.sampled_from([LOW - 4, LOW, HIGH + HIGH_SIZE - 4, U64 - 8, U64 - PAGE]),
                    st.integers(0, U64 - 1))
address = st.one_of(st.integers(0, (1 << 48) - 1), st.integers(0, (1 << 39) - 1),
                    st.integers(0, U64 - 1), st.sampled_from([0, (1 << 39) - 1, 1 << 39,
                                                              (1 << 48) - 1, 1 << 48, U64 - 1]))


@settings(max_examples=2000, deadline=None)
@given(levels_aw=st.sampled_from([(3, 39), (4, 48), (3, 39), (4, 48), (5, 57), (1, 21), (2, 30)]),
       width=st.one_of(st.none(), st.integers(0, 70)),
       root=slptptr, entries=st.lists(entry, min_size=6, max_size=6), address=address,
       write=st.booleans(), haw=st.sampled_from([36, 39, 46, 48, 52, 57, 64]),
       large_pages=st.integers(0, 3), garbage=st.lists(st.tuples(tables, st.integers(0, 511),
                                                                 entry), max_size=4))
def test_c_and_python_walks_agree(levels_aw, width, root, entries, address, write, haw,
                                  large_pages, garbage):
    levels, aw_width = levels_aw
    mem = memory()
    for table, index, value in garbage:
        mem.write_u64(table + index * 8, value)
    # Write one entry per level where the walk for `address` will look for it.
    table = root
    for level in range(levels, 0, -1):
        gpa = table + ((address >> (12 + 9 * (level - 1))) & 0x1FF) * 8
        if mem.contains(gpa, 8):
            mem.write_u64(gpa, entries[level - 1])
        table = entries[level - 1] & ((1 << 52) - 1) & ~0xFFF
    ctx = ContextEntry(SID, 7, 0, True, root, levels, aw_width if width is None else width)
    params = WalkParams(haw=haw, large_pages=large_pages)
    c = outcome(walk_native, mem, ctx, address, write, params)
    assert c is not None
    assert c == outcome(walk_python, mem, ctx, address, write, params)


# --- hand-built cases ---------------------------------------------------------------------

@pytest.mark.parametrize("levels,aw", [(4, 2), (3, 1)])
def test_pages_of_each_size(levels, aw):
    rig = Rig()
    table = rig.page()
    rig.set_context(SID, table=table, aw=aw)
    big = 0x80_0000_0000 if levels == 4 else 0x40_0000_0000
    pte4k = rig.map(table, 0x7654_3000, 0x5000, levels=levels, perms=R)
    pte2m = rig.map(table, 0x4000_0000, 0x20_0000, levels=levels, size=2 * MiB, perms=W)
    pte1g = rig.map(table, big, 0x4000_0000, levels=levels, size=GiB)
    ctx = ContextEntry(SID, 1, 0, False, table, levels, 39 if levels == 3 else 48)
    p = WalkParams()
    assert walk_native(rig.mem, ctx, 0x7654_3123, False, p) == \
        Leaf(0x7654_3000, 0x5000, 12, True, False, pte4k)
    assert walk_native(rig.mem, ctx, 0x4012_3456, True, p) == \
        Leaf(0x4000_0000, 0x20_0000, 21, False, True, pte2m)
    assert walk_native(rig.mem, ctx, big + 0x1234_5678, True, p) == \
        Leaf(big, 0x4000_0000, 30, True, True, pte1g)
    # Without 1 GiB pages PS at level 3 is a reserved bit.
    with pytest.raises(TranslationFault) as e:
        walk_native(rig.mem, ctx, big, False, WalkParams(large_pages=1))
    assert e.value.reason == FR_PAGING_RESERVED


def test_faults_carry_context_and_where():
    rig = Rig()
    table = rig.page()
    ctx = ContextEntry(SID, 9, 0, True, table, 4, 48)
    for write, reason in ((False, FR_READ), (True, FR_WRITE)):
        with pytest.raises(TranslationFault) as e:
            walk_native(rig.mem, ctx, 0x1000, write, WalkParams())
        assert (e.value.reason, e.value.fpd, e.value.did) == (reason, True, 9)
        assert f"level 4 entry at {table:#x} not present" in str(e.value)


@pytest.mark.parametrize("root", [16 * MiB, 16 * MiB - 4, U64 - 8, (1 << 52) - PAGE])
def test_tables_outside_ram_fault_instead_of_crashing(root):
    rig = Rig()                                  # 16 MiB of RAM
    ctx = ContextEntry(SID, 1, 0, False, root, 4, 48)
    with pytest.raises(TranslationFault) as e:
        walk_native(rig.mem, ctx, 0, False, WalkParams(haw=52))
    assert e.value.reason == FR_PAGING_ACCESS
    # A next-level pointer outside RAM, too.
    table = rig.page()
    rig.mem.write_u64(table, 0x4000_0000 | R | W)
    ctx = ContextEntry(SID, 1, 0, False, table, 4, 48)
    with pytest.raises(TranslationFault) as e:
        walk_native(rig.mem, ctx, 0, False, WalkParams())
    assert e.value.reason == FR_PAGING_ACCESS and "level 3 entry at 0x40000000" in str(e.value)


def test_walk_uses_c_and_sees_new_slots(monkeypatch):
    mem = memory()
    ctx = ContextEntry(SID, 1, 0, False, HIGH + HIGH_SIZE, 1, 21)
    with pytest.raises(TranslationFault):
        walk(mem, ctx, 0x3000, False, WalkParams())
    mem.add_slot(HIGH + HIGH_SIZE, bytearray(PAGE))       # the table is RAM now
    mem.write_u64(HIGH + HIGH_SIZE + 3 * 8, 0x7000 | R)
    monkeypatch.setattr(translate, "walk_python", None)    # C must do it
    assert walk(mem, ctx, 0x3abc, False, WalkParams()) == \
        Leaf(0x3000, 0x7000, 12, True, False, HIGH + HIGH_SIZE + 24)


def test_arguments_c_does_not_take_fall_back_to_python():
    mem = memory()
    ctx = ContextEntry(SID, 1, 0, False, PAGE, 0, 48)               # no levels
    assert walk_native(mem, ctx, 0, False, WalkParams()) is None
    ctx = ContextEntry(SID, 1, 0, False, PAGE, 3, 39)
    assert walk_native(mem, ctx, -1, False, WalkParams()) is None
    with pytest.raises(TranslationFault):
        walk(mem, ctx, -1, False, WalkParams())
