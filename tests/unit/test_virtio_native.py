"""akvm_vq_walk (devices/virtio/virtq.c) against its Python twin, Virtqueue.walk_python:
the same descriptor tables give the same chain, or both refuse them."""
import struct

from hypothesis import given, settings, strategies as st

from tests.conftest import examples

from akvm.base.dma import DirectDma
from akvm.devices.virtio.queue import (
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, NativeWalker, RingError, Virtqueue,
)
from akvm.base.memory import GuestMemory

SIZE = 16
LOW, HIGH = 0x20000, 0x1_0000_0000          # two slots with a hole between, as above 3 GiB
TABLE = 0x1000
INDIRECT = 0x8000


def memory():
    mem = GuestMemory()
    mem.add_slot(0, bytearray(LOW))
    mem.add_slot(HIGH, bytearray(0x10000))
    return mem


def queue(mem, size=SIZE, desc=TABLE, indirect=True):
    vq = Virtqueue(0, size)
    vq.size, vq.desc, vq.driver, vq.device = size, desc, 0x4000, 0x6000
    vq.ready = True
    vq.activate(DirectDma(mem), event_idx=False, indirect=indirect)
    assert vq.native is not None
    return vq


def outcome(fn, head):
    try:
        chain = fn(head)
    except RingError:
        return "RingError"
    return (chain.readable, chain.writable, chain.readable_len, chain.writable_len)


addr = st.one_of(st.integers(0, LOW), st.integers(HIGH - 64, HIGH + 0x10000),
                 st.sampled_from([INDIRECT, INDIRECT + 8, (1 << 64) - 16]),
                 st.integers(0, (1 << 64) - 1))
descriptor = st.tuples(addr,
                       st.one_of(st.integers(0, 256), st.sampled_from([16, 32, 48, 0xFFFF_FFFF]),
                                 st.integers(0, 0xFFFF_FFFF)),
                       st.integers(0, 7),
                       st.one_of(st.integers(0, SIZE + 1), st.integers(0, 0xFFFF)))


@settings(max_examples=examples(1000), deadline=None)
@given(table=st.lists(descriptor, min_size=SIZE, max_size=SIZE),
       indirect=st.lists(descriptor, max_size=8),
       head=st.integers(0, SIZE + 2),
       indirect_ok=st.booleans(),
       desc_at=st.sampled_from([TABLE, HIGH + 0x100, LOW - 16 * 4, (1 << 64) - 32]))
def test_c_and_python_walks_agree(table, indirect, head, indirect_ok, desc_at):
    mem = memory()
    for i, (a, n, f, nx) in enumerate(indirect):
        mem.write(INDIRECT + 16 * i, struct.pack("<QIHH", a, n, f, nx))
    for i, (a, n, f, nx) in enumerate(table):
        if mem.contains(desc_at + 16 * i, 16):
            mem.write(desc_at + 16 * i, struct.pack("<QIHH", a, n, f, nx))
    vq = queue(mem, desc=desc_at, indirect=indirect_ok)
    assert outcome(vq.walk, head) == outcome(vq.walk_python, head)


def test_a_long_indirect_chain_falls_back_to_python():
    """More buffers than the C walker's array holds: Python walks it, with the same result."""
    mem = GuestMemory.from_bytearray(1 << 20)
    vq = queue(mem, size=4)
    n = vq.native.max_out + 10
    table = 0x10000
    for i in range(n):
        flags = VIRTQ_DESC_F_NEXT if i < n - 1 else 0
        mem.write(table + 16 * i, struct.pack("<QIHH", 0x80000 + i, 1, flags, i + 1))
    mem.write(TABLE, struct.pack("<QIHH", table, 16 * n, VIRTQ_DESC_F_INDIRECT, 0))
    assert vq.native.walk(vq, 0) is None
    chain = vq.walk(0)
    assert len(chain.readable) == n and chain.readable_len == n


def test_only_direct_dma_walks_in_c():
    class Translated(DirectDma):
        translated = True
    assert NativeWalker.for_dma(Translated(memory()), 8) is None
    assert NativeWalker.for_dma(DirectDma(memory()), 8) is not None
