"""Queued invalidation: every descriptor type, well formed and malformed; FSTS.IQE with
IQH left at the bad descriptor and resuming once it is cleared; invalidation wait with
status write and with the completion interrupt (IECTL mask, ICS.IWC); queue wrap-around
and batches."""
import json

import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import examples

from akvm.iommu.faults import FSTS_IQE
from akvm.iommu.vtd import (FECTL, FSTS, GCMD, GCMD_QIE, GCMD_TE, ICS, IEADDR, IECTL, IEDATA, IQA,
                       IQH, IQT)
from tests.unit.vtd_tables import SID, SID2, DoorbellRig, Rig

IE_ADDR, IE_DATA = 0xFEE0_1000, 0x52


def cc(g, did=0, sid=0, fm=0):
    return (0x1 | g << 4 | did << 16 | sid << 32 | fm << 48, 0)


def iotlb(g, did=0, addr=0, am=0, ih=0, dr=1, dw=1):
    return (0x2 | g << 4 | dw << 6 | dr << 7 | did << 16, addr | ih << 6 | am)


def dev_tlb(sid, addr=0, s=0):
    return (0x3 | sid << 32, addr | s)


def iec(g=0, index=0, im=0):
    return (0x4 | g << 4 | im << 27 | index << 32, 0)


def wait(status=None, data=0, interrupt=False, fence=False):
    lo = 0x5 | (1 << 4 if interrupt else 0) | (1 << 6 if fence else 0)
    hi = 0
    if status is not None:
        lo |= 1 << 5 | data << 32
        hi = status
    return (lo, hi)


@pytest.fixture
def rig():
    r = Rig()
    r.enable(qi=True)
    r.status = r.page()
    r.w32(IEDATA, IE_DATA)
    r.w32(IEADDR, IE_ADDR)
    return r


def counts(rig):
    return rig.iommu.invalidator.counts


def head(rig):
    return rig.r64(IQH) >> 4


def test_enabled(rig):
    assert rig.iommu.qi_enabled and head(rig) == 0


def test_wait_with_status_write(rig):
    rig.submit(wait(rig.status, 0xC0FFEE))
    assert rig.mem.read_u32(rig.status) == 0xC0FFEE
    assert head(rig) == 1 and rig.r64(IQT) >> 4 == 1


def test_wait_with_interrupt(rig):
    rig.w32(IECTL, 0)
    rig.submit(wait(interrupt=True))
    assert rig.r32(ICS) == 1 and rig.msis == [(IE_ADDR, IE_DATA)]
    rig.submit(wait(interrupt=True))                       # IWC still set: no second message
    assert len(rig.msis) == 1
    rig.w32(ICS, 1)
    assert rig.r32(ICS) == 0
    rig.submit(wait(interrupt=True, fence=True))
    assert len(rig.msis) == 2


def test_masked_completion_interrupt_pends_until_unmasked(rig):
    assert rig.r32(IECTL) == 1 << 31
    rig.submit(wait(rig.status, 1, interrupt=True))
    assert rig.msis == [] and rig.r32(IECTL) == 1 << 31 | 1 << 30
    rig.w32(IECTL, 0)
    assert rig.msis == [(IE_ADDR, IE_DATA)] and rig.r32(IECTL) == 0


def test_clearing_iwc_drops_a_pending_masked_interrupt(rig):
    rig.submit(wait(interrupt=True))
    rig.w32(ICS, 1)
    assert rig.r32(IECTL) == 1 << 31
    rig.w32(IECTL, 0)
    assert rig.msis == []


@pytest.mark.parametrize("descriptor,key", [
    (cc(1), ("queued", "context", "global")),
    (cc(2, did=5), ("queued", "context", "domain")),
    (cc(3, did=5, sid=SID, fm=3), ("queued", "context", "device")),
    (iotlb(1), ("queued", "iotlb", "global")),
    (iotlb(2, did=5), ("queued", "iotlb", "domain")),
    (iotlb(3, did=5, addr=0x40_0000, am=9, ih=1), ("queued", "iotlb", "page")),
    (dev_tlb(SID, 0x1000), ("queued", "device-tlb", "page")),
    (dev_tlb(SID, 0x7FFF_F000, s=1), ("queued", "device-tlb", "range")),
    (iec(0), ("queued", "interrupt-entry-cache", "global")),
    (iec(1, index=7, im=2), ("queued", "interrupt-entry-cache", "index")),
    (wait(), ("queued", "wait", "none")),
])
def test_every_descriptor_type(rig, descriptor, key):
    rig.submit(descriptor, wait(rig.status, 7))
    assert counts(rig)[key] == 1
    assert rig.mem.read_u32(rig.status) == 7 and not rig.r32(FSTS) & FSTS_IQE


def test_iotlb_descriptors_invalidate(rig):
    t1, t2 = rig.page(), rig.page()
    rig.set_context(SID, table=t1, did=1)
    rig.set_context(SID2, table=t2, did=2)
    ptes = [rig.map(t, a, 0x10_0000 + a) for t in (t1, t2) for a in (0x1000, 0x2000)]
    for sid in (SID, SID2):
        for a in (0x1000, 0x2000):
            rig.iommu.translate(sid, a, False)
    for pte in ptes:
        rig.mem.write_u64(pte, rig.mem.read_u64(pte) + 0x10_0000)
    rig.submit(iotlb(3, did=1, addr=0x2000))
    gpa = lambda sid, a: rig.iommu.translate(sid, a, False)[0]
    assert (gpa(SID, 0x1000), gpa(SID, 0x2000)) == (0x10_1000, 0x20_2000)
    rig.submit(iotlb(2, did=2))
    assert gpa(SID2, 0x1000) == 0x20_1000 and gpa(SID, 0x1000) == 0x10_1000
    rig.submit(iotlb(1))
    assert gpa(SID, 0x1000) == 0x20_1000


def test_context_descriptor_invalidates(rig):
    t1, t2 = rig.page(), rig.page()
    rig.map(t1, 0x1000, 0xA000)
    rig.map(t2, 0x1000, 0xB000)
    rig.set_context(SID, table=t1, did=1)
    rig.iommu.translate(SID, 0x1000, False)
    rig.set_context(SID, table=t2, did=2)
    rig.submit(cc(3, did=2, sid=SID))                      # wrong domain: stays cached
    assert rig.iommu.translate(SID, 0x1000, False)[0] == 0xA000
    rig.submit(cc(3, did=1, sid=SID), iotlb(2, did=1))
    assert rig.iommu.translate(SID, 0x1000, False)[0] == 0xB000


@pytest.mark.parametrize("bad", [
    (0x0, 0), (0x6, 0), (0x7, 0), (0x8, 0), (0x9, 0), (0xF, 0),        # unknown / scalable types
    (0x1 | 1 << 9, 0),                                     # type bits 11:9 (256-bit types)
    cc(0), iotlb(0),                                       # granularity 0 is reserved
    (cc(1)[0] | 1 << 8, 0), (cc(1)[0], 1), (cc(1)[0] | 1 << 60, 0),
    (iotlb(1)[0] | 1 << 40, 0), (iotlb(1)[0], 1 << 8),
    iotlb(3, did=1, am=19),                                # AM above MAMV (18)
    (dev_tlb(SID)[0] | 1 << 25, 0), (dev_tlb(SID)[0], 1 << 3),
    (iec()[0] | 1 << 10, 0), (iec()[0], 1 << 63),
    (wait()[0] | 1 << 7, 0),                               # PD: no page requests here
    (wait()[0] | 1 << 20, 0), (wait()[0], 1),              # status address bits 1:0
])
def test_malformed_descriptor_stops_the_queue_at_it(rig, bad):
    rig.w32(FECTL, 0)
    rig.w32(0x3C, 0x30)                                    # FEDATA
    rig.w32(0x40, 0xFEE0_0000)                             # FEADDR
    rig.submit(wait(rig.status, 1), bad, wait(rig.status, 2))
    assert rig.r32(FSTS) & FSTS_IQE
    assert head(rig) == 1                                  # IQH names the bad descriptor
    assert rig.mem.read_u32(rig.status) == 1               # the one after it did not run
    assert rig.msis == [(0xFEE0_0000, 0x30)]               # fault event for IQE
    rig.submit(wait(rig.status, 3))                        # more work waits behind IQE
    assert head(rig) == 1 and rig.mem.read_u32(rig.status) == 1
    # Software repairs the descriptor (as Linux does: a wait in its place) and clears IQE.
    rig.mem.write_u64(rig.queue + 16, 0x5)
    rig.mem.write_u64(rig.queue + 24, 0)
    rig.w32(FSTS, FSTS_IQE)
    assert not rig.r32(FSTS) & FSTS_IQE
    assert head(rig) == 4 and rig.mem.read_u32(rig.status) == 3


def test_tail_beyond_the_queue_is_an_error(rig):
    rig.w64(IQT, 256 << 4)                                 # QS 0: 256 entries
    assert rig.r32(FSTS) & FSTS_IQE and head(rig) == 0


def test_queue_outside_ram_is_an_error():
    rig = Rig()
    rig.w64(IQA, 0x7_0000_0000)
    rig.w32(GCMD, GCMD_TE | GCMD_QIE)
    rig.w64(IQT, 1 << 4)
    assert rig.r32(FSTS) & FSTS_IQE and rig.r64(IQH) == 0


def test_status_write_outside_ram_is_dropped(rig):
    rig.submit(wait(0x7_0000_0000, 5), wait(rig.status, 6))
    assert not rig.r32(FSTS) & FSTS_IQE and rig.mem.read_u32(rig.status) == 6
    assert rig.iommu.invalidator.wait_write_errors == 1


def test_wrap_around(rig):
    for i in range(300):                                   # 256 entries: wraps once
        rig.submit(wait(rig.status, i))
    assert rig.mem.read_u32(rig.status) == 299 and head(rig) == 300 % 256


def test_larger_queue_sizes():
    rig = Rig()
    rig.enable(qi=False)
    rig.queue = rig.page(count=4)
    rig.w64(IQA, rig.queue | 2)                            # 4 pages: 1024 entries
    rig.w32(GCMD, GCMD_TE | GCMD_QIE)
    status = rig.page()
    rig.submit(*[wait(status, i) for i in range(1000)])
    assert rig.r64(IQH) >> 4 == 1000 and rig.mem.read_u32(status) == 999
    assert not rig.r32(FSTS) & FSTS_IQE


def test_a_batch_of_invalidations_then_one_wait(rig):
    rig.w32(IECTL, 0)
    batch = [iotlb(3, did=9, addr=i << 12) for i in range(200)]
    rig.submit(*batch, wait(rig.status, 0xD0E, interrupt=True))
    assert counts(rig)[("queued", "iotlb", "page")] == 200
    assert rig.mem.read_u32(rig.status) == 0xD0E and rig.msis == [(IE_ADDR, IE_DATA)]
    assert counts(rig)[("queued", "wait", "status+interrupt")] == 1
    # The counts as query-stats sends them (JSON) and --stats prints them.
    sent = json.loads(json.dumps(rig.iommu.stats()))
    assert ["queued", "iotlb", "page", 200] in sent["invalidations"]
    line = next(x for x in rig.iommu.format_stats() if "invalidations:" in x)
    assert "queued iotlb page 200, queued wait status+interrupt 1" in line


def test_tail_written_while_disabled_is_processed_on_enable():
    rig = Rig()
    queue = rig.page()
    status = rig.page()
    rig.w64(IQA, queue)
    rig.mem.write_u64(queue, wait(status, 9)[0])
    rig.mem.write_u64(queue + 8, status)
    rig.w64(IQT, 1 << 4)
    assert rig.mem.read_u32(status) == 0
    rig.w32(GCMD, GCMD_QIE)
    assert rig.mem.read_u32(status) == 9 and rig.r64(IQH) == 1 << 4


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1)),
                min_size=1, max_size=20),
       st.lists(st.sampled_from([0x1, 0x2, 0x3, 0x4, 0x5]), min_size=20, max_size=20))
def test_random_descriptors_are_done_or_stop_the_queue(descriptors, types):
    """Random descriptors (types mostly valid, the rest random): each is carried out or
    stops the queue with IQE at it; nothing else happens."""
    rig = Rig(size=2 << 20)
    rig.enable(qi=True)
    mixed = [((lo & ~0xF) | t if lo & 0x10 else lo, hi)
             for (lo, hi), t in zip(descriptors, types)]
    rig.submit(*mixed)
    if rig.r32(FSTS) & FSTS_IQE:
        assert head(rig) < len(mixed)
    else:
        assert head(rig) == len(mixed)
    assert rig.iommu.internal_errors == 0


def _queue_rig(native: bool, doorbell: bool = False) -> Rig:
    r = DoorbellRig(size=2 << 20) if doorbell else Rig(size=2 << 20)
    r.enable(qi=True)
    r.status = r.page()
    r.iommu.invalidator.native = native
    r.w32(IEDATA, IE_DATA)
    r.w32(IEADDR, IE_ADDR)
    r.in_c = 0                          # what enable() did in C does not count
    return r


def _state(r):
    if isinstance(r, DoorbellRig):
        r.sync()
    return (head(r), r.r32(FSTS), r.r32(ICS), dict(counts(r)), r.iommu.invalidator.descriptors,
            r.iommu.iotlb.entries(), {d: vars(s) for d, s in r.iommu.iotlb.domains.items()},
            r.mem.read(r.status, 64), r.msis)


descriptor = st.one_of(
    st.builds(lambda g, did, page, am, rsv: (iotlb(g, did, page << 12, am)[0] | rsv << 8,
                                             iotlb(g, did, page << 12, am)[1]),
              st.integers(0, 3), st.integers(1, 3), st.integers(0, 40), st.sampled_from([0, 0, 1, 9, 12]),
              st.sampled_from([0, 0, 0, 1])),
    st.builds(lambda off, data, irq: wait(None if off < 0 else off, data, irq),
              st.sampled_from([-1, 0, 4, 60, 1 << 40]), st.integers(0, 0xFFFFFFFF), st.booleans()),
    st.builds(lambda g, did: cc(g, did), st.integers(0, 3), st.integers(0, 3)),
    st.just(dev_tlb(SID)), st.just(iec()),
    st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1)),
)


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 40), st.sampled_from([12, 12, 21])),
                max_size=30),
       st.lists(st.lists(descriptor, max_size=12), min_size=1, max_size=4))
def test_c_queue_and_python_queue_agree(cached, batches):
    """iommu/qi.c does IOTLB and plain wait descriptors and leaves the rest to
    Python: with and without it, and with the IQT doorbell in C (vtddoor.c), the
    same batches leave the same unit behind."""
    rigs = [_queue_rig(True), _queue_rig(False), _queue_rig(True, doorbell=True)]
    for r in rigs:
        with r.iommu.lock:
            for did, page, shift in cached:
                r.iommu.iotlb.insert(did, page << 12, shift, (did, page))
    for batch in batches:
        for r in rigs:
            resolved = [(lo, r.status + hi if lo & 0xF == 5 and lo & 1 << 5 and hi < 1 << 40 else hi)
                        for lo, hi in batch]
            r.submit(*resolved)
            if r.r32(FSTS) & FSTS_IQE:
                r.w32(FSTS, FSTS_IQE)            # clear it: the queue resumes past nothing
        assert _state(rigs[0]) == _state(rigs[1]) == _state(rigs[2])


def test_the_doorbell_completes_iqt_writes_in_c():
    r = _queue_rig(True, doorbell=True)
    with r.iommu.lock:
        r.iommu.iotlb.insert(1, 0x5000, 12, "cached")
    r.submit(iotlb(3, did=1, addr=0x5000), wait(r.status, 0xD0))
    assert r.in_c == 1                                   # no trip through Python
    assert r.mem.read_u32(r.status) == 0xD0
    assert head(r) == 2 and r.r64(IQT) >> 4 == 2         # Python caught up
    assert r.iommu.iotlb.lookup(1, 0x5000) is None
    assert counts(r)[("queued", "iotlb", "page")] == 1
    assert counts(r)[("queued", "wait", "status")] == 1
    # A descriptor C does not own: C does what comes before it, Python the rest.
    r.submit(wait(r.status, 0xD1), cc(1), wait(r.status, 0xD2))
    assert r.in_c == 1 and head(r) == 5 and r.mem.read_u32(r.status) == 0xD2
    assert counts(r)[("queued", "context", "global")] == 1


def test_the_doorbell_leaves_a_stopped_or_disabled_queue_to_python():
    r = _queue_rig(True, doorbell=True)
    r.submit((0xF, 0))                                   # reserved type: IQE
    assert r.r32(FSTS) & FSTS_IQE and head(r) == 0
    r.submit(wait(r.status, 7))                          # behind the bad one: stays
    assert r.in_c == 0 and head(r) == 0 and r.mem.read_u32(r.status) == 0
    r.w32(GCMD, GCMD_TE)                                 # QIE off: IQH back to 0
    r.w64(IQT, 0)
    assert r.in_c == 0 and head(r) == 0


def _shrunk_queue_rig(native: bool, doorbell: bool = False) -> Rig:
    """A 512-entry queue whose head has passed 300, then IQA written for 256 entries
    while queued invalidation stays on: IQH now lies past the end of the queue."""
    r = _queue_rig(native, doorbell)
    r.w32(GCMD, GCMD_TE)                                  # QIE off to program a bigger queue
    r.queue = r.page(2)
    r.w64(IQT, 0)
    r.w64(IQA, r.queue | 1)                               # QS 1: 512 entries
    r.w32(GCMD, GCMD_TE | GCMD_QIE)
    r.tail = 0
    r.submit(*[wait(r.status, i) for i in range(300)])
    r.w64(IQA, r.queue)                                   # QS 0: 256 entries, head 300
    for i in range(512):                                  # what C would run if it walked on
        r.mem.write_u64(r.queue + 16 * i, wait(r.status, 0xBAD)[0])
        r.mem.write_u64(r.queue + 16 * i + 8, r.status)
    r.in_c = 0
    return r


@pytest.mark.parametrize("tail", [10, 255, 300, 0x7FFF])
def test_a_head_or_tail_outside_the_queue_is_a_queue_error_in_c_and_python(tail):
    """IQH past the end after IQA shrinks, and IQT beyond the queue: Python, C and the
    C doorbell all stop with IQE and run nothing (C used to run the descriptors beyond
    the queue's end, then wrap)."""
    rigs = [_shrunk_queue_rig(True), _shrunk_queue_rig(False), _shrunk_queue_rig(True, True)]
    for r in rigs:
        r.w64(IQT, tail << 4)
    states = [_state(r) for r in rigs]
    assert states[0] == states[1] == states[2]
    assert rigs[0].r32(FSTS) & FSTS_IQE and head(rigs[0]) == 300
    assert rigs[0].mem.read_u32(rigs[0].status) == 299   # the last wait before the shrink
    assert rigs[2].in_c == 0


QI_CHILD = r'''
import sys
from akvm.base.memory import GuestMemory
from akvm.base.native import ffi, lib, native_slots
from akvm.iommu.cache import Iotlb
entries, head, tail = (int(a) for a in sys.argv[1:4])
mem = GuestMemory.from_bytearray(1 << 20)
slots = native_slots(mem)
tlb = Iotlb(16)
table, removed = tlb.native
out = ffi.new("struct akvm_qi_result *")
rc = lib.akvm_qi_process(slots, len(slots), table, 0x1000, entries, head, tail, 1, 18,
                         removed, 16, out)
print(rc, out.head, out.descriptors)
'''


@pytest.mark.parametrize("entries,head,tail", [(0, 0, 1), (256, 0, 256), (256, 300, 10),
                                               (256, 0, 0xFFFF_FFFF)])
def test_akvm_qi_process_refuses_a_queue_that_makes_no_sense(entries, head, tail):
    """No entries (a division by zero), a tail it can never reach (a loop forever with
    the unit's lock held), a head outside the queue: refused, nothing run. In a child
    process, which the old code killed with SIGFPE or hung."""
    import errno
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", QI_CHILD, str(entries), str(head), str(tail)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(-errno.EINVAL), str(head), "0"]


def test_the_doorbell_follows_guest_ram_when_its_slots_change():
    """RAM added after the doorbell was made (hotplug, a restored snapshot): a queue
    there is still run in C, through the door's new slot array, which it owns."""
    import gc
    r = _queue_rig(True, doorbell=True)
    extra = 64 << 20
    r.mem.add_slot(extra, bytearray(1 << 20))
    r.w32(GCMD, GCMD_TE)
    r.queue, r.tail = extra, 0
    r.w64(IQT, 0)
    r.w64(IQA, extra)                                     # Python takes the lock, republishes
    r.w32(GCMD, GCMD_TE | GCMD_QIE)
    gc.collect()                                          # the old array is gone, if unowned
    r.in_c = 0
    r.submit(wait(extra + 0x8000, 0x51))
    assert r.in_c == 1
    assert r.mem.read_u32(extra + 0x8000) == 0x51
