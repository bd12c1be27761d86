"""Split virtqueues on bytearray memory: walking chains, the used ring, notification
suppression, and hostile rings (hand-made and hypothesis-generated). Every test runs
with the chain walk in C (devices/virtio/virtq.c) and with its Python twin."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import examples

from akvm.base.dma import DirectDma
from akvm.devices.virtio.queue import (
    MAX_CHAIN_BYTES, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY, NativeWalker, RingError, Virtqueue,
)
from tests.unit.virtio_driver import DATA, MEM_SIZE, RINGS, QueueDriver, new_memory

SIZE = 8


@pytest.fixture(autouse=True, params=["c", "python"])
def walker(request, monkeypatch):
    if request.param == "python":
        monkeypatch.setattr(NativeWalker, "for_dma", classmethod(lambda cls, dma, size: None))
    return request.param


def make(size=SIZE, event_idx=False, indirect=True):
    mem = new_memory()
    drv = QueueDriver(mem, size, RINGS)
    vq = Virtqueue(0, size)
    drv.configure(vq)
    vq.ready = True
    vq.activate(DirectDma(mem), event_idx=event_idx, indirect=indirect)
    return mem, drv, vq


def test_empty_queue_pops_nothing():
    _, _, vq = make()
    assert vq.pop() is None
    assert vq.pending() == 0


def test_direct_chain_readable_then_writable():
    mem, drv, vq = make()
    mem.write(DATA, b"hello ")
    mem.write(DATA + 0x100, b"world")
    head = drv.add([(DATA, 6, False), (DATA + 0x100, 5, False), (DATA + 0x200, 4, True),
                    (DATA + 0x300, 8, True)])
    chain = vq.pop()
    assert chain.head == head
    assert chain.readable == [(DATA, 6), (DATA + 0x100, 5)]
    assert chain.writable == [(DATA + 0x200, 4), (DATA + 0x300, 8)]
    assert (chain.readable_len, chain.writable_len) == (11, 12)
    dma = DirectDma(mem)
    assert chain.gather(dma, 0, 11) == b"hello world"
    assert chain.gather(dma, 4, 4) == b"o wo"
    assert chain.gather(dma, 9, 100) == b"ld"               # stops at the end of the stream
    assert chain.scatter(dma, 2, b"ABCDEFGHIJKLMNOP") == 10
    assert mem.read(DATA + 0x200, 4) == b"\0\0AB"
    assert mem.read(DATA + 0x300, 8) == b"CDEFGHIJ"
    assert vq.pop() is None


def test_indirect_chain():
    mem, drv, vq = make()
    table = DATA + 0x1000
    head = drv.indirect([(DATA, 16, False), (DATA + 0x100, 512, True), (DATA + 0x400, 1, True)],
                        table)
    drv.publish(head)
    chain = vq.pop()
    assert chain.head == head
    assert chain.readable == [(DATA, 16)]
    assert chain.writable == [(DATA + 0x100, 512), (DATA + 0x400, 1)]


def test_zero_length_buffers_are_skipped():
    _, drv, vq = make()
    drv.add([(DATA, 0, False), (DATA + 16, 4, True)])
    chain = vq.pop()
    assert chain.readable == [] and chain.writable == [(DATA + 16, 4)]


def test_push_writes_the_used_ring_and_idx():
    _, drv, vq = make()
    for i in range(2 * SIZE + 3):                           # wraps the rings
        head = drv.add([(DATA, 4, True)])
        chain = vq.pop()
        assert chain.head == head
        vq.push(chain.head, i)
        assert drv.take_used() == [(head, i)]
    assert drv.used_idx == 2 * SIZE + 3


def test_unpop_gives_the_chain_back():
    _, drv, vq = make()
    head = drv.add([(DATA, 4, True)])
    assert vq.pop().head == head
    vq.unpop()
    assert vq.pop().head == head


def test_indices_wrap_at_65536():
    _, drv, vq = make()
    drv.avail_idx = vq.last_avail = 0xFFFE
    vq.used_idx = 0xFFFE
    for _ in range(4):
        drv.add([(DATA, 4, True)])
        chain = vq.pop()
        vq.push(chain.head, 4)
    assert vq.last_avail == 2 and vq.used_idx == 2


# --- notification suppression ---------------------------------------------------------

def test_interrupts_follow_the_no_interrupt_flag_without_event_idx():
    _, drv, vq = make()
    drv.add([(DATA, 4, True)])
    vq.push(vq.pop().head, 4)
    assert vq.needs_interrupt()
    drv.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
    assert not vq.needs_interrupt()


def test_set_notify_uses_the_used_flags_without_event_idx():
    _, drv, vq = make()
    vq.set_notify(False)
    assert drv.used_flags == VIRTQ_USED_F_NO_NOTIFY
    vq.set_notify(True)
    assert drv.used_flags == 0


def test_event_idx_interrupts_only_when_used_event_is_crossed():
    _, drv, vq = make(event_idx=True)
    drv.set_used_event(2)                    # "interrupt me once used->idx passes 2"
    results = []
    for _ in range(5):
        drv.add([(DATA, 4, True)])
        vq.push(vq.pop().head, 4)
        results.append(vq.needs_interrupt())
    # used->idx goes 1..5; the first check always notifies, then only the step 2 -> 3
    assert results == [True, False, True, False, False]


def test_event_idx_batch_crossing_the_event_notifies_once():
    _, drv, vq = make(event_idx=True)
    drv.add([(DATA, 4, True)])
    vq.push(vq.pop().head, 4)
    assert vq.needs_interrupt()
    drv.set_used_event(1)
    for _ in range(3):
        drv.add([(DATA, 4, True)])
        vq.push(vq.pop().head, 4)
    assert vq.needs_interrupt()              # 1 -> 4 crossed used_event + 1
    assert not vq.needs_interrupt()          # nothing new


def test_event_idx_set_notify_publishes_avail_event():
    _, drv, vq = make(event_idx=True)
    for _ in range(3):
        drv.add([(DATA, 4, True)])
        vq.pop()
    vq.set_notify(True)
    assert drv.avail_event == 3
    assert drv.used_flags == 0


# --- hostile rings --------------------------------------------------------------------

def test_head_outside_the_table():
    mem, drv, vq = make()
    drv.publish(SIZE)
    with pytest.raises(RingError, match="outside the table"):
        vq.pop()


def test_descriptor_loop():
    _, drv, vq = make()
    drv.write_desc(0, DATA, 4, VIRTQ_DESC_F_NEXT, 1)
    drv.write_desc(1, DATA, 4, VIRTQ_DESC_F_NEXT, 0)
    drv.publish(0)
    with pytest.raises(RingError, match="loops"):
        vq.pop()


def test_self_loop():
    _, drv, vq = make()
    drv.write_desc(3, DATA, 4, VIRTQ_DESC_F_NEXT, 3)
    drv.publish(3)
    with pytest.raises(RingError, match="loops"):
        vq.pop()


def test_next_outside_the_table():
    _, drv, vq = make()
    drv.write_desc(0, DATA, 4, VIRTQ_DESC_F_NEXT, 999)
    drv.publish(0)
    with pytest.raises(RingError, match="outside"):
        vq.pop()


def test_available_index_too_far_ahead():
    mem, drv, vq = make()
    mem.write(drv.avail + 2, struct.pack("<H", SIZE + 1))
    with pytest.raises(RingError, match="ahead"):
        vq.pop()


def test_readable_after_writable():
    _, drv, vq = make()
    drv.write_desc(0, DATA, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
    drv.write_desc(1, DATA, 4, 0)
    drv.publish(0)
    with pytest.raises(RingError, match="readable buffer after a writable"):
        vq.pop()


def test_buffer_that_wraps_the_address_space():
    _, drv, vq = make()
    drv.write_desc(0, (1 << 64) - 16, 32, 0)
    drv.publish(0)
    with pytest.raises(RingError, match="wraps"):
        vq.pop()


def test_chain_longer_than_4gib():
    _, drv, vq = make()
    for i in range(3):
        drv.write_desc(i, DATA, 0xFFFF_FFFF, VIRTQ_DESC_F_NEXT if i < 2 else 0, i + 1)
    drv.publish(0)
    with pytest.raises(RingError, match="4 GiB"):
        vq.pop()


@pytest.mark.parametrize("flags,length,where,message", [
    (VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 32, DATA, "NEXT"),
    (VIRTQ_DESC_F_INDIRECT, 0, DATA, "table of"),
    (VIRTQ_DESC_F_INDIRECT, 24, DATA, "table of"),
    (VIRTQ_DESC_F_INDIRECT, 16 * 40000, DATA, "table of"),
    (VIRTQ_DESC_F_INDIRECT, 32, DATA + 8, "indirect table at"),
])
def test_malformed_indirect_descriptors(flags, length, where, message):
    _, drv, vq = make()
    drv.write_desc(0, where, length, flags, 1)
    drv.publish(0)
    with pytest.raises(RingError, match=message):
        vq.pop()


def test_indirect_without_the_feature():
    _, drv, vq = make(indirect=False)
    drv.publish(drv.indirect([(DATA, 4, True)], DATA + 0x1000))
    with pytest.raises(RingError, match="not negotiated"):
        vq.pop()


def test_nested_indirect():
    _, drv, vq = make()
    table = DATA + 0x1000
    drv.write_desc(0, table + 0x100, 16, VIRTQ_DESC_F_INDIRECT, table=table)
    drv.write_desc(0, table, 16, VIRTQ_DESC_F_INDIRECT)
    drv.publish(0)
    with pytest.raises(RingError, match="inside an indirect"):
        vq.pop()


def test_loop_inside_an_indirect_table():
    _, drv, vq = make()
    table = DATA + 0x1000
    drv.write_desc(0, DATA, 4, VIRTQ_DESC_F_NEXT, 1, table=table)
    drv.write_desc(1, DATA, 4, VIRTQ_DESC_F_NEXT, 0, table=table)
    drv.write_desc(0, table, 32, VIRTQ_DESC_F_INDIRECT)
    drv.publish(0)
    with pytest.raises(RingError, match="loops"):
        vq.pop()


def test_rings_outside_ram():
    mem = new_memory()
    vq = Virtqueue(0, SIZE)
    vq.size, vq.desc, vq.driver, vq.device = SIZE, MEM_SIZE + 0x1000, MEM_SIZE, MEM_SIZE + 0x2000
    vq.ready = True
    vq.activate(DirectDma(mem), event_idx=False, indirect=True)
    with pytest.raises(RingError, match="ring access failed"):
        vq.pop()


def test_descriptor_table_at_the_top_of_the_address_space():
    """queue_desc + 16 * index must not wrap around to low memory."""
    mem, drv, vq = make()
    vq.desc = (1 << 64) - 16
    drv.publish(1)
    with pytest.raises(RingError, match="ring access failed"):
        vq.pop()


def test_descriptor_table_outside_ram():
    mem, drv, vq = make()
    vq.desc = MEM_SIZE - 16 * 2                # the table runs off the end of RAM
    drv.publish(SIZE - 1)
    with pytest.raises(RingError, match="ring access failed"):
        vq.pop()


@pytest.mark.parametrize("size,desc,driver,device,message", [
    (6, RINGS, RINGS + 0x1000, RINGS + 0x2000, "power of two"),
    (0, RINGS, RINGS + 0x1000, RINGS + 0x2000, "power of two"),
    (8, RINGS + 8, RINGS + 0x1000, RINGS + 0x2000, "misaligned"),
    (8, RINGS, RINGS + 0x1001, RINGS + 0x2000, "misaligned"),
    (8, RINGS, RINGS + 0x1000, RINGS + 0x2002, "misaligned"),
])
def test_activate_refuses_unusable_layouts(size, desc, driver, device, message):
    vq = Virtqueue(0, 8)
    vq.size, vq.desc, vq.driver, vq.device = size, desc, driver, device
    with pytest.raises(RingError, match=message):
        vq.activate(DirectDma(new_memory()), event_idx=False, indirect=False)


def test_buffers_outside_ram_fail_only_when_touched():
    mem, drv, vq = make()
    drv.add([(MEM_SIZE + 0x1000, 64, True)])
    chain = vq.pop()                           # walking does not touch buffers
    from akvm.base.dma import DmaError
    with pytest.raises(DmaError):
        chain.scatter(DirectDma(mem), 0, b"x" * 64)


# --- hypothesis: any ring the driver can write --------------------------------------------

descriptor = st.tuples(
    st.one_of(st.integers(0, MEM_SIZE), st.integers(0, (1 << 64) - 1)),     # addr
    st.one_of(st.integers(0, 4096), st.integers(0, 0xFFFF_FFFF)),           # len
    st.integers(0, 7),                                                      # flags
    st.one_of(st.integers(0, SIZE - 1), st.integers(0, 0xFFFF)),            # next
)


@settings(max_examples=examples(400), deadline=None)
@given(table=st.lists(descriptor, min_size=SIZE, max_size=SIZE),
       indirect=st.lists(descriptor, min_size=0, max_size=12),
       heads=st.lists(st.integers(0, 0xFFFF), min_size=SIZE, max_size=SIZE),
       avail_idx=st.integers(0, 0xFFFF))
def test_hostile_rings_give_chains_or_ring_errors(table, indirect, heads, avail_idx):
    mem, drv, vq = make()
    ind_table = DATA + 0x8000
    for i, (addr, length, flags, nxt) in enumerate(indirect):
        drv.write_desc(i, addr, length, flags, nxt, table=ind_table)
    for i, (addr, length, flags, nxt) in enumerate(table):
        if flags & VIRTQ_DESC_F_INDIRECT and i % 2:   # some point at the indirect table
            addr, length = ind_table, 16 * len(indirect)
        drv.write_desc(i, addr, length, flags, nxt)
    for i, h in enumerate(heads):
        mem.write(drv.avail + 4 + 2 * i, struct.pack("<H", h))
    mem.write(drv.avail + 2, struct.pack("<H", avail_idx))
    taken = 0
    while True:
        try:
            chain = vq.pop()
        except RingError:
            break
        if chain is None:
            break
        taken += 1
        assert taken <= SIZE
        assert chain.readable_len <= MAX_CHAIN_BYTES and chain.writable_len <= MAX_CHAIN_BYTES
        assert len(chain.readable) + len(chain.writable) <= SIZE + len(indirect)
        for addr, length in chain.readable + chain.writable:
            assert length > 0 and addr + length <= 1 << 64
        vq.push(chain.head, 0)
