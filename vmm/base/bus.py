"""Port-I/O and MMIO buses: an address range maps to one BusDevice.

Offsets are relative to the range's base. What a device does with an
access is its business; the bus only finds it.
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Protocol


class BusDevice(Protocol):
    """What a bus dispatches to: a vCPU's access of `size` bytes (1, 2, 4 or 8)
    at `offset` into the device's range. Reads return the value, zero-extended."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class BusError(ValueError):
    """A registration that overlaps an existing range."""


@dataclass
class Range:
    base: int
    size: int
    device: BusDevice
    name: str

    @property
    def end(self) -> int:
        return self.base + self.size


class Bus:
    """Ranges sorted by base; lookups are a bisect. Unclaimed reads return all ones."""

    def __init__(self, name: str):
        self.name = name
        # (bases, ranges), replaced whole under the lock so lookups from other
        # threads never see one list updated and not the other.
        self._table: tuple[list[int], list[Range]] = ([], [])
        self._lock = threading.Lock()
        self.unclaimed_reads = 0
        self.unclaimed_writes = 0
        self.accesses = 0
        self.listeners: list = []    # called with the bus after every change of its ranges

    def register(self, base: int, size: int, device: BusDevice, name: str | None = None) -> Range:
        if size <= 0:
            raise BusError(f"{self.name}: empty range at {base:#x}")
        rng = Range(base, size, device, name or type(device).__name__)
        with self._lock:
            bases, ranges = self._table
            i = bisect.bisect_left(bases, base)
            for other in ranges[max(0, i - 1):i + 1]:
                if base < other.end and other.base < rng.end:
                    raise BusError(f"{self.name}: {rng.name} at {base:#x}+{size:#x} overlaps "
                                   f"{other.name} at {other.base:#x}+{other.size:#x}")
            self._table = (bases[:i] + [base] + bases[i:], ranges[:i] + [rng] + ranges[i:])
            self._changed()
        return rng

    def unregister(self, rng: Range) -> None:
        with self._lock:
            bases, ranges = self._table
            i = ranges.index(rng)
            self._table = (bases[:i] + bases[i + 1:], ranges[:i] + ranges[i + 1:])
            self._changed()

    def _changed(self) -> None:
        """Tell listeners (the C fast path's copy of the ranges); called with the lock held."""
        for listener in self.listeners:
            listener(self)

    def find(self, addr: int) -> Range | None:
        bases, ranges = self._table
        i = bisect.bisect_right(bases, addr) - 1
        if i >= 0:
            rng = ranges[i]
            if addr < rng.end:
                return rng
        return None

    def read(self, addr: int, size: int) -> int:
        self.accesses += 1
        rng = self.find(addr)
        if rng is None:
            self.unclaimed_reads += 1
            return (1 << (8 * size)) - 1
        return rng.device.read(addr - rng.base, size)

    def write(self, addr: int, size: int, value: int) -> None:
        self.accesses += 1
        rng = self.find(addr)
        if rng is None:
            self.unclaimed_writes += 1
            return
        rng.device.write(addr - rng.base, size, value)

    def ranges(self) -> list[Range]:
        return list(self._table[1])
