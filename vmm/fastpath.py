"""The C fast path's Python handle: keeps its copy of the bus ranges current.

vmm/native/fastpath.c completes, without entering Python, the exits whose
answer does not depend on a device model: accesses no range claims (as
Bus does: reads all ones, writes dropped) and the port-0x80 debug port (as
devices.debugport.DebugPort does). Everything claimed comes back to Python,
except COM1's transmit and line-status reads while SerialShortcut is
attached (vmm/native/serial.c; devices.uart decides when that is safe), and
PCI configuration accesses no function answers while PciConfShortcut is
(vmm/native/pciconf.c; devices.pci.host tells it which functions exist),
and VT-d's IOTLB invalidations (IQT, IVA, the IOTLB register) while its
doorbell is attached (vmm/native/vtddoor.c; iommu.doorbell arms it).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

from vmm.bus import Bus
from vmm.native import ffi, lib

PIO, MMIO = 0, 1
COALESCE_S = 0.0003    # console output may lag the guest by this much


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

    def attach_vtd(self, doorbell) -> None:
        """Let C complete IOTLB invalidations (iommu.doorbell.QueueDoorbell, kept
        alive by its unit)."""
        lib.akvm_fastpath_set_vtd(self.handle, doorbell.handle)

    def complete(self, run_address: int) -> bool:
        """Complete one exit in C (what the vCPU loop does); for tests and twins."""
        return bool(lib.akvm_fastpath_complete(self.handle, ffi.cast("void *", run_address)))

    def stats(self) -> dict:
        s = ffi.new("struct akvm_fast_stats *")
        lib.akvm_fastpath_stats(self.handle, s)
        return {"unclaimed_reads": tuple(s.unclaimed_reads), "unclaimed_writes": tuple(s.unclaimed_writes),
                "debug_writes": s.debug_writes, "debug_last": s.debug_last, "fast_exits": s.fast_exits}


class SerialShortcut:
    """COM1's transmit path in C (vmm/native/serial.c), fed back to the UART model.

    The model publishes when C may buffer THR writes and what LSR reads
    return; take() hands back, in order, the bytes C buffered. A thread
    woken through an eventfd asks the UART to flush them to its console,
    so output appears as promptly as when every byte went through Python.
    """

    def __init__(self, fastpath: FastPath, port: int):
        self.efd = os.eventfd(0, os.EFD_CLOEXEC)
        self.handle = ffi.gc(lib.akvm_serial_new(port, self.efd), lib.akvm_serial_free)
        if self.handle == ffi.NULL:
            os.close(self.efd)
            raise MemoryError("akvm_serial_new")
        self._fastpath = fastpath
        self._buf = ffi.new("unsigned char[]", lib.AKVM_SERIAL_BUF)
        self._thread: threading.Thread | None = None
        self._closed = False
        lib.akvm_fastpath_set_serial(fastpath.handle, self.handle)

    def publish(self, tx_ok: bool, lsr: int) -> None:
        lib.akvm_serial_publish(self.handle, int(tx_ok), lsr)

    def take(self) -> bytes:
        n = lib.akvm_serial_take(self.handle, self._buf, lib.AKVM_SERIAL_BUF)
        return bytes(ffi.buffer(self._buf, n)) if n else b""

    def start(self, flush: Callable[[], None]) -> None:
        """Call flush() (the UART's flush_shortcut) whenever C has buffered bytes."""
        def wait_and_flush():
            while True:
                os.eventfd_read(self.efd)
                if self._closed:
                    return
                # Let a burst accumulate: C signals only when its buffer goes
                # from empty to non-empty, so this saves a wake-up per byte.
                time.sleep(COALESCE_S)
                flush()
        self._thread = threading.Thread(target=wait_and_flush, name="serial-tx", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Detach from the fast path and stop the thread; the caller flushes what is left."""
        lib.akvm_fastpath_set_serial(self._fastpath.handle, ffi.NULL)
        self._closed = True
        os.eventfd_write(self.efd, 1)
        if self._thread is not None:
            self._thread.join()
        os.close(self.efd)

    def stats(self) -> dict:
        s = ffi.new("struct akvm_serial_stats *")
        lib.akvm_serial_stats(self.handle, s)
        return {"tx_bytes": s.tx_bytes, "lsr_reads": s.lsr_reads}


class PciConfShortcut:
    """PCI configuration accesses in C (vmm/native/pciconf.c): the 0xCF8 latch,
    and CONFIG_DATA / ECAM accesses to functions not marked present."""

    def __init__(self, fastpath: FastPath, ecam_base: int, ecam_size: int):
        self.handle = ffi.gc(lib.akvm_pci_conf_new(ecam_base, ecam_size), lib.akvm_pci_conf_free)
        if self.handle == ffi.NULL:
            raise MemoryError("akvm_pci_conf_new")
        self._fastpath = fastpath
        lib.akvm_fastpath_set_pci_conf(fastpath.handle, self.handle)

    @property
    def latch(self) -> int:
        return lib.akvm_pci_conf_latch(self.handle)

    @latch.setter
    def latch(self, value: int) -> None:
        lib.akvm_pci_conf_set_latch(self.handle, value & 0xFFFFFFFF)

    def set_present(self, bdf: int, present: bool) -> None:
        lib.akvm_pci_conf_set_present(self.handle, bdf, int(present))

    def stats(self) -> dict:
        s = ffi.new("struct akvm_pci_conf_stats *")
        lib.akvm_pci_conf_stats(self.handle, s)
        return {"latch_accesses": s.latch_accesses, "absent_reads": s.absent_reads,
                "absent_writes": s.absent_writes}
