"""IOTLB misses walked in C (iommu/vtdfast.c) against the unit translating in Python.

Two units get the same random context entries, second-level tables, page
remaps without invalidation, and invalidations (the C one's IOTLB register
writes carried out in C, iommu/vtddoor.c). Every access goes, on the first,
through the translator in C a device engine gets (akvm.iommu.fastdma), and
to Python only where C hands it back; on the second, to Python alone. Both
must give the same address or fault, record the same faults, and end with
the same IOTLB (keys in LRU order, leaves, requester, cached faults) and
statistics."""
from hypothesis import given, settings, strategies as st

from akvm.base.memory import GuestMemoryError
from akvm.base.native import ffi
from akvm.iommu.cache import IotlbEntry, Negative
from akvm.iommu.translate import TranslationFault
from akvm.iommu.vtd import CCMD, FRCD, FSTS
from tests.conftest import examples
from tests.unit.vtd_tables import MiB, PAGE, PS, DoorbellRig, Rig

IOVA = 0x4000_0000                  # 4 KiB pages from here
BIG = IOVA + 2 * MiB                # 2 MiB pages from here
PAGES = 6
SIDS = (0x18, 0x20, 0x121)
NO_GENERATION = (1 << 64) - 1

perms = st.sampled_from([0, 1, 2] + [3] * 6)
context = st.fixed_dictionaries({
    "did": st.sampled_from([1, 2, 3]),
    "tt": st.sampled_from([0] * 12 + [2, 1, 3]),
    "aw": st.sampled_from([2] * 6 + [1] * 6 + [3, 0]),
    "fpd": st.sampled_from([False, False, False, True]),
    "present": st.sampled_from([True] * 15 + [False]),
    "lo_extra": st.sampled_from([0] * 19 + [0x10]),
    "hi_extra": st.sampled_from([0] * 19 + [1 << 30]),
})
mapping = st.tuples(
    st.integers(0, len(SIDS) - 1),
    st.sampled_from([False, False, False, True]),                   # 2 MiB page
    st.integers(0, PAGES - 1),
    st.one_of(st.integers(0, 0xFFFF).map(lambda f: f << 12),
              st.integers(0, 0xFF).map(lambda f: f << 21)),         # frame
    perms,
    st.sampled_from([0] * 8 + [1 << 50, 1 << 7]),                   # reserved bits, PS at 4K
    st.sampled_from([7] * 6 + [3, 1, 2]),                          # directory permissions
)
garbage = st.tuples(st.integers(0, 63), st.integers(0, 511),        # table page, entry
                    st.sampled_from([0, 1, 3, 0x3 | 1 << 51, 0x83, 0xFF_FFFF_F000 | 3]))
access = st.tuples(st.just("access"), st.integers(0, len(SIDS) - 1),
                   st.sampled_from([False, False, False, True]),
                   st.integers(0, PAGES - 1), st.integers(0, PAGE - 1), st.booleans())
mapped = st.tuples(st.just("mapped"), st.integers(0, 39), st.integers(0, PAGE - 1), st.booleans())
op = st.one_of(access, access, access, mapped, mapped, mapped, mapped, mapped, mapped,
               st.tuples(st.just("remap"), mapping),
               st.tuples(st.just("flush_page"), st.sampled_from([1, 2, 3]), st.booleans(),
                         st.integers(0, PAGES - 1), st.sampled_from([0, 0, 1, 3, 9])),
               st.tuples(st.just("flush_domain"), st.sampled_from([1, 2, 3])),
               st.tuples(st.just("flush_global")),
               st.tuples(st.just("context_global")))


def build(rig, s):
    rig.enable()
    tables = []
    for sid, ctx in zip(SIDS, s["contexts"]):
        table = rig.page()
        tables.append(table)
        rig.set_context(sid, table=table, **ctx)
    for m in s["mappings"]:
        remap(rig, s, tables, m)
    first, last = 1 * MiB, rig._next
    for page, index, value in s["garbage"]:
        gpa = first + page * PAGE + index * 8
        if gpa < last:
            rig.mem.write_u64(gpa, value)
    return tables


def remap(rig, s, tables, m):
    i, big, k, frame, perm, extra, dir_perms = m
    levels = 3 if s["contexts"][i]["aw"] == 1 else 4
    iova, size = (BIG + k * 2 * MiB, 2 * MiB) if big else (IOVA + k * PAGE, PAGE)
    if big and extra == PS:
        extra = 0
    try:
        rig.map(tables[i], iova, frame, levels=levels, size=size, perms=perm, leaf_extra=extra,
                dir_perms=dir_perms)
    except GuestMemoryError:            # a garbage entry on the way points outside RAM
        pass


def translate_c(rig, sid, address, write, exact):
    """C's translator first, Python for what it hands back."""
    dma = rig.dma_of[sid]
    xlate = dma.fast_translator()
    if xlate is not None:
        if exact:              # no `recent` between the IOTLB and C: LRU as in Python
            dma._fast.fast.generation = NO_GENERATION
        if xlate.lock(xlate.opaque) == 0:
            gpa, span = ffi.new("unsigned long long *"), ffi.new("unsigned long long *")
            try:
                r = xlate.translate(xlate.opaque, address, write, gpa, span)
            finally:
                xlate.unlock(xlate.opaque)
            dma.fast_done()
            if r == 0:
                rig.in_c_translations += 1
                return ("ok", gpa[0])
    return translate_py(rig, sid, address, write)


def translate_py(rig, sid, address, write):
    try:
        return ("ok", rig.iommu.translate(sid, address, write)[0])
    except TranslationFault as f:
        return ("fault", f.reason)


def faults(rig):
    return [rig.iommu.read(FSTS, 4)] + [rig.iommu.read(FRCD + 8 * i, 8) for i in range(16)]


def iotlb(rig):
    out = []
    for key, value in rig.iommu.iotlb.entries():
        if isinstance(value, IotlbEntry):
            out.append((key, value.did, value.leaf, value.sid))
        else:
            assert isinstance(value, Negative)
            out.append((key, value.did, value.fault.reason, value.fault.fpd))
    return out


def stats(rig):
    s = rig.iommu.stats()
    return s["translations"], s["iotlb"], s["faults"], len(rig.iommu.iotlb)


def run(s, exact):
    config = dict(iotlb_entries=s["capacity"], cm=s["cm"])
    rig_c, rig_py = DoorbellRig(size=4 * MiB, **config), Rig(size=4 * MiB, **config)
    tables = [build(rig, s) for rig in (rig_c, rig_py)]
    assert tables[0] == tables[1]
    rig_c.dma_of = {sid: rig_c.dma(sid) for sid in SIDS}
    rig_c.in_c_translations = 0
    for o in s["ops"]:
        kind = o[0]
        if kind == "mapped":            # an access to a page a mapping names
            i, big, k = s["mappings"][o[1] % len(s["mappings"])][:3]
            o = ("access", i, big, k, o[2], o[3])
            kind = "access"
        if kind == "access":
            _, i, big, k, offset, write = o
            address = (BIG + k * 2 * MiB if big else IOVA + k * PAGE) + offset
            got_c = translate_c(rig_c, SIDS[i], address, write, exact)
            got_py = translate_py(rig_py, SIDS[i], address, write)
            assert got_c == got_py, (o, got_c, got_py)
            assert faults(rig_c) == faults(rig_py)
            continue
        for rig in (rig_c, rig_py):
            if kind == "remap":
                remap(rig, s, tables[0], o[1])
            elif kind == "flush_page":
                _, did, big, k, am = o
                rig.flush_page(did, BIG + k * 2 * MiB if big else IOVA + k * PAGE, am)
            elif kind == "flush_domain":
                rig.flush_domain(o[1])
            elif kind == "flush_global":
                rig.w64(0xF8, 1 << 63 | 1 << 60)
            else:
                rig.w64(CCMD, 1 << 63 | 1 << 61)
    rig_c.sync()
    if exact:
        assert iotlb(rig_c) == iotlb(rig_py)
        assert stats(rig_c) == stats(rig_py)
    assert faults(rig_c) == faults(rig_py)
    return rig_c


def scenario(ops):
    return st.fixed_dictionaries({
        "cm": st.booleans(),
        "capacity": st.sampled_from([1, 2, 3, 8, 64]),
        "contexts": st.lists(context, min_size=len(SIDS), max_size=len(SIDS)),
        "mappings": st.lists(mapping, min_size=10, max_size=40),
        "garbage": st.lists(garbage, max_size=2),
        "ops": st.lists(ops, min_size=20, max_size=80),
    })


@settings(max_examples=examples(400), deadline=None)
@given(s=scenario(op))
def test_misses_walked_in_c_fill_the_iotlb_as_python_does(s):
    """Every translation, fault record, IOTLB entry (in LRU order) and counter the
    same, with remaps left uninvalidated (stale entries must be stale alike)."""
    run(s, exact=True)


def own_domains(s):
    """Each context its own domain: two contexts with one domain id and different tables
    share IOTLB entries, so what one translates depends on which entries the other left
    cached, and that depends on the replacement order this test lets differ."""
    return {**s, "contexts": [{**c, "did": i + 1} for i, c in enumerate(s["contexts"])]}


@settings(max_examples=examples(200), deadline=None)
@given(s=scenario(op.filter(lambda o: o[0] != "remap")).map(own_domains))
def test_c_recent_pages_follow_the_iotlb(s):
    """With vtdfast.c's own cache of recent pages in front of the IOTLB (whose hits
    do not reorder the LRU), translations and faults still agree."""
    run(s, exact=False)


def test_a_miss_is_walked_in_c():
    """600 pages through a 512-entry IOTLB: every page a miss, all done in C, the
    IOTLB holding what Python would, and the counts true."""
    rig = DoorbellRig(size=8 * MiB)
    rig.enable()
    table = rig.page()
    rig.set_context(0x18, table=table, did=4)
    frames = rig.page(256)
    for k in range(600):
        rig.map(table, IOVA + k * PAGE, frames + (k % 256) * PAGE, perms=1 if k % 2 else 3)
    rig.dma_of = {0x18: rig.dma(0x18)}
    rig.in_c_translations = 0
    for k in range(600):
        assert translate_c(rig, 0x18, IOVA + k * PAGE + 5, False, False) == \
            ("ok", frames + (k % 256) * PAGE + 5)
    assert rig.in_c_translations == 600
    # write to a read-only page (evicted by now): C hands it back, Python walks it
    # again, fills the IOTLB and records the fault
    assert translate_c(rig, 0x18, IOVA + PAGE, True, False) == ("fault", 5)
    rig.sync()
    s = rig.iommu.stats()
    assert s["translations"] == 601
    assert s["iotlb"][4] == dict(hits=0, misses=601, evictions=89, invalidated=0)
    assert s["faults"]["recorded"] == 1
    entries = rig.iommu.iotlb.entries()
    assert len(entries) == 512
    key, entry = entries[-2]                    # the last miss C filled (then Python's)
    assert key == (4, 12, (IOVA >> 12) + 599)
    assert entry.sid == 0x18 and entry.leaf.frame == frames + (599 % 256) * PAGE
    assert entry.leaf.read and not entry.leaf.write
    rig.flush_domain(4)                         # in C (vtddoor.c), slots C filled
    rig.sync()
    assert len(rig.iommu.iotlb) == 0
    assert rig.iommu.stats()["iotlb"][4]["invalidated"] == 512
