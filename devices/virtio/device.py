"""VirtioDevice: what every virtio device has, whatever its transport (virtio 1.2, ch. 2-3).

- Feature negotiation: the device offers feature bits; the driver writes
  the subset it accepts, then sets FEATURES_OK, which the device clears
  again when it cannot work with that subset.
- Device status and reset: writing 0 resets the device (queues, features,
  status). DRIVER_OK starts the queues. DEVICE_NEEDS_RESET is the device
  saying it gave up on a queue the driver broke.
- Device configuration space with its generation counter.
- Requests: the device's thread (akvm.devices.virtio.worker) takes chains from
  the queues and hands each to handle() as a Request whose read(), write()
  and complete() reach guest memory through the device's DMA object.

Locking: `lock` guards the rings, the status and guest-memory accesses;
it is held for memory copies only, never across backend I/O, so a vCPU
writing a register waits at most for one copy. A reset bumps `epoch`: a
request taken before it is abandoned (Abandoned) at its next memory
access, so a reset device never writes into memory the driver reclaimed.
Backend I/O straight into guest memory (Request.mapped) is counted, and a
reset waits for it: when reset() returns, no request touches guest RAM.
Interrupts are sent with the lock released (the transport takes its own).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading

from akvm.base.dma import DmaError
from akvm.devices.state import SnapshotUnsupported, pack, restore_counters, save_counters, unpack
from akvm.devices.virtio.queue import Chain, RingError, Virtqueue
from akvm.devices.virtio.worker import Worker, closed_with, drain_eventfd, new_eventfd
from akvm.devices.virtio.spec import (
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_ENTROPY, VIRTIO_ID_NET, VIRTIO_STATUS_ACKNOWLEDGE, VIRTIO_STATUS_DEVICE_NEEDS_RESET, VIRTIO_STATUS_DRIVER, VIRTIO_STATUS_DRIVER_OK, VIRTIO_STATUS_FAILED, VIRTIO_STATUS_FEATURES_OK,
)

log = logging.getLogger("akvm.virtio")

# Device status (2.1)

# Reserved feature bits (6), as bit numbers

# Device IDs (5)


def bit(n: int) -> int:
    return 1 << n


class Abandoned(Exception):
    """The device was reset (or gave up) while this request was being served."""


class Request:
    """One chain taken from a queue, served by VirtioDevice.handle()."""

    __slots__ = ("device", "vq", "chain", "epoch")

    def __init__(self, device: "VirtioDevice", vq: Virtqueue, chain: Chain, epoch: int):
        self.device, self.vq, self.chain, self.epoch = device, vq, chain, epoch

    @property
    def readable_len(self) -> int:
        return self.chain.readable_len

    @property
    def writable_len(self) -> int:
        return self.chain.writable_len

    def read(self, offset: int, n: int) -> bytes:
        """Bytes the driver gave the device (the readable buffers, as one stream)."""
        with self.device.lock:
            self.device.check_epoch(self.epoch)
            return self.chain.gather(self.vq.dma, offset, n)

    def write(self, offset: int, data) -> int:
        """Fill the writable buffers (as one stream) at offset; returns what fitted."""
        with self.device.lock:
            self.device.check_epoch(self.epoch)
            return self.chain.scatter(self.vq.dma, offset, data)

    @contextlib.contextmanager
    def mapped(self, write: bool, offset: int, n: int):
        """The writable (or readable) buffers at offset as views of guest memory, for
        I/O with the lock released; a reset waits until the block is left."""
        device = self.device
        with device.lock:
            device.check_epoch(self.epoch)
            views = self.chain.views(self.vq.dma, write, offset, n)
            device.mapped_io += 1
        try:
            yield views
        finally:
            with device.lock:
                device.mapped_io -= 1
                if not device.mapped_io:
                    device.io_idle.notify_all()

    def complete(self, written: int) -> None:
        """Return the chain on the used ring, `written` bytes filled, and notify the driver."""
        self.device.complete(self, written)


class VirtioDevice:
    """The transport-independent part of a virtio device. Subclasses set
    `device_id` and `kind`, fill `config`, and implement handle()."""

    device_id = 0
    kind = "virtio"

    def __init__(self, queue_sizes: list[int], features: int = 0, config_size: int = 0,
                 name: str | None = None):
        self.name = name or self.kind
        self.queues = [Virtqueue(i, n) for i, n in enumerate(queue_sizes)]
        self.device_features = (features | bit(VIRTIO_F_VERSION_1) |
                                bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX))
        self.driver_features = 0
        self.status = 0
        self.config_generation = 0
        self.config = bytearray(config_size)
        self.lock = threading.RLock()
        self.io_idle = threading.Condition(self.lock)    # mapped_io dropped to 0
        self.mapped_io = 0                 # Request.mapped() blocks in progress
        self.epoch = 0
        self.transport = None              # signal_queue(vq), signal_config()
        self.direct_dma = None
        self.platform_dma = None
        self.dma = None                    # the one in use since FEATURES_OK
        self.kick_fds = [new_eventfd() for _ in queue_sizes]
        self._close_kicks = closed_with(self, self.kick_fds)
        self.worker: Worker | None = None
        self.requests = 0
        self.errors = 0
        self.exit_kicks = 0                # notifications that came by a vCPU exit, not an eventfd
        self._logged: set[str] = set()

    # --- wiring ---------------------------------------------------------------------------

    def set_dma(self, direct, platform=None) -> None:
        """The DMA objects: `direct` (guest-physical), and `platform` (through the IOMMU),
        used when the driver accepts VIRTIO_F_ACCESS_PLATFORM, which is offered only then."""
        self.direct_dma, self.platform_dma = direct, platform
        if platform is not None:
            self.device_features |= bit(VIRTIO_F_ACCESS_PLATFORM)
        else:
            self.device_features &= ~bit(VIRTIO_F_ACCESS_PLATFORM)

    def start(self) -> None:
        """Serve the queues on the device's own thread from now on (a restored device
        first looks at every queue: a notification may not have been served)."""
        self.worker = self.make_worker()
        for i, fd in enumerate(self.kick_fds):
            self.worker.watch(fd, lambda i=i, fd=fd: (drain_eventfd(fd), self.queue_notified(i)))
        self.on_start()
        self.worker.start()
        if self.status & VIRTIO_STATUS_DRIVER_OK:
            self.schedule(self._service_all)

    # --- snapshots (akvm.devices.state; the transport saves this with its own state) ------

    _COUNTERS = ("requests", "errors", "exit_kicks")

    def snapshot(self) -> dict:
        with self.lock:
            return {"driver_features": self.driver_features, "status": self.status,
                    "config_generation": self.config_generation, "config": pack(self.config),
                    "queues": [vq.snapshot() for vq in self.queues],
                    **save_counters(self, self._COUNTERS), "device": self.device_snapshot()}

    def restore(self, state: dict) -> None:
        with self.lock:
            self.driver_features = int(state["driver_features"])
            self.status = int(state["status"]) & 0xFF
            self.config_generation = int(state["config_generation"])
            self.config[:] = unpack(state["config"], len(self.config))
            self.dma = None
            if self.status & VIRTIO_STATUS_FEATURES_OK:
                self.dma = (self.platform_dma if self.negotiated(VIRTIO_F_ACCESS_PLATFORM)
                            else self.direct_dma)
            if len(state["queues"]) != len(self.queues):
                raise ValueError(f"{len(state['queues'])} queues saved, {len(self.queues)} here")
            for vq, saved in zip(self.queues, state["queues"]):
                vq.restore(saved, self.dma)
            restore_counters(self, state, self._COUNTERS)
            self.device_restore(state["device"])

    def device_snapshot(self) -> dict:
        """What the device type adds to the common state (counters, buffered input)."""
        raise SnapshotUnsupported(f"{self.name} ({type(self).__name__}) has no snapshot support")

    def device_restore(self, state: dict) -> None:
        raise SnapshotUnsupported(f"{self.name} ({type(self).__name__}) has no snapshot support")

    def close(self) -> None:
        """Stop the thread (bounded: Worker.stop) and release what the device holds."""
        if self.worker is None or self.worker.stop():
            self._close_kicks()
        else:
            self._close_kicks.detach()     # the thread that did not stop may still poll them
        self.kick_fds = []
        self.on_close()

    def pause(self, timeout: float) -> bool:
        """Hold the device's thread between requests (a snapshot): True once held."""
        return self.worker is None or self.worker.pause(timeout)

    def resume(self) -> None:
        if self.worker is not None:
            self.worker.resume()

    def schedule(self, fn) -> None:
        """Run fn on the device's thread; inline when it has none (unit tests)."""
        if self.worker is not None:
            self.worker.call(fn)
        else:
            fn()

    # --- features -------------------------------------------------------------------------

    def negotiated(self, feature: int) -> bool:
        return bool(self.driver_features >> feature & 1)

    def device_features_word(self, select: int) -> int:
        return self.device_features >> (32 * select) & 0xFFFF_FFFF if select < 2 else 0

    def driver_features_word(self, select: int) -> int:
        return self.driver_features >> (32 * select) & 0xFFFF_FFFF if select < 2 else 0

    def set_driver_features_word(self, select: int, value: int) -> None:
        with self.lock:
            if select > 1 or self.status & VIRTIO_STATUS_FEATURES_OK:
                return                     # frozen once FEATURES_OK is set
            shift = 32 * select
            self.driver_features = (self.driver_features & ~(0xFFFF_FFFF << shift) |
                                    (value & 0xFFFF_FFFF) << shift)

    def features_problem(self, features: int) -> str | None:
        """Why the device cannot work with the features the driver accepted, or None."""
        if features & ~self.device_features:
            return f"driver accepted features not offered: {features & ~self.device_features:#x}"
        if not features >> VIRTIO_F_VERSION_1 & 1:
            return "driver did not accept VIRTIO_F_VERSION_1 (no legacy interface here)"
        return self.check_features(features)

    # --- status and reset -----------------------------------------------------------------

    def write_status(self, value: int) -> None:
        """The driver writes device_status; 0 resets the device."""
        value &= 0xFF
        if value == 0:
            self.reset()
            return
        error = None
        with self.lock:
            old = self.status
            new = old | value & ~VIRTIO_STATUS_DEVICE_NEEDS_RESET   # only a reset clears bits
            if new & VIRTIO_STATUS_FEATURES_OK and not old & VIRTIO_STATUS_FEATURES_OK:
                why = self.features_problem(self.driver_features)
                if why:
                    log.info("%s: FEATURES_OK refused: %s", self.name, why)
                    new &= ~VIRTIO_STATUS_FEATURES_OK
                else:
                    self.dma = (self.platform_dma if self.negotiated(VIRTIO_F_ACCESS_PLATFORM)
                                else self.direct_dma)
            starting = bool(new & VIRTIO_STATUS_DRIVER_OK and not old & VIRTIO_STATUS_DRIVER_OK)
            if starting and not new & VIRTIO_STATUS_FEATURES_OK:
                new &= ~VIRTIO_STATUS_DRIVER_OK    # DRIVER_OK without FEATURES_OK: not started
                starting = False
            self.status = new
            if starting:
                try:
                    for vq in self.queues:
                        if vq.ready:
                            self._activate(vq)
                except RingError as e:
                    error = e
        if error is not None:
            self.needs_reset(str(error))
        elif starting:
            self.on_driver_ok()
            self.schedule(self._service_all)

    def _activate(self, vq: Virtqueue) -> None:
        vq.activate(self.dma, event_idx=self.negotiated(VIRTIO_F_EVENT_IDX),
                    indirect=self.negotiated(VIRTIO_F_INDIRECT_DESC))

    def enable_queue(self, index: int) -> None:
        """queue_enable / QueueReady: the driver finished configuring the queue."""
        error = None
        with self.lock:
            vq = self.queues[index]
            if vq.ready:
                return
            vq.ready = True
            if self.status & VIRTIO_STATUS_DRIVER_OK:
                try:
                    self._activate(vq)
                except RingError as e:
                    error = e
        if error is not None:
            self.needs_reset(str(error))

    def reset(self) -> None:
        """Device reset: back to the state after power-on; requests in flight are abandoned,
        and I/O already moving data to or from guest memory is waited for."""
        with self.lock:
            self.epoch += 1
            self.status = 0
            self.driver_features = 0
            self.dma = None
            for vq in self.queues:
                vq.reset()
            self.on_reset()
            while self.mapped_io:
                self.io_idle.wait()

    def check_epoch(self, epoch: int) -> None:
        if epoch != self.epoch or self.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET:
            raise Abandoned()

    def needs_reset(self, why: str) -> None:
        """The driver broke a queue: stop, set DEVICE_NEEDS_RESET, tell the driver, log once."""
        with self.lock:
            if self.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET:
                return
            self.errors += 1
            self.status |= VIRTIO_STATUS_DEVICE_NEEDS_RESET
            running = bool(self.status & VIRTIO_STATUS_DRIVER_OK)
        self.log_once("needs-reset", f"{self.name}: {why}: DEVICE_NEEDS_RESET until the driver "
                                     "resets the device")
        if running and self.transport is not None:
            self.transport.signal_config()

    def fill_receive_buffer(self, req: Request, data) -> int | None:
        """Copy host input into a receive buffer the driver posted: the bytes that landed
        (0 when the buffer was not writable DMA, counted and logged once), or None when a
        reset abandoned the request."""
        try:
            return req.write(0, data)
        except Abandoned:
            return None
        except DmaError as e:
            self.errors += 1
            self.log_once("dma", f"{self.name}: receive buffer dropped: {e}")
            return 0

    def log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning("%s (logged once)", message)
        else:
            log.debug("%s", message)

    # --- configuration space --------------------------------------------------------------

    def read_config(self, offset: int, size: int) -> int:
        with self.lock:
            if offset < 0 or size <= 0 or offset + size > len(self.config):
                return 0
            return int.from_bytes(self.config[offset:offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        if 0 <= offset and 0 < size and offset + size <= len(self.config):
            self.config_written(offset, size, value & ((1 << 8 * size) - 1))

    def config_changed(self) -> None:
        """The device changed its configuration: new generation, and a notification."""
        with self.lock:
            self.config_generation = (self.config_generation + 1) & 0xFFFF_FFFF
            running = bool(self.status & VIRTIO_STATUS_DRIVER_OK)
        if running and self.transport is not None:
            self.transport.signal_config()

    # --- requests -------------------------------------------------------------------------

    def kick(self, index: int) -> None:
        """An available buffer notification for queue `index` (the MMIO exit path)."""
        if not 0 <= index < len(self.queues):
            return
        self.exit_kicks += 1
        if self.worker is not None:
            os.eventfd_write(self.kick_fds[index], 1)
        else:
            self.queue_notified(index)

    def usable(self, vq: Virtqueue) -> bool:
        status = self.status
        return (bool(status & VIRTIO_STATUS_DRIVER_OK) and vq.active and
                not status & VIRTIO_STATUS_DEVICE_NEEDS_RESET)

    def ring_op(self, vq: Virtqueue, op, epoch: int | None = None):
        """op(vq) under the lock if the queue is usable (and the epoch current); a RingError
        puts the device in DEVICE_NEEDS_RESET. Returns op's result, or None."""
        error = None
        with self.lock:
            if not self.usable(vq) or (epoch is not None and epoch != self.epoch):
                return None
            try:
                return op(vq)
            except RingError as e:
                error = e
        self.needs_reset(str(error))
        return None

    def pop_request(self, vq: Virtqueue) -> Request | None:
        def take(q: Virtqueue) -> Request | None:
            chain = q.pop()
            return None if chain is None else Request(self, q, chain, self.epoch)
        return self.ring_op(vq, take)

    def complete(self, req: Request, written: int) -> None:
        def push(q: Virtqueue) -> bool:
            q.push(req.chain.head, min(written, req.chain.writable_len))
            return q.needs_interrupt()
        self.requests += 1
        if self.ring_op(req.vq, push, req.epoch) and self.transport is not None:
            self.transport.signal_queue(req.vq)

    def _service_all(self) -> None:
        for i in range(len(self.queues)):
            self.queue_notified(i)

    def serve(self, vq: Virtqueue) -> None:
        """Take and handle every available chain, with notifications off meanwhile."""
        def reenable(q: Virtqueue) -> bool:
            q.set_notify(True)
            return bool(q.pending())
        while True:
            self.ring_op(vq, lambda q: q.set_notify(False))
            while (req := self.pop_request(vq)) is not None:
                self.process(req)
            if not self.ring_op(vq, reenable):
                return

    def process(self, req: Request) -> None:
        """handle() one request; a buffer the DMA object refuses drops the request."""
        try:
            written = self.handle(req)
        except Abandoned:
            return
        except DmaError as e:
            self.errors += 1
            self.log_once("dma", f"{self.name}: queue {req.vq.index}: request dropped: {e}")
            written = 0
        if written is not None:
            req.complete(written)

    # --- what device types provide ----------------------------------------------------------

    def queue_notified(self, index: int) -> None:
        """The driver made buffers available on queue `index` (device thread)."""
        self.serve(self.queues[index])

    def handle(self, req: Request) -> int | None:
        """Serve one request; returns the bytes written into it (None: completed later)."""
        return 0

    def check_features(self, features: int) -> str | None:
        return None

    def config_written(self, offset: int, size: int, value: int) -> None:
        """The driver wrote the device configuration space (read-only unless overridden)."""

    def make_worker(self):
        """The device's thread: its own Worker, unless a subclass has a better one."""
        return Worker(self.name)

    def on_driver_ok(self) -> None: ...
    def on_reset(self) -> None: ...
    def on_start(self) -> None: ...
    def on_close(self) -> None: ...

    def stats(self) -> dict:
        """Counters for --stats and the control socket's query-stats."""
        return {"requests": self.requests, "errors": self.errors}

    def format_stats(self, s: dict | None = None) -> str:
        s = s or self.stats()
        return f"{self.name}: {s['requests']} requests, {s['errors']} errors"
