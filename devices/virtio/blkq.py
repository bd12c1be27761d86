"""virtio-blk's request queue served in C (devices/virtio/blkq.c).

While the queue's DMA is direct (or passed through unchanged by the IOMMU), VirtioBlk.serve() hands rounds of it to a
NativeBlkQueue: one call, with the GIL released, takes every request
available when it starts, walks it, moves its data with preadv/pwritev
between the image and guest RAM, writes its status and puts it on the
used ring, then says whether the driver wants an interrupt. No Python
runs per request.

Python keeps what C stops at, in one place with its logging and error
handling: DISCARD and WRITE_ZEROES, malformed requests, buffers or ring
words outside guest RAM, broken chains (DEVICE_NEEDS_RESET); DMA the IOMMU
translates is all Python (a pass-through context is served here, checked
every round). The transport sends the interrupt.
"""
from __future__ import annotations

from akvm.base.native import ffi, lib

DONE = lib.AKVM_BLKQ_DONE            # the ring is empty, notifications are on
AGAIN = lib.AKVM_BLKQ_AGAIN          # more came in: serve another round
REQUEST = lib.AKVM_BLKQ_REQUEST      # the next available request is Python's
RING = lib.AKVM_BLKQ_RING            # a ring word is out of reach: Python serves the queue
STOPPED = lib.AKVM_BLKQ_STOPPED      # the device was reset meanwhile


class NativeBlkQueue:
    """One activation of a virtio-blk request queue (a Virtqueue with a NativeWalker)."""

    def __init__(self, vq, walker, fd: int, capacity: int, readonly: bool, write_through: bool,
                 ident: bytes):
        config = ffi.new("struct akvm_blkq_config *", {
            "desc": vq.desc, "driver": vq.driver, "device": vq.device, "size": vq.size,
            "indirect": vq.indirect, "event_idx": vq.event_idx, "fd": fd,
            "capacity": capacity, "readonly": readonly, "write_through": write_through,
            "id": list(ident.ljust(lib.AKVM_BLKQ_ID_BYTES, b"\0"))})
        self._walker = walker                # owns the slot array C reads guest RAM through
        handle = lib.akvm_blkq_new(config, walker.slots, len(walker.slots))
        if handle == ffi.NULL:
            raise MemoryError("akvm_blkq_new")
        self.handle = ffi.gc(handle, lib.akvm_blkq_free)
        self.run = ffi.new("struct akvm_blkq_run *")

    def load(self, vq) -> None:
        """The queue's ring state into C (with the device lock held)."""
        run = self.run
        run.last_avail, run.used_idx = vq.last_avail, vq.used_idx
        run.signalled_used = -1 if vq.signalled_used is None else vq.signalled_used

    def serve(self) -> int:
        """One round in C (GIL released): DONE, AGAIN, REQUEST, RING or STOPPED; the
        counters and the interrupt decision are in `run`."""
        return lib.akvm_blkq_serve(self.handle, self.run)

    def store(self, vq) -> None:
        """The ring state back into the Virtqueue (with the device lock held)."""
        run = self.run
        vq.last_avail, vq.used_idx = run.last_avail, run.used_idx
        vq.signalled_used = None if run.signalled_used < 0 else run.signalled_used

    def stop(self) -> None:
        """No guest memory access from now on (a reset): waits for the file I/O in
        flight, which may be moving data into guest RAM, to finish."""
        lib.akvm_blkq_stop(self.handle)
