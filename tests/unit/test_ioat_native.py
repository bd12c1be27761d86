"""The I/OAT descriptor engine in C (devices/ioat.c) against its Python twin: the same
random channel state and descriptor chains (loops, DMACOUNT far ahead, NULL and memcpy
descriptors of any size up to past XFERCAP, other operations, sources, destinations,
`next`, CHAINADDR and CHANCMP inside, straddling and outside RAM, misaligned links)
run to the end by C (handing Python what it leaves) and by Python alone must leave the
same guest memory, the same channel state and counters, and the same results
(interrupts, errors) in the same order. Then the rest of what C promises."""
import os

from hypothesis import given, settings, strategies as st

from akvm.base.dma import DirectDma
from akvm.base.memory import GuestMemory
from akvm.base.native import native_slots
from akvm.devices import ioat
from akvm.iommu.vtd import FRCD
from tests.unit.ioat_driver import desc

MEM = 1 << 20
XFERCAP = 17                                   # 128 KiB: more than one chunk
DESCRIPTORS = 0x8000                           # descriptors live below this
OUTSIDE = [MEM, MEM - 8, (1 << 64) - 64, 1 << 40]
FIELDS = ("next", "chansts", "chancmp", "cur", "src", "dst", "link", "size", "ctl", "done",
          "loaded", "from_chainaddr", "count", "dmacount", "chanerr", "chanctrl", "xfercap",
          "stop", "descriptors", "bytes")
CTL_BITS = [ioat.CTL_INT_EN, ioat.CTL_COMPL_WRITE, ioat.CTL_NULL, ioat.CTL_FENCE]


def address(draw, slots):
    """A descriptor's link: mostly another descriptor, sometimes anything."""
    return draw(st.one_of(
        *[st.sampled_from(slots)] * 6,
        st.sampled_from([s + 8 for s in slots]),          # misaligned
        st.sampled_from(OUTSIDE),
        st.integers(0, MEM // 64 - 1).map(lambda i: i * 64)))


def buffer(draw):
    return draw(st.one_of(*[st.integers(DESCRIPTORS, MEM - (1 << XFERCAP) - 2)] * 12,
                          st.integers(DESCRIPTORS, MEM - 1), st.sampled_from(OUTSIDE)))


@st.composite
def scenario(draw):
    slots = sorted(draw(st.sets(st.integers(0, DESCRIPTORS // 64 - 1), min_size=1,
                                max_size=8)))
    slots = [s * 64 for s in slots]
    descriptors = []
    for a in slots:
        ctl = 0
        for bit in CTL_BITS:
            if draw(st.integers(0, 2)) == 0:
                ctl |= bit
        if draw(st.integers(0, 15)) == 0:
            ctl |= draw(st.integers(1, 255)) << ioat.CTL_OP_SHIFT
        size = draw(st.one_of(st.integers(1, 300), st.integers(0, (1 << XFERCAP) + 2),
                              st.sampled_from([0, 1 << XFERCAP, (1 << XFERCAP) + 1,
                                               ioat.CHUNK, ioat.CHUNK + 1])))
        descriptors.append((a, desc(size, ctl, buffer(draw), buffer(draw), address(draw, slots))))
    return {
        "descriptors": descriptors,
        "chain": slots[0] if draw(st.integers(0, 7)) else address(draw, slots),
        "chancmp": draw(st.one_of(*[st.integers(DESCRIPTORS, MEM - 8)] * 8,
                                  st.sampled_from(OUTSIDE))),
        "chanctrl": draw(st.integers(0, 0x1F)),
        "dmacount": draw(st.one_of(*[st.integers(1, 12)] * 4, st.just(0xFFFF))),
        "seed": draw(st.integers(0, 255)),
    }


def setup(s):
    mem = GuestMemory.from_bytearray(MEM)
    mem.write(0, bytes((i * 13 + s["seed"]) & 0xFF for i in range(256)) * (MEM // 256))
    for a, d in s["descriptors"]:
        mem.write(a, d)
    ch = ioat.new_channel(XFERCAP)
    ch.next, ch.chancmp, ch.chanctrl = s["chain"], s["chancmp"], s["chanctrl"]
    ch.dmacount = s["dmacount"]
    ch.chansts = ioat.ACTIVE
    return mem, ch


def run(mem, ch, native):
    """Rounds until DONE or ERROR (a looping chain with DMACOUNT 0xFFFF is cut short)."""
    dma, slots = DirectDma(mem), native_slots(mem)
    results = []
    for _ in range(40):
        r = ioat.run_native(ch, slots, len(mem.slots)) if native else ioat.run_python(ch, dma)
        if r == ioat.PYTHON:
            r = ioat.run_python(ch, dma)
        if r != ioat.ROUND:
            results.append(r)
        if r in (ioat.DONE, ioat.ERROR):
            break
    return results


@settings(max_examples=300, deadline=None)
@given(s=scenario())
def test_c_and_python_run_the_same(s):
    (mem_c, ch_c), (mem_py, ch_py) = setup(s), setup(s)
    results_c, results_py = run(mem_c, ch_c, True), run(mem_py, ch_py, False)
    assert results_c == results_py
    assert {f: getattr(ch_c, f) for f in FIELDS} == {f: getattr(ch_py, f) for f in FIELDS}
    assert mem_c.slots[0].buf == mem_py.slots[0].buf


def test_c_stops_at_the_chunk_it_is_asked_to():
    """stop set: C returns STOPPED before the next chunk and resumes where it was."""
    mem = GuestMemory.from_bytearray(MEM)
    data = os.urandom(1 << XFERCAP)
    mem.write(DESCRIPTORS, data)
    mem.write(0, desc(1 << XFERCAP, ioat.CTL_COMPL_WRITE, DESCRIPTORS, DESCRIPTORS + (1 << XFERCAP), 64))
    ch = ioat.new_channel(XFERCAP)
    ch.chancmp, ch.dmacount, ch.chansts = MEM - 64, 1, ioat.ACTIVE
    slots = native_slots(mem)
    ch.stop = 1
    assert ioat.run_native(ch, slots, 1) == ioat.STOPPED and not ch.loaded
    ch.loaded, ch.cur, ch.size, ch.ctl = 1, 0, 1 << XFERCAP, ioat.CTL_COMPL_WRITE
    ch.src, ch.dst, ch.link, ch.done = DESCRIPTORS, DESCRIPTORS + (1 << XFERCAP), 64, ioat.CHUNK
    ch.stop = 0                                 # as if stopped after the first chunk
    assert ioat.run_native(ch, slots, 1) == ioat.DONE
    dst = mem.read(DESCRIPTORS + (1 << XFERCAP), 1 << XFERCAP)
    assert dst[ioat.CHUNK:] == data[ioat.CHUNK:] and dst[:ioat.CHUNK] == bytes(ioat.CHUNK)
    assert mem.read_u64(MEM - 64) == 0 | ioat.IDLE and ch.count == 1


def test_a_round_ends_after_its_descriptors():
    """A loop of NULL descriptors with DMACOUNT far ahead: C gives the thread back every
    AKVM_IOAT_ROUND_DESCRIPTORS, so a reset or a context change is seen between rounds."""
    mem = GuestMemory.from_bytearray(MEM)
    mem.write(0, desc(1, ioat.CTL_NULL, 0, 0, 0))
    ch = ioat.new_channel(XFERCAP)
    ch.dmacount, ch.chansts = 0xFFFF, ioat.ACTIVE
    assert ioat.run_native(ch, native_slots(mem), 1) == ioat.ROUND
    assert ch.count == ioat.ROUND_DESCRIPTORS
    assert ch.chansts == 0 | ioat.ACTIVE


# --- translated: C from the IOTLB (iommu/vtdfast.c) against Python through TranslatedDma -----

IOVA = 0x1000_0000
PAGES = 48                                     # the window's pages; descriptors in page 0


@st.composite
def translated_scenario(draw):
    perms = [3] + draw(st.lists(st.sampled_from([3] * 30 + [1, 2, 0]), min_size=PAGES - 1,
                                max_size=PAGES - 1))
    order = draw(st.permutations(range(PAGES)))          # frames out of order: pieces
    slots = sorted(draw(st.sets(st.integers(0, 63), min_size=1, max_size=6)))
    slots = [IOVA + s * 64 for s in slots]
    window = st.integers(IOVA + 0x1000, IOVA + PAGES * 0x1000 - 1)
    descriptors = []
    for a in slots:
        ctl = ioat.CTL_COMPL_WRITE if draw(st.booleans()) else 0
        ctl |= ioat.CTL_NULL if draw(st.integers(0, 7)) == 0 else 0
        size = draw(st.one_of(*[st.integers(1, 0x3000)] * 3, st.integers(1, 0x14000)))
        src = draw(st.one_of(*[window] * 8, st.sampled_from([1 << 40, IOVA - 0x1000])))
        dst = draw(st.one_of(window, window, window.map(lambda a: a & ~0xFFF)))
        nxt = draw(st.sampled_from(slots * 4 + [slots[0] + 8, IOVA + PAGES * 0x1000]))
        descriptors.append((a, desc(size, ctl, src, dst, nxt)))
    return {"perms": perms, "order": order, "descriptors": descriptors, "chain": slots[0],
            "dmacount": draw(st.integers(1, 8)),
            "chancmp": draw(st.sampled_from([IOVA + 0x800, IOVA + 0x1FF8, IOVA + 0x2FFC])),
            "chanctrl": draw(st.integers(0, 0x1F)), "seed": draw(st.integers(0, 255)),
            "warm": draw(st.integers(0, 3)) > 0}


def translated_setup(s):
    from tests.unit.vtd_tables import Rig
    rig = Rig(size=4 << 20, base=0xFED9_0000)
    rig.enable()
    table = rig.page()
    sid = 0x20
    rig.set_context(sid, table=table, did=5)
    frames = rig.page(PAGES)
    rig.mem.write(frames, bytes((i * 31 + s["seed"]) & 0xFF for i in range(256)) * (PAGES * 16))
    for i, perm in enumerate(s["perms"]):
        if perm:
            rig.map(table, IOVA + i * 0x1000, frames + s["order"][i] * 0x1000, perms=perm)
    page0 = frames + s["order"][0] * 0x1000
    for a, d in s["descriptors"]:
        rig.mem.write(page0 + (a - IOVA), d)
    ch = ioat.new_channel(XFERCAP)
    ch.next, ch.chancmp, ch.chanctrl = s["chain"], s["chancmp"], s["chanctrl"]
    ch.dmacount, ch.chansts = s["dmacount"], ioat.ACTIVE
    return rig, rig.dma(sid), ch


def translated_run(rig, dma, ch, native, warm):
    if warm:                                   # the IOTLB holds the window, as after use
        for i in range(PAGES):
            try:
                dma.translate(IOVA + i * 0x1000, 1, False)
            except Exception:
                pass
    results = []
    for _ in range(40):
        r = ioat.PYTHON
        if native:
            xlate = dma.fast_translator()
            assert xlate is not None
            r = ioat.run_native(ch, native_slots(rig.mem), len(rig.mem.slots), xlate)
            dma.fast_done()
        if r == ioat.PYTHON:
            r = ioat.run_python(ch, dma, ioat.ROUND_BYTES, 1 if native else ioat.ROUND_DESCRIPTORS)
        if r != ioat.ROUND:
            results.append(r)
        if r in (ioat.DONE, ioat.ERROR):
            break
    return results


@settings(max_examples=150, deadline=None)
@given(s=translated_scenario())
def test_translated_c_and_python_run_the_same(s):
    """C translating IOTLB hits (misses, faults and permissions left to Python) and Python
    alone leave the same memory, channel and recorded faults."""
    (rig_c, dma_c, ch_c), (rig_py, dma_py, ch_py) = translated_setup(s), translated_setup(s)
    results_c = translated_run(rig_c, dma_c, ch_c, True, s["warm"])
    results_py = translated_run(rig_py, dma_py, ch_py, False, s["warm"])
    assert results_c == results_py
    assert {f: getattr(ch_c, f) for f in FIELDS} == {f: getattr(ch_py, f) for f in FIELDS}
    assert rig_c.mem.slots[0].buf == rig_py.mem.slots[0].buf
    faults = [(r.iommu.faults.status, r.iommu.read(FRCD, 8), r.iommu.read(FRCD + 8, 8))
              for r in (rig_c, rig_py)]
    assert faults[0] == faults[1]


def test_a_translator_refuses_once_the_context_moved():
    from tests.unit.vtd_tables import Rig
    rig = Rig(size=4 << 20, base=0xFED9_0000)
    rig.enable()
    rig.set_context(0x20, table=rig.page(), did=5)
    dma = rig.dma(0x20)
    xlate = dma.fast_translator()
    assert xlate is not None and xlate.lock(xlate.opaque) == 0
    xlate.unlock(xlate.opaque)
    rig.w64(0x28, 1 << 63 | 1 << 61)            # context cache: global invalidation
    assert xlate.lock(xlate.opaque) != 0
    rig.set_context(0x20, tt=2, did=1)
    assert dma.fast_translator() is None        # pass-through: no translator, RAM directly
