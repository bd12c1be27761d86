"""The C run loop's Python handle (vmm/base/runloop.c): its bus ranges and its handlers.

C completes two kinds of exit without entering Python: those a device
registered a C completion for (`add()`: a bus range, a C function and its
state; the function may decline, and the exit then goes on), and accesses
inside no range the Python buses claim (reads all ones, writes dropped, as
Bus does). FastPath keeps C's copy of the claimed ranges current (a bus
listener). It knows no device: devices register themselves.
"""
from __future__ import annotations

from akvm.base.bus import Bus
from akvm.base.native import ffi, lib

PIO, MMIO = lib.AKVM_BUS_PIO, lib.AKVM_BUS_MMIO


class FastPath:
    def __init__(self, pio_bus: Bus, mmio_bus: Bus):
        self.handle = ffi.gc(lib.akvm_fastpath_new(), lib.akvm_fastpath_free)
        if self.handle == ffi.NULL:
            raise MemoryError("akvm_fastpath_new")
        self._owners: dict[int, object] = {}    # handler id -> what its opaque points into
        for index, bus in ((PIO, pio_bus), (MMIO, mmio_bus)):
            bus.listeners.append(lambda b, i=index: self._sync(i, b))
            self._sync(index, bus)

    def _sync(self, index: int, bus: Bus) -> None:
        ranges = bus.ranges()
        bases = ffi.new("unsigned long long[]", [r.base for r in ranges] or [0])
        ends = ffi.new("unsigned long long[]", [r.end for r in ranges] or [0])
        if lib.akvm_fastpath_set_ranges(self.handle, index, bases, ends, len(ranges)) < 0:
            raise MemoryError("akvm_fastpath_set_ranges")

    def add(self, bus: int, base: int, size: int, function: str, owner) -> int:
        """Offer exits in [base, base + size) to the C function `function`
        (an akvm_exit_fn) with `owner.handle` as its state; `owner` is kept
        alive while registered. Returns the id remove() takes."""
        fn = ffi.addressof(lib, function)
        hid = lib.akvm_fastpath_add(self.handle, bus, base, base + size, fn,
                                    ffi.cast("void *", owner.handle))
        if hid < 0:
            raise OSError(-hid, f"akvm_fastpath_add({function})")
        self._owners[hid] = owner
        return hid

    def remove(self, hid: int) -> None:
        """Take a handler out; when this returns no vCPU is inside it."""
        lib.akvm_fastpath_remove(self.handle, hid)
        self._owners.pop(hid, None)

    def complete(self, run_address: int) -> bool:
        """Complete one exit in C (what the vCPU loop does); for tests and twins."""
        return bool(lib.akvm_fastpath_complete(self.handle, ffi.cast("void *", run_address)))

    def stats(self) -> dict:
        s = ffi.new("struct akvm_fast_stats *")
        lib.akvm_fastpath_stats(self.handle, s)
        return {"unclaimed_reads": tuple(s.unclaimed_reads),
                "unclaimed_writes": tuple(s.unclaimed_writes), "fast_exits": s.fast_exits}
