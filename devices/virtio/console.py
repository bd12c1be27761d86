"""virtio-console (virtio 1.2, 5.3): port 0 bridged to a character backend.

Without VIRTIO_CONSOLE_F_MULTIPORT there are two queues: receiveq (0),
which the device fills with what the backend types, and transmitq (1),
whose bytes go to the backend. VIRTIO_CONSOLE_F_EMERG_WRITE lets the
driver write a character through the emerg_wr configuration field before
the queues work. Host input waits in a bounded buffer while the driver has
no receive buffers posted; what overflows it is dropped, as a UART would.
"""
from __future__ import annotations

import struct
import threading

from akvm.devices.chardev import Chardev
from akvm.devices.state import pack, restore_counters, save_counters, unpack
from akvm.devices.virtio.device import VIRTIO_ID_CONSOLE, Request, VirtioDevice, bit
from akvm.devices.virtio.spec import (
    VIRTIO_CONSOLE_F_EMERG_WRITE, VIRTIO_CONSOLE_F_MULTIPORT, VIRTIO_CONSOLE_F_SIZE,
)


RECEIVEQ, TRANSMITQ = 0, 1
QUEUE_SIZE = 64
# struct virtio_console_config: le16 cols, le16 rows, le32 max_nr_ports, le32 emerg_wr
CONFIG_SIZE = 12
MAX_NR_PORTS_OFF = 4
EMERG_WR_OFF = 8
INPUT_LIMIT = 64 * 1024
TX_CHUNK = 64 * 1024


class VirtioConsole(VirtioDevice):
    device_id = VIRTIO_ID_CONSOLE
    kind = "virtio-console"

    def __init__(self, chardev: Chardev, on_quit=None, name: str | None = None):
        super().__init__([QUEUE_SIZE, QUEUE_SIZE], bit(VIRTIO_CONSOLE_F_EMERG_WRITE),
                         CONFIG_SIZE, name)
        struct.pack_into("<I", self.config, MAX_NR_PORTS_OFF, 1)
        self.chardev = chardev
        self.on_quit = on_quit
        self._input = bytearray()
        self._input_lock = threading.Lock()
        self.rx_bytes = self.tx_bytes = self.rx_dropped = 0

    _COUNTERS = ("rx_bytes", "tx_bytes", "rx_dropped")

    def device_snapshot(self) -> dict:
        with self._input_lock:
            return {"input": pack(self._input), **save_counters(self, self._COUNTERS)}

    def device_restore(self, state: dict) -> None:
        with self._input_lock:
            self._input = bytearray(unpack(state["input"])[:INPUT_LIMIT])
        restore_counters(self, state, self._COUNTERS)

    # --- host side --------------------------------------------------------------------

    def on_start(self) -> None:
        self.chardev.start(self.receive, on_quit=self.on_quit)

    def on_close(self) -> None:
        self.chardev.close()

    def receive(self, data: bytes) -> None:
        """Bytes from the backend (its own thread): queued for the guest."""
        with self._input_lock:
            room = INPUT_LIMIT - len(self._input)
            self._input += data[:room]
            self.rx_dropped += max(0, len(data) - room)
        self.schedule(self._deliver)

    def _deliver(self) -> None:
        """Fill posted receive buffers with pending input."""
        rxq = self.queues[RECEIVEQ]
        while self._input:
            req = self.pop_request(rxq)
            if req is None:
                return
            with self._input_lock:
                chunk = bytes(self._input[:req.writable_len])
            n = self.fill_receive_buffer(req, chunk)
            if n is None:
                return
            with self._input_lock:
                del self._input[:len(chunk)]
            self.rx_bytes += n
            req.complete(n)

    # --- guest side -------------------------------------------------------------------

    def queue_notified(self, index: int) -> None:
        if index == RECEIVEQ:
            self._deliver()
        else:
            self.serve(self.queues[index])

    def handle(self, req: Request) -> int:
        """transmitq: the driver's bytes go to the backend."""
        for off in range(0, req.readable_len, TX_CHUNK):
            data = req.read(off, TX_CHUNK)
            self.chardev.write(data)
            self.tx_bytes += len(data)
        return 0

    def config_written(self, offset: int, size: int, value: int) -> None:
        if offset == EMERG_WR_OFF:        # offered, so usable even before negotiation
            self.chardev.write(bytes((value & 0xFF,)))
            self.tx_bytes += 1

    def stats(self) -> dict:
        return {**super().stats(), "tx_bytes": self.tx_bytes, "rx_bytes": self.rx_bytes,
                "rx_dropped": self.rx_dropped}

    def format_stats(self, s: dict | None = None) -> str:
        s = s or self.stats()
        return (f"{self.name}: {s['tx_bytes']} bytes out, {s['rx_bytes']} bytes in, "
                f"{s['rx_dropped']} dropped, {s['errors']} errors")
