"""virtio-rng, the entropy device (virtio 1.2, 5.4): one queue, filled from getrandom(2)."""
from __future__ import annotations

import os

from akvm.devices.state import restore_counters, save_counters
from akvm.devices.virtio.device import VIRTIO_ID_ENTROPY, Request, VirtioDevice

QUEUE_SIZE = 64
MAX_REQUEST = 64 * 1024              # bytes per request; the driver asks again for more


class VirtioRng(VirtioDevice):
    device_id = VIRTIO_ID_ENTROPY
    kind = "virtio-rng"

    def __init__(self, name: str | None = None):
        super().__init__([QUEUE_SIZE], name=name)
        self.bytes_out = 0

    def device_snapshot(self) -> dict:
        return save_counters(self, ("bytes_out",))

    def device_restore(self, state: dict) -> None:
        restore_counters(self, state, ("bytes_out",))

    def handle(self, req: Request) -> int:
        n = min(req.writable_len, MAX_REQUEST)
        if n:
            req.write(0, os.getrandom(n))
            self.bytes_out += n
        return n

    def stats(self) -> dict:
        return {**super().stats(), "bytes_out": self.bytes_out}

    def format_stats(self, s: dict | None = None) -> str:
        s = s or self.stats()
        return f"{self.name}: {s['requests']} requests, {s['bytes_out']} bytes, {s['errors']} errors"
