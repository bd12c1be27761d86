"""COM1's transmit path in C (serial.c), fed back to the UART model (uart.py, the twin).

serial.c completes THR writes and LSR reads while the UART says that is
safe (DLAB clear, no loopback, no THRE interrupt enabled; LSR only while
reading it has no side effect). Bytes collect in a 4 KiB buffer; its first
byte signals an eventfd, and the `serial-tx` thread waits for the burst to
finish, then has the UART write them out, in order with its own.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

from akvm.base.native import ffi, lib
from akvm.base.runloop import PIO, FastPath

UART_PORTS = 8
COALESCE_S = 0.0003    # console output may lag the guest by this much
JOIN_S = 0.5           # close() waits this long for the thread (its console never blocks it)


class SerialShortcut:
    """COM1's transmit path in C (devices/serial.c), fed back to the UART model.

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
        self._hid = fastpath.add(PIO, port, UART_PORTS, "akvm_serial_complete", self)

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
        self._fastpath.remove(self._hid)
        self._closed = True
        os.eventfd_write(self.efd, 1)
        if self._thread is not None:
            self._thread.join(timeout=JOIN_S)
            if self._thread.is_alive():
                return          # the eventfd stays open for it
        os.close(self.efd)

    def stats(self) -> dict:
        s = ffi.new("struct akvm_serial_stats *")
        lib.akvm_serial_stats(self.handle, s)
        return {"tx_bytes": s.tx_bytes, "lsr_reads": s.lsr_reads}
