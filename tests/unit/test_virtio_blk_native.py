"""virtio-blk's C path (devices/virtio/blkq.c) against its Python twin: two devices, one
serving its queue in C and one forced to Python, get the same random request sequences
(reads, writes, flushes, get-id, discards, unknown types; bad sectors, partial sectors,
short headers, missing status bytes, buffers outside RAM, broken chains; any framing,
indirect tables, batches) and must leave the same guest memory (data, status bytes,
used ring and lengths, notification words), the same image and the same counters,
and want an interrupt after the same kicks."""
import os
import struct
import time

from hypothesis import given, settings, strategies as st

from tests.conftest import examples

from akvm.devices.virtio import blkq
from akvm.devices.virtio.blk import (
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VirtioBlk,
)
from akvm.devices.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, bit
from akvm.devices.virtio.image import RawImage
from tests.unit.virtio_driver import (
    DATA, MEM_SIZE, RING_STRIDE, RINGS, Allocator, bring_up, new_memory, wait_for,
)

SECTORS = 64
OUTSIDE = [MEM_SIZE + 0x1000, MEM_SIZE - 4, (1 << 64) - 0x1000]   # beyond, straddling, far


@st.composite
def request(draw):
    kind = draw(st.one_of(st.sampled_from([VIRTIO_BLK_T_IN] * 3 + [VIRTIO_BLK_T_OUT] * 3 + [
        VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES]),
        st.integers(0, 0xFFFF_FFFF)))
    sector = draw(st.one_of(st.integers(0, SECTORS + 1),
                            st.sampled_from([SECTORS - 1, 1 << 63, (1 << 64) - 1])))
    length = draw(st.one_of(st.sampled_from([0, 512, 1024, 2048]), st.integers(0, 1100)))
    header = struct.pack("<IIQ", kind, draw(st.integers(0, 3)), sector)
    header = header[:draw(st.sampled_from([16] * 8 + [0, 8, 15]))]      # short headers
    readable, writable = header, length
    if kind == VIRTIO_BLK_T_OUT:
        readable, writable = header + bytes([draw(st.integers(0, 255))]) * length, 0
    elif kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
        readable, writable = header + struct.pack("<QII", sector % (SECTORS + 2), length // 512,
                                                  draw(st.integers(0, 1))), 0
    writable += draw(st.sampled_from([1] * 8 + [0, 2]))                 # the status byte
    cuts = st.lists(st.integers(1, 2100), max_size=3)
    return {
        "readable": readable, "writable": writable,
        "rcuts": draw(cuts), "wcuts": draw(cuts),
        "outside": draw(st.one_of(st.none(), st.tuples(st.integers(0, 8),
                                                       st.sampled_from(OUTSIDE)))),
        "read_after_write": draw(st.integers(0, 30)) == 0,             # a broken chain
        "indirect": draw(st.booleans()),
    }


def plain(readable, writable):
    """A request in one readable and one writable descriptor."""
    return {"readable": readable, "writable": writable, "rcuts": [], "wcuts": [],
            "outside": None, "read_after_write": False, "indirect": False}


def pieces(length, cuts):
    points = sorted({c for c in cuts if 0 < c < length}) + [length]
    start, out = 0, []
    for p in points:
        out.append(p - start)
        start = p
    return [n for n in out if n] or ([] if length == 0 else [length])


class Rig:
    def __init__(self, path, native, features, readonly):
        self.mem = new_memory()
        self.dev = VirtioBlk(RawImage(str(path), readonly), serial="rig", native=native)
        (self.q,) = bring_up(self.dev, self.mem, features=self.dev.device_features & features)
        self.alloc = Allocator()

    def submit(self, req, indirect_ok):
        """Lay the request out in memory and make it available."""
        q, mem = self.q, self.mem
        bufs = []
        data = req["readable"]
        for n in pieces(len(data), req["rcuts"]):
            addr = self.alloc(n)
            mem.write(addr, data[:n])
            data = data[n:]
            bufs.append([addr, n, False])
        for n in pieces(req["writable"], req["wcuts"]):
            addr = self.alloc(n)
            mem.write(addr, bytes([0xEE]) * n)           # what the device overwrites shows
            bufs.append([addr, n, True])
        if req["read_after_write"]:
            bufs.append([self.alloc(4), 4, False])
        if req["outside"] is not None and bufs:
            index, addr = req["outside"]
            bufs[index % len(bufs)][0] = addr
        if not bufs:
            bufs = [[self.alloc(1), 0, False]]
        if req["indirect"] and indirect_ok:
            q.publish(q.indirect([tuple(b) for b in bufs], self.alloc(16 * len(bufs))))
        else:
            q.add([tuple(b) for b in bufs])

    def kick(self):
        before = len(self.dev.transport.queue)
        self.dev.kick(0)
        return len(self.dev.transport.queue) > before

    def counters(self):
        d, vq = self.dev, self.dev.queues[0]
        return (d.requests, d.reads, d.writes, d.flushes, d.errors, d.bytes_read,
                d.bytes_written, d.status, sorted(d._logged),
                vq.last_avail, vq.used_idx, vq.signalled_used)


@settings(max_examples=examples(300), deadline=None)
@given(batches=st.lists(st.tuples(st.lists(request(), min_size=1, max_size=5),
                                  st.integers(0, 1), st.integers(0, 12)),
                        min_size=1, max_size=6),
       event_idx=st.booleans(), indirect=st.booleans(), flush=st.booleans(),
       readonly=st.booleans())
def test_c_and_python_serve_the_same(tmp_path_factory, batches, event_idx, indirect, flush,
                                     readonly):
    features = ~((0 if event_idx else bit(VIRTIO_F_EVENT_IDX)) |
                 (0 if indirect else bit(VIRTIO_F_INDIRECT_DESC)) |
                 (0 if flush else bit(VIRTIO_BLK_F_FLUSH)))
    image = bytes((i * 7 + i // 512) & 0xFF for i in range(SECTORS * 512))
    rigs = []
    for native in (True, False):
        path = tmp_path_factory.mktemp("twin") / "d.img"
        path.write_bytes(image)
        rigs.append((path, Rig(path, native, features, readonly)))
    try:
        for requests, no_interrupt, used_event in batches:
            wants = []
            for path, rig in rigs:
                rig.alloc.next = DATA
                rig.q.set_avail_flags(no_interrupt)
                rig.q.set_used_event((rig.q.used_idx + used_event) & 0xFFFF)
                for req in requests:
                    rig.submit(req, indirect)
                wants.append(rig.kick())
            (c_path, c), (py_path, py) = rigs
            assert c.mem.slots[0].buf == py.mem.slots[0].buf
            assert c.counters() == py.counters()
            assert wants[0] == wants[1]
        assert c_path.read_bytes() == py_path.read_bytes()
        assert c.dev._native_queue is not None and py.dev._native_queue is None
    finally:
        for _, rig in rigs:
            rig.dev.close()


def test_a_reset_stops_the_c_queue(tmp_path):
    """After akvm_blkq_stop() (a device reset) C touches nothing: a round reports STOPPED."""
    path = tmp_path / "d.img"
    path.write_bytes(bytes(SECTORS * 512))
    rig = Rig(path, True, ~0, False)
    rig.submit(plain(struct.pack("<IIQ", VIRTIO_BLK_T_FLUSH, 0, 0), 1), True)
    native = rig.dev._native_for(rig.dev.queues[0])
    native.load(rig.dev.queues[0])
    rig.dev.write_status(0)
    assert native.serve() == blkq.STOPPED
    assert rig.q.used_idx == 0 and rig.dev._native_queue is None
    rig.dev.close()


def test_a_request_made_available_during_a_round_is_served_by_the_next(tmp_path):
    """The driver publishes a request while C is in a round (here the round's own read
    lands on the available ring): the round ends with AGAIN, the next one serves it."""
    path = tmp_path / "d.img"
    path.write_bytes(bytes(SECTORS * 512))
    rig = Rig(path, True, ~0, False)
    q = rig.q
    hdr, status = rig.alloc(16), rig.alloc(1)
    rig.mem.write(hdr, struct.pack("<IIQ", VIRTIO_BLK_T_GET_ID, 0, 0))
    later = q.chain([(hdr, 16, False), (rig.alloc(20), 20, True), (status, 1, True)])
    first_hdr = rig.alloc(16)
    rig.mem.write(first_hdr, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 3))
    first = q.add([(first_hdr, 16, False), (q.avail, 512, True), (rig.alloc(1), 1, True)])
    rig.dev.image.pwrite(struct.pack("<HHHH", 0, 2, first, later), 3 * 512)
    vq, native = rig.dev.queues[0], rig.dev._native_for(rig.dev.queues[0])
    native.load(vq)
    assert native.serve() == blkq.AGAIN and native.run.completed == 1
    assert native.serve() == blkq.DONE and native.run.completed == 1
    native.store(vq)
    assert q.take_used() == [(first, 513), (later, 21)]
    assert rig.mem.read(status, 1) == b"\0" and vq.last_avail == 2
    rig.dev.close()


# --- with the device's thread ----------------------------------------------------------

BIG = 128 * 1024                     # reads long enough for a reset to land in a round
SLOTS = 16


def threaded_rig(tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(os.urandom(SLOTS * 8 * BIG))
    rig = Rig(path, True, ~0, False)
    rig.dev.start()
    return rig, path.read_bytes()


def submit_read(rig, i):
    """A BIG read at block i % (8 * SLOTS) into buffer slot i % SLOTS."""
    slot = i % SLOTS
    hdr, status, data = DATA + 0x100 * slot, DATA + 0x2000 + slot, DATA + 0x10000 + BIG * slot
    rig.mem.write(hdr, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, i % (8 * SLOTS) * BIG // 512))
    rig.q.add([(hdr, 16, False), (data, BIG, True), (status, 1, True)])
    return data, status


def test_the_thread_serves_bursts_in_order(tmp_path):
    """Kicks by eventfd while the thread serves: every request completes once, in order,
    with the right data."""
    rig, image = threaded_rig(tmp_path)
    try:
        for burst in range(20):
            first = burst * SLOTS
            placed = []
            for i in range(first, first + SLOTS):
                placed.append(submit_read(rig, i))
                if i % 4 == 3:
                    os.eventfd_write(rig.dev.kick_fds[0], 1)
            assert wait_for(lambda: rig.q.used_idx == first + SLOTS)
            assert [u[1] for u in rig.q.take_used()] == [BIG + 1] * SLOTS
            for i, (data, status) in zip(range(first, first + SLOTS), placed):
                block = i % (8 * SLOTS)
                assert rig.mem.read(status, 1) == b"\0"
                assert rig.mem.read(data, BIG) == image[block * BIG:(block + 1) * BIG]
        assert rig.dev.reads == rig.dev.requests == 20 * SLOTS
    finally:
        rig.dev.close()


def test_a_reset_while_c_serves_leaves_the_rings_alone(tmp_path):
    """Once the reset returns, the C queue writes no status byte and no used ring entry;
    after bring-up the device serves again."""
    rig, _ = threaded_rig(tmp_path)
    try:
        for i in range(SLOTS):
            submit_read(rig, i)
        os.eventfd_write(rig.dev.kick_fds[0], 1)
        time.sleep(0.0005)                             # the thread is in its round
        rig.dev.write_status(0)
        watched = (RINGS, RING_STRIDE), (DATA + 0x2000, SLOTS)
        before = [rig.mem.read(a, n) for a, n in watched]
        time.sleep(0.05)
        assert [rig.mem.read(a, n) for a, n in watched] == before
        (rig.q,) = bring_up(rig.dev, rig.mem)
        data, status = submit_read(rig, 5)
        os.eventfd_write(rig.dev.kick_fds[0], 1)
        assert wait_for(lambda: rig.q.used_idx == 1)
        assert rig.mem.read(status, 1) == b"\0"
    finally:
        rig.dev.close()
