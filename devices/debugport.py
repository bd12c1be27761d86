"""Port 0x80, the POST-code port: firmware and benchmarks write progress codes here.

Writes are cheap exits with no side effects, which makes the port a good
probe of raw port-I/O exit cost; the counters let a benchmark check that
every exit reached the device.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from akvm.base.native import ffi
from akvm.base.runloop import PIO, FastPath

DEBUG_PORT = 0x80


class DebugPort:
    """Remembers the last value written and counts writes; reads return the last value."""

    def __init__(self, on_write: Callable[[int], None] | None = None, history: int = 64):
        self.on_write = on_write
        self.last = 0
        self.writes = 0
        self.history: deque[int] = deque(maxlen=history)   # recent codes, oldest first
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> int:
        return self.last & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= (1 << (8 * size)) - 1
        with self._lock:
            self.last = value
            self.writes += 1
            self.history.append(value)
        if self.on_write is not None:
            self.on_write(value)

    def register(self, bus) -> None:
        bus.register(DEBUG_PORT, 1, self, "debugport")

    def snapshot(self) -> dict:
        with self._lock:
            return {"last": self.last, "writes": self.writes, "history": list(self.history)}

    def restore(self, state: dict) -> None:
        with self._lock:
            self.last, self.writes = int(state["last"]), int(state["writes"])
            self.history.clear()
            self.history.extend(int(v) for v in state["history"])


class DebugPortShortcut:
    """Byte accesses completed in C (debugport.c), as DebugPort (the twin) answers them."""

    def __init__(self, fastpath: FastPath, port: int = DEBUG_PORT):
        self.handle = ffi.new("struct akvm_debugport *")
        self.hid = fastpath.add(PIO, port, 1, "akvm_debugport_complete", self)

    def stats(self) -> dict:
        return {"writes": self.handle.writes, "last": self.handle.last}

    def snapshot(self) -> dict:
        return self.stats()

    def restore(self, state: dict) -> None:
        self.handle.writes, self.handle.last = int(state["writes"]), int(state["last"]) & 0xFF
