"""Port-I/O and MMIO buses: an address range maps to one BusDevice.

Offsets are relative to the range's base. What a device does with an
access is its business; the bus only finds it, and keeps a device model's
bug from becoming the guest's weapon: an exception out of a device is
logged once per device and register, the read answers all ones, the write
is dropped, and both are counted (`device_errors`); the VM runs on. A read
is cut to the access's size, whatever the device returned.
"""
from __future__ import annotations

import bisect
import logging
import threading
from typing import NamedTuple, Protocol


class BusDevice(Protocol):
    """What a bus dispatches to: a vCPU's access of `size` bytes (1, 2, 4 or 8)
    at `offset` into the device's range. Reads return the value, zero-extended."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


log = logging.getLogger("akvm.bus")

LOGGED_LIMIT = 64       # registers whose device errors are logged; a guest cannot flood the log


class BusError(ValueError):
    """A registration that overlaps an existing range."""


class Range(NamedTuple):
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
        self.device_errors = 0      # accesses a device model raised on (answered, dropped)
        self._logged: set[tuple[str, int, str]] = set()
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
        ones = (1 << (8 * size)) - 1
        rng = self.find(addr)
        if rng is None:
            self.unclaimed_reads += 1
            return ones
        try:
            return rng.device.read(addr - rng.base, size) & ones
        except Exception as e:     # a device model's bug: the guest gets all ones
            self._device_error(rng, addr - rng.base, "read", e)
            return ones

    def write(self, addr: int, size: int, value: int) -> None:
        self.accesses += 1
        rng = self.find(addr)
        if rng is None:
            self.unclaimed_writes += 1
            return
        try:
            rng.device.write(addr - rng.base, size, value)
        except Exception as e:     # a device model's bug: the write is dropped
            self._device_error(rng, addr - rng.base, "write", e)

    def _device_error(self, rng: Range, offset: int, kind: str, e: Exception) -> None:
        self.device_errors += 1
        key = (rng.name, offset, kind)
        if key in self._logged or len(self._logged) > LOGGED_LIMIT:
            return
        self._logged.add(key)
        if len(self._logged) > LOGGED_LIMIT:
            log.error("%s bus: more device errors than %d registers: no more are logged "
                      "(--stats counts them)", self.name, LOGGED_LIMIT)
            return
        log.error("%s bus: %s: internal error on a %s at offset %#x (%r); the access is %s, "
                  "the VM runs on (logged once for this register)", self.name, rng.name, kind,
                  offset, e, "answered with all ones" if kind == "read" else "dropped",
                  exc_info=e)

    def ranges(self) -> list[Range]:
        return list(self._table[1])
