"""Split virtqueues (virtio 1.2, 2.7): the device's side of the rings.

Three areas in guest memory, each reached only through the queue's DMA
object (akvm.devices.virtio.dma):

    queue_desc    descriptor table: queue_size x {le64 addr, le32 len,
                  le16 flags, le16 next}                         (align 16)
    queue_driver  available ring: le16 flags, le16 idx,
                  le16 ring[queue_size], le16 used_event          (align 2)
    queue_device  used ring: le16 flags, le16 idx,
                  {le32 id, le32 len}[queue_size], le16 avail_event (align 4)

pop() takes the next available descriptor chain and walks it (direct and
VIRTQ_DESC_F_INDIRECT tables) into a Chain of device-readable and
device-writable buffers; push() returns a chain on the used ring;
needs_interrupt() and set_notify() implement notification suppression,
with VIRTIO_F_EVENT_IDX or with the ring flags. With direct DMA the walk
runs in C (NativeWalker, devices/virtio/virtq.c); walk_python() is its twin.

The driver is untrusted. Whatever breaks the ring's rules -- an index
beyond the queue, a descriptor loop, a chain longer than its table, nested
or malformed indirect tables, lengths that overflow, a ring outside
memory -- raises RingError; the device then stops using the queue and asks
for a reset (DEVICE_NEEDS_RESET). Buffer contents are only touched by the
device model, through Chain.gather() / Chain.scatter(), which raise a DMA
error for addresses the DMA object refuses.
"""
from __future__ import annotations

import struct
import threading

from akvm.base.dma import DirectDma, DmaError
from akvm.devices.virtio.spec import (
    VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
)


DESC_SIZE = 16
USED_ELEM_SIZE = 8
MAX_QUEUE_SIZE = 32768
MAX_CHAIN_BYTES = 0xFFFF_FFFF          # a used element's len is 32 bits

_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")
_U16 = struct.Struct("<H")

_fence_lock = threading.Lock()


def memory_barrier() -> None:
    """A full fence: a lock's atomic read-modify-write orders the store before
    it with the loads after it (x86 lets a load pass an earlier store)."""
    with _fence_lock:
        pass


class RingError(Exception):
    """The driver broke the virtqueue's rules: the queue cannot be used until a reset."""


def ring_layout_error(size: int, desc: int, driver: int, device: int) -> str | None:
    """Why a queue of this size at these addresses cannot work, or None."""
    if size == 0 or size > MAX_QUEUE_SIZE or size & (size - 1):
        return f"queue size {size} is not a power of two up to {MAX_QUEUE_SIZE}"
    if desc % 16 or driver % 2 or device % 4:
        return (f"misaligned rings: queue_desc {desc:#x} (16), queue_driver {driver:#x} (2), "
                f"queue_device {device:#x} (4)")
    return None


class Chain:
    """One descriptor chain: what the driver gave the device for one request.

    `readable` are (addr, len) the device reads, in order; `writable` the
    ones it fills. Both are byte streams: gather(dma, offset, n) reads the
    readable stream, scatter(dma, offset, data) writes the writable one.
    """

    __slots__ = ("head", "readable", "writable", "readable_len", "writable_len")

    def __init__(self, head: int, readable_len: int = 0, writable_len: int = 0):
        self.head = head
        self.readable: list[tuple[int, int]] = []
        self.writable: list[tuple[int, int]] = []
        self.readable_len, self.writable_len = readable_len, writable_len

    @staticmethod
    def _pieces(segments: list[tuple[int, int]], offset: int, n: int):
        """(addr, len) pieces covering [offset, offset + n) of a segment stream."""
        for addr, length in segments:
            if n <= 0:
                return
            if offset >= length:
                offset -= length
                continue
            take = min(length - offset, n)
            yield addr + offset, take
            offset = 0
            n -= take

    def gather(self, dma, offset: int, n: int) -> bytes:
        """Up to n bytes of the readable stream from offset (fewer at its end)."""
        parts = [dma.read(a, k) for a, k in self._pieces(self.readable, offset, n)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def views(self, dma, write: bool, offset: int, n: int) -> list[memoryview]:
        """[offset, offset + n) of the writable (write=True) or readable stream as views
        of guest memory, for file I/O without a copy."""
        views = []
        for a, k in self._pieces(self.writable if write else self.readable, offset, n):
            views += dma.views(a, k, write)
        return views

    def scatter(self, dma, offset: int, data) -> int:
        """Write data into the writable stream at offset; returns the bytes that fitted."""
        view = memoryview(data)
        done = 0
        for a, k in self._pieces(self.writable, offset, len(view)):
            dma.write(a, view[done:done + k])
            done += k
        return done


class Virtqueue:
    """One split virtqueue: the driver's configuration and the device's ring state."""

    def __init__(self, index: int, max_size: int):
        if not 1 <= max_size <= MAX_QUEUE_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue {index}: size {max_size} is not a power of two "
                             f"up to {MAX_QUEUE_SIZE}")
        self.index = index
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        """The state after a device reset (virtio 1.2, 2.4)."""
        self.size = self.max_size           # queue_size
        self.desc = 0                       # queue_desc
        self.driver = 0                     # queue_driver (available ring)
        self.device = 0                     # queue_device (used ring)
        self.ready = False                  # queue_enable
        self.msix_vector = 0xFFFF           # queue_msix_vector (virtio-pci), VIRTIO_MSI_NO_VECTOR
        self.dma = None
        self.native: NativeWalker | None = None
        self.event_idx = False
        self.indirect = False
        self.last_avail = 0                 # the next available ring entry the device takes
        self.used_idx = 0                   # the device's used->idx
        self.signalled_used: int | None = None

    def activate(self, dma, *, event_idx: bool, indirect: bool) -> None:
        """Start using the rings (DRIVER_OK): raises RingError for a layout that cannot work."""
        why = ring_layout_error(self.size, self.desc, self.driver, self.device)
        if why:
            raise RingError(f"queue {self.index}: {why}")
        self.dma = dma
        self.event_idx = event_idx
        self.indirect = indirect
        self.native = NativeWalker.for_dma(dma, self.size)

    @property
    def active(self) -> bool:
        return self.ready and self.dma is not None

    _STATE = ("size", "desc", "driver", "device", "msix_vector", "last_avail", "used_idx")

    def snapshot(self) -> dict:
        """The driver's configuration and the device's place in the rings."""
        return {**{name: getattr(self, name) for name in self._STATE}, "ready": self.ready,
                "active": self.dma is not None, "event_idx": self.event_idx,
                "indirect": self.indirect, "signalled_used": self.signalled_used}

    def restore(self, state: dict, dma) -> None:
        """snapshot()'s inverse; an active queue uses `dma` again."""
        for name in self._STATE:
            setattr(self, name, int(state[name]))
        self.ready = bool(state["ready"])
        if state["active"]:
            self.activate(dma, event_idx=bool(state["event_idx"]),
                          indirect=bool(state["indirect"]))
        signalled = state["signalled_used"]
        self.signalled_used = None if signalled is None else int(signalled)

    # --- guest memory -----------------------------------------------------------------

    def _read(self, addr: int, n: int) -> bytes:
        try:
            return self.dma.read(addr, n)
        except DmaError as e:
            raise RingError(f"queue {self.index}: ring access failed: {e}") from None

    def _write(self, addr: int, data: bytes) -> None:
        try:
            self.dma.write(addr, data)
        except DmaError as e:
            raise RingError(f"queue {self.index}: ring access failed: {e}") from None

    def _u16(self, addr: int) -> int:
        return _U16.unpack(self._read(addr, 2))[0]

    @property
    def _used_event_addr(self) -> int:
        return self.driver + 4 + 2 * self.size

    @property
    def _avail_event_addr(self) -> int:
        return self.device + 4 + USED_ELEM_SIZE * self.size

    # --- taking requests ----------------------------------------------------------------

    def avail_idx(self) -> int:
        return self._u16(self.driver + 2)

    def pending(self) -> int:
        """Chains the driver made available that the device has not taken."""
        pending = (self.avail_idx() - self.last_avail) & 0xFFFF
        if pending > self.size:
            raise RingError(f"queue {self.index}: available index is {pending} entries ahead "
                            f"of the device, more than the queue size {self.size}")
        return pending

    def pop(self) -> Chain | None:
        """The next available chain, walked; None when there is none."""
        if not self.pending():
            return None
        head = self._u16(self.driver + 4 + 2 * (self.last_avail % self.size))
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return self.walk(head)

    def unpop(self) -> None:
        """Give back the chain pop() returned last, untouched (e.g. no frame to put in it)."""
        self.last_avail = (self.last_avail - 1) & 0xFFFF

    def walk(self, head: int) -> Chain:
        """Follow the chain that starts at descriptor `head` (in C when the DMA is direct)."""
        if self.native is not None:
            chain = self.native.walk(self, head)
            if chain is not None:
                return chain
        return self.walk_python(head)

    def walk_python(self, head: int) -> Chain:
        """The walk in Python: the reference for devices/virtio/virtq.c, and the one for
        translated DMA (the IOMMU)."""
        if head >= self.size:
            raise RingError(f"queue {self.index}: head {head} is outside the table of {self.size}")
        chain = Chain(head)
        table, count, index = self.desc, self.size, head
        seen, in_indirect = 0, False
        while True:
            if index >= count:
                raise RingError(f"queue {self.index}: next {index} is outside a table of {count}")
            seen += 1
            if seen > count:
                raise RingError(f"queue {self.index}: chain at {head} loops or is longer than "
                                f"its table ({count})")
            addr, length, flags, nxt = _DESC.unpack(self._read(table + DESC_SIZE * index,
                                                               DESC_SIZE))
            if flags & VIRTQ_DESC_F_INDIRECT:
                table, count = self._indirect_table(head, addr, length, flags, in_indirect)
                index, seen, in_indirect = 0, 0, True
                continue
            if addr + length > 1 << 64:
                raise RingError(f"queue {self.index}: buffer {addr:#x}+{length:#x} wraps")
            if flags & VIRTQ_DESC_F_WRITE:
                chain.writable_len += length
                if length:
                    chain.writable.append((addr, length))
            else:
                if chain.writable:
                    raise RingError(f"queue {self.index}: chain at {head} has a readable "
                                    "buffer after a writable one")
                chain.readable_len += length
                if length:
                    chain.readable.append((addr, length))
            if chain.readable_len > MAX_CHAIN_BYTES or chain.writable_len > MAX_CHAIN_BYTES:
                raise RingError(f"queue {self.index}: chain at {head} is longer than 4 GiB")
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            index = nxt

    def _indirect_table(self, head: int, addr: int, length: int, flags: int,
                        in_indirect: bool) -> tuple[int, int]:
        where = f"queue {self.index}: chain at {head}"
        if not self.indirect:
            raise RingError(f"{where}: indirect descriptor, VIRTIO_F_INDIRECT_DESC not negotiated")
        if in_indirect:
            raise RingError(f"{where}: indirect table inside an indirect table")
        if flags & VIRTQ_DESC_F_NEXT:
            raise RingError(f"{where}: indirect descriptor with VIRTQ_DESC_F_NEXT")
        if length == 0 or length % DESC_SIZE or length // DESC_SIZE > MAX_QUEUE_SIZE:
            raise RingError(f"{where}: indirect table of {length} bytes")
        if addr % DESC_SIZE or addr + length > 1 << 64:
            raise RingError(f"{where}: indirect table at {addr:#x}")
        return addr, length // DESC_SIZE

    # --- returning requests -------------------------------------------------------------

    def push(self, head: int, length: int) -> None:
        """Put a finished chain on the used ring (element first, then used->idx)."""
        slot = self.used_idx % self.size
        self._write(self.device + 4 + USED_ELEM_SIZE * slot, _USED_ELEM.pack(head, length))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._write(self.device + 2, _U16.pack(self.used_idx))

    def needs_interrupt(self) -> bool:
        """Whether the driver wants a used buffer notification for what was pushed
        since the last call (2.7.7.2 / 2.7.10)."""
        memory_barrier()                 # used->idx is visible before we read the driver's word
        if self.event_idx:
            event = self._u16(self._used_event_addr)
            new, old = self.used_idx, self.signalled_used
            self.signalled_used = new
            if old is None:              # first notification since the queue started
                return True
            return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not self._u16(self.driver) & VIRTQ_AVAIL_F_NO_INTERRUPT

    def set_notify(self, enabled: bool) -> None:
        """Ask the driver for (or spare it) available buffer notifications (2.7.7.1 / 2.7.10).

        With VIRTIO_F_EVENT_IDX, avail_event says "kick me once you pass this
        index"; otherwise the used ring's VIRTQ_USED_F_NO_NOTIFY flag. Call
        pending() after enabling: a chain may have come in meanwhile.
        """
        if self.event_idx:
            if enabled:
                self._write(self._avail_event_addr, _U16.pack(self.last_avail))
        else:
            self._write(self.device, _U16.pack(0 if enabled else VIRTQ_USED_F_NO_NOTIFY))
        if enabled:
            memory_barrier()


class NativeWalker:
    """akvm_vq_walk (devices/virtio/virtq.c): the chain walk in C, over the host mappings
    of guest RAM. Only for DirectDma; translated DMA walks in Python."""

    _ERRORS = {
        "AKVM_VQ_E_HEAD": "head is outside the table",
        "AKVM_VQ_E_NEXT": "a next index is outside its table",
        "AKVM_VQ_E_LOOP": "loops or is longer than its table",
        "AKVM_VQ_E_MEMORY": "ring access failed: a descriptor outside guest RAM",
        "AKVM_VQ_E_INDIRECT_FEATURE": "indirect descriptor, VIRTIO_F_INDIRECT_DESC not negotiated",
        "AKVM_VQ_E_INDIRECT_NESTED": "indirect table inside an indirect table",
        "AKVM_VQ_E_INDIRECT_NEXT": "indirect descriptor with VIRTQ_DESC_F_NEXT",
        "AKVM_VQ_E_INDIRECT_SIZE": "indirect table of a bad size",
        "AKVM_VQ_E_INDIRECT_ADDR": "indirect table at a bad address",
        "AKVM_VQ_E_WRAPS": "a buffer wraps the address space",
        "AKVM_VQ_E_READ_AFTER_WRITE": "has a readable buffer after a writable one",
        "AKVM_VQ_E_TOO_LONG": "is longer than 4 GiB",
    }

    def __init__(self, memory, max_out: int):
        from akvm.base.native import ffi, lib, native_slots
        self._ffi, self._lib = ffi, lib
        self.slots = native_slots(memory)
        if self.slots is None:
            raise ValueError("guest RAM has a slot C cannot reach")
        self._memory = memory              # keeps the mappings alive
        self.max_out = max_out
        self.out = ffi.new("struct akvm_vq_seg[]", max_out)
        self.lens = ffi.new("unsigned long long[2]")
        self.messages = {getattr(lib, k): v for k, v in self._ERRORS.items()}

    @classmethod
    def for_dma(cls, dma, size: int) -> "NativeWalker | None":
        if type(dma) is not DirectDma:
            return None
        return cls(dma.memory, size + 256)

    def walk(self, vq: Virtqueue, head: int) -> Chain | None:
        """The chain, or None when it has more buffers than fit here (walk it in Python)."""
        lib = self._lib
        n = lib.akvm_vq_walk(self.slots, len(self.slots), vq.desc, vq.size, head,
                             int(vq.indirect), self.out, self.max_out, self.lens, self.lens + 1)
        if n == lib.AKVM_VQ_E_TOO_MANY:
            return None
        if n < 0:
            raise RingError(f"queue {vq.index}: chain at {head} {self.messages[n]}")
        chain = Chain(head, readable_len=self.lens[0], writable_len=self.lens[1])
        out = self.out
        for i in range(n):
            seg = out[i]
            (chain.writable if seg.write else chain.readable).append((seg.addr, seg.len))
        return chain
