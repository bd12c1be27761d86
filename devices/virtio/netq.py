"""virtio-net's queues served in C (devices/virtio/netq.c) on a backend's thread.

With direct DMA and a backend that runs a loop in C (user networking,
akvm.devices.usernet), VirtioNet hands both queues to NativeNetQueues: the
backend's thread then takes what the guest sends and puts what the network
sends into the receive queue without Python. C gives the queues back (the
state travels with them) when it meets what Python must report: a broken
chain or a ring word outside guest RAM.
"""
from __future__ import annotations

from akvm.base.native import ffi, lib, native_slots

PYTHON = lib.AKVM_NIC_PYTHON


def address(name: str) -> int:
    """A C function's address, for a backend built as another extension module."""
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


class NativeNetQueues:
    """One activation of virtio-net's receive and transmit queues (Virtqueues)."""

    tx_function = address("akvm_vnetq_tx")
    rx_function = address("akvm_vnetq_rx")

    def __init__(self, rxq, txq, memory, event_idx: bool, indirect: bool):
        self.slots = native_slots(memory)
        if self.slots is None:
            raise ValueError("guest RAM has a slot C cannot reach")
        self._memory = memory                   # the mappings C reads through stay alive
        config = ffi.new("struct akvm_netq_config *")
        config.event_idx, config.indirect = event_idx, indirect
        for ring, vq in ((config.rx, rxq), (config.tx, txq)):
            ring.desc, ring.driver, ring.device, ring.size = vq.desc, vq.driver, vq.device, vq.size
            ring.last_avail, ring.used_idx = vq.last_avail, vq.used_idx
            ring.signalled_used = -1 if vq.signalled_used is None else vq.signalled_used
        handle = lib.akvm_vnetq_new(config, self.slots, len(self.slots))
        if handle == ffi.NULL:
            raise MemoryError("akvm_vnetq_new")
        self.handle = ffi.gc(handle, lib.akvm_vnetq_free)
        self._state = ffi.new("struct akvm_netq_config *")
        self._stats = ffi.new("struct akvm_netq_stats *")

    @property
    def address(self) -> int:
        return int(ffi.cast("uintptr_t", self.handle))

    def stop(self) -> None:
        """No guest memory access from now on (returns after the turn in progress), and
        no kick from the notify handler."""
        lib.akvm_vnetq_stop(self.handle)

    def set_kick(self, fd: int) -> None:
        """The eventfd the notify handler (akvm_vnetq_exit) writes when the vCPU cannot run
        the backend's turn itself."""
        lib.akvm_vnetq_set_kick(self.handle, fd)

    def poll(self) -> tuple[bool, bool, bool, dict]:
        """(given back to Python, receive queue wants an interrupt, transmit queue wants
        one, counters since the last poll)."""
        given_back = bool(lib.akvm_vnetq_state(self.handle, self._state, self._stats))
        s = self._stats
        return (given_back, bool(self._state.rx.irq), bool(self._state.tx.irq),
                {"tx_frames": s.tx_frames, "rx_frames": s.rx_frames,
                 "rx_dropped": s.rx_dropped, "errors": s.errors,
                 "notifies": s.notifies, "direct": s.direct})

    def store(self, rxq, txq) -> None:
        """The queues' state back into the Virtqueues (after stop(), or once given back)."""
        for ring, vq in ((self._state.rx, rxq), (self._state.tx, txq)):
            vq.last_avail, vq.used_idx = ring.last_avail, ring.used_idx
            vq.signalled_used = None if ring.signalled_used < 0 else ring.signalled_used
