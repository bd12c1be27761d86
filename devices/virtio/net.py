"""virtio-net (virtio 1.2, 5.1): one receive and one transmit queue, no offloads.

Every buffer starts with a struct virtio_net_hdr (12 bytes with
VIRTIO_F_VERSION_1: flags, gso_type, hdr_len, gso_size, csum_start,
csum_offset, num_buffers). Without offloads the device ignores the header
of what the driver sends and writes an empty one (num_buffers 1) before
each frame it receives. Frames come and go through a backend
(akvm.devices.virtio.netback); while the driver has no receive buffer posted
the device stops reading the backend, so frames wait there, not here.

On a backend with a loop in C (user networking) and with direct DMA, the
queues are served in C on the backend's thread from DRIVER_OK on
(akvm.devices.virtio.netq, netq.c): no Python runs per frame. On virtio-pci
with the machine's fast path, tx_by_vcpu (`tx=vcpu`) has the transmit
queue's notify address complete in C on the vCPU (in place of its
ioeventfd), which hands the frames to libslirp itself when the backend lets
it (nicport.h), as the e1000's TDT write does. That saves waking the
backend's thread, but the guest waits for the turn: it pays where the host
has no CPU to spare for that thread, while the thread, sending beside the
guest, is quicker where it has one (README, the net figures), hence the
default. A reset takes the queues back; so does C when it meets what Python
must report.
"""
from __future__ import annotations

import os
import struct

from akvm.devices.state import pack, restore_counters, save_counters, unpack
from akvm.devices.virtio.device import (
    VIRTIO_ID_NET, VIRTIO_STATUS_DRIVER_OK, Request, VirtioDevice, bit,
)
from akvm.devices.virtio.worker import drain_eventfd
from akvm.devices.virtio.spec import (
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_S_LINK_UP,
)


RECEIVEQ, TRANSMITQ = 0, 1
QUEUE_SIZE = 256
HDR = struct.Struct("<BBHHHHH")      # struct virtio_net_hdr
MTU = 1500
MAX_TX_FRAME = 65536 + 14
# struct virtio_net_config: u8 mac[6], le16 status, le16 max_virtqueue_pairs, le16 mtu
CONFIG_SIZE = 12


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"expected a MAC address like 02:00:00:00:00:01, got '{text}'")
    mac = bytes(int(p, 16) for p in parts)
    if mac[0] & 1:
        raise ValueError(f"{text} is a multicast address")
    return mac


class VirtioNet(VirtioDevice):
    device_id = VIRTIO_ID_NET
    kind = "virtio-net"

    def __init__(self, backend, mac: bytes, name: str | None = None, tx_by_vcpu: bool = False):
        super().__init__([QUEUE_SIZE, QUEUE_SIZE],
                         bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) | bit(VIRTIO_NET_F_MTU),
                         CONFIG_SIZE, name)
        self.backend = backend
        self.mac = mac
        struct.pack_into("<6sHHH", self.config, 0, mac, VIRTIO_NET_S_LINK_UP, 1, MTU)
        self._held: bytes | None = None        # a frame read while no buffer was posted
        self.rx_frames = self.tx_frames = self.rx_dropped = 0
        self.notify_exits = self.sent_by_vcpu = 0   # transmit notifications C completed
        self.native = True                     # serve the queues in C where the backend can
        self._native = None                    # NativeNetQueues while C serves them
        self.tx_by_vcpu = tx_by_vcpu           # a transmit notify runs the turn on the vCPU

    def make_worker(self):
        """The backend's thread when it has one (user networking), so frames cross
        between the device and the backend on one thread."""
        return getattr(self.backend, "worker", None) or super().make_worker()

    def on_start(self) -> None:
        self.backend.start(self.worker, self.receive)
        if self.status & VIRTIO_STATUS_DRIVER_OK:
            self.on_driver_ok()                  # restored from a snapshot: C again

    _COUNTERS = ("rx_frames", "tx_frames", "rx_dropped")

    def snapshot(self) -> dict:
        """With C serving the queues (its thread held: pause()), their state comes back
        into the Virtqueues first."""
        if self._native is not None:
            self._native_poll()
            with self.lock:
                self._native.store(*self.queues)
        return super().snapshot()

    def device_snapshot(self) -> dict:
        """The frame held for want of a receive buffer, and the counters; the backend is
        made anew from the configuration (frames in flight on the host side are lost)."""
        return {"held": None if self._held is None else pack(self._held),
                **save_counters(self, self._COUNTERS)}

    def device_restore(self, state: dict) -> None:
        self._held = None if state["held"] is None else unpack(state["held"])
        restore_counters(self, state, self._COUNTERS)

    def close(self) -> None:
        native = self._native
        if native is not None:
            native.stop()           # C's notify handler kicks no eventfd from now on
        super().close()

    def on_close(self) -> None:
        self.backend.close()

    # --- the queues in C ---------------------------------------------------------------

    def on_driver_ok(self) -> None:
        if self.native and hasattr(self.backend, "set_native") and self.worker is not None:
            epoch = self.epoch
            self.worker.call(lambda: self._go_native(epoch))

    def _go_native(self, epoch: int) -> None:
        """Hand both queues to C (on the backend's thread), if their DMA is direct."""
        from akvm.devices.virtio.netq import NativeNetQueues
        rxq, txq = self.queues
        with self.lock:
            if (epoch != self.epoch or self._native is not None or not self.usable(rxq) or
                    not self.usable(txq) or rxq.native is None or txq.native is None):
                return
            native = NativeNetQueues(rxq, txq, rxq.dma.memory, rxq.event_idx, rxq.indirect)
            self._native = native
        for fd in self.kick_fds:
            self.worker.unwatch(fd)
        from akvm.devices.virtio.netq import address
        self.backend.set_native(native.tx_function, native.rx_function, native.address,
                                tuple(self.kick_fds), self._native_gave_back,
                                self._native_interrupts, native,
                                attach=address("akvm_vnetq_attach"))
        notify_in_c = getattr(self.transport, "notify_in_c", None)
        if notify_in_c is not None and self.tx_by_vcpu:
            native.set_kick(self.kick_fds[TRANSMITQ])   # when the vCPU cannot take the turn
            notify_in_c(TRANSMITQ, "akvm_vnetq_exit", native)
        self._kick_native()

    def _kick_native(self) -> None:
        """Let C look at both queues (buffers may have come before it had them)."""
        for fd in self.kick_fds:
            os.eventfd_write(fd, 1)

    def _native_poll(self, signal: bool = True) -> bool:
        """Counters (and, with signal, the interrupts it wants) from C; whether it gave
        the queues back."""
        native = self._native
        if native is None:
            return False
        given_back, rx_irq, tx_irq, counts = native.poll()
        self.tx_frames += counts["tx_frames"]
        self.rx_frames += counts["rx_frames"]
        self.rx_dropped += counts["rx_dropped"]
        self.errors += counts["errors"]
        self.notify_exits += counts["notifies"]
        self.sent_by_vcpu += counts["direct"]
        if signal and self.transport is not None:
            for irq, vq in ((rx_irq, self.queues[RECEIVEQ]), (tx_irq, self.queues[TRANSMITQ])):
                if irq:
                    self.transport.signal_queue(vq)
        return given_back

    def _native_interrupts(self) -> None:
        self._native_poll()

    def _native_gave_back(self) -> None:
        """C met what Python must report: the queues come back, Python serves them."""
        if self._native_poll():
            with self.lock:
                self._native.store(*self.queues)
            self._leave_native()
            self._service_all()
            self.receive()

    def _leave_native(self) -> None:
        notify_in_kernel = getattr(self.transport, "notify_in_kernel", None)
        if notify_in_kernel is not None:
            notify_in_kernel(TRANSMITQ)         # no vCPU in netq.c's handler from now on
        self.backend.set_native(None, None, None, (-1, -1), None, None, None)
        self._native = None
        for i, fd in enumerate(self.kick_fds):
            self.worker.watch(fd, lambda i=i, fd=fd: (drain_eventfd(fd), self.queue_notified(i)))

    def on_reset(self) -> None:
        native = self._native
        if native is not None:
            native.stop()                      # C keeps off guest memory from now on
            self.worker.call(lambda: self._native is native and (self._native_poll(),
                                                                 self._leave_native()))

    # --- transmit -----------------------------------------------------------------------

    def queue_notified(self, index: int) -> None:
        if self._native is not None:
            self._kick_native()
            return
        if index == RECEIVEQ:                    # buffers posted: read the backend again
            self.backend.resume()
            self.receive()
        else:
            self.serve(self.queues[index])

    def handle(self, req: Request) -> int:
        length = req.readable_len - HDR.size
        if length <= 0 or length > MAX_TX_FRAME:
            self.log_once("tx-size", f"{self.name}: transmit buffer of {req.readable_len} bytes "
                                     "dropped")
            self.errors += 1
            return 0
        self.backend.send(req.read(HDR.size, length))
        self.tx_frames += 1
        return 0

    # --- receive ------------------------------------------------------------------------

    def receive(self) -> None:
        """Move frames from the backend into posted receive buffers (device thread).

        The receive queue asks the driver for notifications only once it has run out of
        buffers: a driver returning buffers one by one then need not exit for each."""
        rxq = self.queues[RECEIVEQ]
        while True:
            frame = self._held if self._held is not None else self.backend.recv()
            self._held = None
            if frame is None:
                return
            req = None
            if self.ring_op(rxq, self._buffers_ready):
                req = self.pop_request(rxq)
            if req is None:
                self._held = frame
                self.backend.pause()
                return
            if HDR.size + len(frame) > req.writable_len:
                self.ring_op(rxq, lambda q: q.unpop(), req.epoch)
                self.rx_dropped += 1
                self.log_once("rx-size", f"{self.name}: {len(frame)}-byte frame dropped: receive "
                                         f"buffer of {req.writable_len} bytes")
                continue
            header = HDR.pack(0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0, 1)
            n = self.fill_receive_buffer(req, header + frame)
            if n is None:
                return
            self.rx_frames += 1
            req.complete(n)

    @staticmethod
    def _buffers_ready(q) -> bool:
        """Buffers are there (notifications off), or, out of them, notifications are on and
        none came meanwhile (netq.c does the same)."""
        if not q.pending():
            q.set_notify(True)
            if not q.pending():
                return False
        q.set_notify(False)
        return True

    def stats(self) -> dict:
        self._native_poll(signal=False)
        return {**super().stats(), "tx_frames": self.tx_frames, "rx_frames": self.rx_frames,
                "rx_dropped": self.rx_dropped + self.backend.dropped,
                "tx_notify_exits_in_c": self.notify_exits, "tx_sent_by_vcpu": self.sent_by_vcpu}

    def format_stats(self, s: dict | None = None) -> str:
        s = s or self.stats()
        return (f"{self.name}: {s['tx_frames']} frames out, {s['rx_frames']} in, "
                f"{s['rx_dropped']} dropped, {s['errors']} errors; "
                f"{s['tx_notify_exits_in_c']} transmit notifications in C "
                f"({s['tx_sent_by_vcpu']} sent by the vCPU)")
