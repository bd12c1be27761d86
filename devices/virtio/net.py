"""virtio-net (virtio 1.2, 5.1): one receive and one transmit queue, no offloads.

Every buffer starts with a struct virtio_net_hdr (12 bytes with
VIRTIO_F_VERSION_1: flags, gso_type, hdr_len, gso_size, csum_start,
csum_offset, num_buffers). Without offloads the device ignores the header
of what the driver sends and writes an empty one (num_buffers 1) before
each frame it receives. Frames come and go through a backend
(akvm.devices.virtio.netback); while the driver has no receive buffer posted
the device stops reading the backend, so frames wait there, not here.
"""
from __future__ import annotations

import struct

from akvm.devices.state import pack, restore_counters, save_counters, unpack
from akvm.devices.virtio.device import VIRTIO_ID_NET, Request, VirtioDevice, bit
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

    def __init__(self, backend, mac: bytes, name: str | None = None):
        super().__init__([QUEUE_SIZE, QUEUE_SIZE],
                         bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) | bit(VIRTIO_NET_F_MTU),
                         CONFIG_SIZE, name)
        self.backend = backend
        self.mac = mac
        struct.pack_into("<6sHHH", self.config, 0, mac, VIRTIO_NET_S_LINK_UP, 1, MTU)
        self._held: bytes | None = None        # a frame read while no buffer was posted
        self.rx_frames = self.tx_frames = self.rx_dropped = 0

    def on_start(self) -> None:
        self.backend.start(self.worker, self.receive)

    _COUNTERS = ("rx_frames", "tx_frames", "rx_dropped")

    def device_snapshot(self) -> dict:
        """The frame held for want of a receive buffer, and the counters; the backend is
        made anew from the configuration (frames in flight on the host side are lost)."""
        return {"held": None if self._held is None else pack(self._held),
                **save_counters(self, self._COUNTERS)}

    def device_restore(self, state: dict) -> None:
        self._held = None if state["held"] is None else unpack(state["held"])
        restore_counters(self, state, self._COUNTERS)

    def on_close(self) -> None:
        self.backend.close()

    # --- transmit -----------------------------------------------------------------------

    def queue_notified(self, index: int) -> None:
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
        """Move frames from the backend into posted receive buffers (device thread)."""
        rxq = self.queues[RECEIVEQ]
        while True:
            frame, self._held = self._held or self.backend.recv(), None
            if frame is None:
                return
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

    def stats(self) -> dict:
        return {**super().stats(), "tx_frames": self.tx_frames, "rx_frames": self.rx_frames,
                "rx_dropped": self.rx_dropped + self.backend.dropped}

    def format_stats(self, s: dict | None = None) -> str:
        s = s or self.stats()
        return (f"{self.name}: {s['tx_frames']} frames out, {s['rx_frames']} in, "
                f"{s['rx_dropped']} dropped, {s['errors']} errors")
