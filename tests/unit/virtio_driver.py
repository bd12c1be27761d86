"""A virtio driver written for the tests: rings in a bytearray-backed GuestMemory.

QueueDriver is the driver's half of one split virtqueue (descriptor table,
available ring, used ring). bring_up() negotiates and starts a device the
way a transport would, for tests of device models that do not care which
transport carries them. Interrupts are recorded by Recorder.
"""
from __future__ import annotations

import struct
import time

from akvm.devices.virtio.device import (
    VIRTIO_STATUS_ACKNOWLEDGE, VIRTIO_STATUS_DRIVER, VIRTIO_STATUS_DRIVER_OK,
    VIRTIO_STATUS_FEATURES_OK, VirtioDevice,
)
from akvm.base.dma import DirectDma
from akvm.devices.virtio.queue import (
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
)
from akvm.base.memory import GuestMemory

MEM_SIZE = 4 << 20
RINGS = 0x10000            # queue i's rings at RINGS + i * RING_STRIDE
RING_STRIDE = 0x10000
DATA = 0x100000            # buffers are allocated from here


class Recorder:
    """A transport stand-in that counts the notifications a device sends."""

    def __init__(self):
        self.queue = []
        self.config = 0

    def signal_queue(self, vq):
        self.queue.append(vq.index)

    def signal_config(self):
        self.config += 1


class Allocator:
    def __init__(self, start: int = DATA, end: int = MEM_SIZE):
        self.next, self.end = start, end

    def __call__(self, size: int, align: int = 16) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + size > self.end:
            raise MemoryError("test memory exhausted")
        self.next = addr + size
        return addr


class QueueDriver:
    """The driver side of one split virtqueue."""

    def __init__(self, mem: GuestMemory, size: int, base: int):
        self.mem, self.size = mem, size
        self.desc = base
        self.avail = base + 16 * size
        self.used = (self.avail + 6 + 2 * size + 3) & ~3
        self.avail_idx = 0
        self.last_used = 0
        self.next_desc = 0
        mem.write(base, bytes(self.used + 6 + 8 * size - base))   # fresh rings are zeroed

    def configure(self, vq) -> None:
        """Write the queue's addresses straight into a Virtqueue (what a transport does)."""
        vq.size, vq.desc, vq.driver, vq.device = self.size, self.desc, self.avail, self.used

    # descriptors
    def write_desc(self, index: int, addr: int, length: int, flags: int, nxt: int = 0,
                   table: int | None = None) -> None:
        base = self.desc if table is None else table
        self.mem.write(base + 16 * index, struct.pack("<QIHH", addr, length, flags, nxt))

    def _take(self, n: int) -> list[int]:
        out = [(self.next_desc + i) % self.size for i in range(n)]
        self.next_desc = (self.next_desc + n) % self.size
        return out

    def chain(self, bufs: list[tuple[int, int, bool]]) -> int:
        """Descriptors for (addr, len, device_writable) buffers; returns the head."""
        idx = self._take(len(bufs))
        for i, (addr, length, writable) in enumerate(bufs):
            last = i == len(bufs) - 1
            flags = (VIRTQ_DESC_F_WRITE if writable else 0) | (0 if last else VIRTQ_DESC_F_NEXT)
            self.write_desc(idx[i], addr, length, flags, 0 if last else idx[i + 1])
        return idx[0]

    def indirect(self, bufs: list[tuple[int, int, bool]], table: int) -> int:
        """One direct descriptor pointing at an indirect table of the buffers."""
        for i, (addr, length, writable) in enumerate(bufs):
            last = i == len(bufs) - 1
            flags = (VIRTQ_DESC_F_WRITE if writable else 0) | (0 if last else VIRTQ_DESC_F_NEXT)
            self.write_desc(i, addr, length, flags, 0 if last else i + 1, table=table)
        head = self._take(1)[0]
        self.write_desc(head, table, 16 * len(bufs), VIRTQ_DESC_F_INDIRECT)
        return head

    def publish(self, head: int) -> None:
        """Put a head on the available ring and move avail->idx."""
        self.mem.write(self.avail + 4 + 2 * (self.avail_idx % self.size), struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write(self.avail + 2, struct.pack("<H", self.avail_idx))

    def add(self, bufs: list[tuple[int, int, bool]]) -> int:
        head = self.chain(bufs)
        self.publish(head)
        return head

    # rings
    def set_avail_flags(self, flags: int) -> None:
        self.mem.write(self.avail, struct.pack("<H", flags))

    def set_used_event(self, value: int) -> None:
        self.mem.write(self.avail + 4 + 2 * self.size, struct.pack("<H", value))

    @property
    def avail_event(self) -> int:
        return struct.unpack("<H", self.mem.read(self.used + 4 + 8 * self.size, 2))[0]

    @property
    def used_flags(self) -> int:
        return struct.unpack("<H", self.mem.read(self.used, 2))[0]

    @property
    def used_idx(self) -> int:
        return struct.unpack("<H", self.mem.read(self.used + 2, 2))[0]

    def take_used(self) -> list[tuple[int, int]]:
        """(id, len) elements the device returned since the last call."""
        out = []
        while self.last_used != self.used_idx:
            slot = self.last_used % self.size
            out.append(struct.unpack("<II", self.mem.read(self.used + 4 + 8 * slot, 8)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out


def new_memory() -> GuestMemory:
    return GuestMemory.from_bytearray(MEM_SIZE)


def bring_up(device: VirtioDevice, mem: GuestMemory, features: int | None = None,
             sizes: list[int] | None = None, dma=None) -> list[QueueDriver]:
    """Negotiate `features` (default: all offered) and start every queue; returns the drivers."""
    if device.direct_dma is None:
        device.set_dma(dma or DirectDma(mem))
    if device.transport is None:
        device.transport = Recorder()
    device.write_status(VIRTIO_STATUS_ACKNOWLEDGE)
    device.write_status(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER)
    f = device.device_features if features is None else features
    device.set_driver_features_word(0, f & 0xFFFF_FFFF)
    device.set_driver_features_word(1, f >> 32)
    device.write_status(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK)
    assert device.status & VIRTIO_STATUS_FEATURES_OK, "features refused"
    drivers = []
    for i, vq in enumerate(device.queues):
        size = sizes[i] if sizes else vq.max_size
        q = QueueDriver(mem, size, RINGS + i * RING_STRIDE)
        q.configure(vq)
        device.enable_queue(i)
        drivers.append(q)
    device.write_status(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                        VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK)
    return drivers


def wait_for(predicate, timeout=5.0):
    """Poll predicate until it holds (True) or timeout passes (its last value)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
