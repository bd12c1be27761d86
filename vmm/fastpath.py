"""The C fast path's Python handle: keeps its copy of the bus ranges current.

vmm/native/fastpath.c completes, without entering Python, the exits whose
answer does not depend on a device model: accesses no range claims (as
Bus does: reads all ones, writes dropped) and the port-0x80 debug port (as
devices.debugport.DebugPort does). Everything claimed comes back to Python.
"""
from __future__ import annotations

from vmm.bus import Bus
from vmm.native import ffi, lib

PIO, MMIO = 0, 1


class FastPath:
    def __init__(self, pio_bus: Bus, mmio_bus: Bus, debug_port: int = 0x80):
        self.handle = ffi.gc(lib.akvm_fastpath_new(debug_port), lib.akvm_fastpath_free)
        if self.handle == ffi.NULL:
            raise MemoryError("akvm_fastpath_new")
        for index, bus in ((PIO, pio_bus), (MMIO, mmio_bus)):
            bus.listeners.append(lambda b, i=index: self._sync(i, b))
            self._sync(index, bus)

    def _sync(self, index: int, bus: Bus) -> None:
        ranges = bus.ranges()
        bases = ffi.new("unsigned long long[]", [r.base for r in ranges] or [0])
        ends = ffi.new("unsigned long long[]", [r.end for r in ranges] or [0])
        if lib.akvm_fastpath_set_ranges(self.handle, index, bases, ends, len(ranges)) < 0:
            raise MemoryError("akvm_fastpath_set_ranges")

    def complete(self, run_address: int) -> bool:
        """Complete one exit in C (what the vCPU loop does); for tests and twins."""
        return bool(lib.akvm_fastpath_complete(self.handle, ffi.cast("void *", run_address)))

    def stats(self) -> dict:
        s = ffi.new("struct akvm_fast_stats *")
        lib.akvm_fastpath_stats(self.handle, s)
        return {"unclaimed_reads": tuple(s.unclaimed_reads), "unclaimed_writes": tuple(s.unclaimed_writes),
                "debug_writes": s.debug_writes, "debug_last": s.debug_last, "fast_exits": s.fast_exits}
