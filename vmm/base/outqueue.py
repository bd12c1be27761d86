"""Output that never blocks its writer: a bounded buffer and a thread that drains it.

A console's reader may stall (a terminal nobody scrolls, a pipe nobody
drains, a socket client that never reads). The guest's output must not
then stop a vCPU, and the VM's shutdown must not wait for the reader: so
put() only appends to a buffer, up to a limit past which bytes are dropped
and counted, and a thread of the queue's own writes the buffer out with
`send`, which may block for as long as the reader stalls. close() gives
the reader a bounded time to catch up, then leaves the rest (counted as
dropped) and the thread, a daemon blocked in the kernel at worst.

While the reader keeps up, put() writes in the caller's thread, through a
write that cannot block (`try_send`: a non-blocking descriptor of its own
for a terminal or a pipe, MSG_DONTWAIT for a socket), so output keeps its
order with other writers to the same terminal (akvm's log and the guest's
console often share one) and its latency; what that write does not take
goes to the queue.
"""
from __future__ import annotations

import os
import stat
import threading
import time
from typing import Callable

OUTPUT_LIMIT = 256 * 1024   # bytes held for a slow reader; more is dropped
CHUNK = 64 * 1024           # bytes handed to send() at a time


class OutputQueue:
    """`send(bytes) -> int` writes some of its argument (blocking is allowed) and
    raises OSError when the reader is gone for good; from then on output is
    dropped (counted in `dropped`). `try_send(bytes) -> int`, if given, is the
    same write that never blocks (BlockingIOError when nothing fits)."""

    def __init__(self, send: Callable[[bytes], int], name: str, limit: int = OUTPUT_LIMIT,
                 try_send: Callable[[bytes], int] | None = None):
        self._send = send
        self._try_send = try_send
        self.name = name
        self.limit = limit
        self._buf = bytearray()
        self._sending = 0           # bytes the thread took and has not sent yet
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False
        self._abandoned = False     # closed with output left: the thread must stop writing
        self.dead = False           # send() failed: the reader is gone
        self.dropped = 0            # bytes never handed to send()

    def put(self, data) -> None:
        """Queue `data`; never blocks (beyond a short lock), never raises."""
        with self._cond:
            if self._closed or self.dead:
                self.dropped += len(data)
                return
            if not self._buf and not self._sending:
                data = self._write_now(data)
                if self.dead:
                    self.dropped += len(data)
                    return
            room = self.limit - len(self._buf) - self._sending
            if room < len(data):
                self.dropped += len(data) - max(room, 0)
                data = data[:max(room, 0)]
            if not data:
                return
            self._buf += data
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _write_now(self, data):
        """Write what the reader takes now, without blocking; returns the rest. Caller
        holds _cond, and nothing is queued."""
        if self._try_send is None or not data:
            return data
        try:
            return data[self._try_send(data):]
        except BlockingIOError:
            return data
        except OSError:
            self.dead = True
            return data

    @property
    def pending(self) -> int:
        """Bytes queued or being sent."""
        with self._cond:
            return len(self._buf) + self._sending

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._buf and not self._closed:
                    self._cond.wait()
                if not self._buf:
                    return
                chunk = bytes(self._buf[:CHUNK])
                del self._buf[:CHUNK]
                self._sending = len(chunk)
            try:
                view = memoryview(chunk)
                while view:
                    view = view[self._send(view):]
                    with self._cond:
                        if self._abandoned:
                            return      # close() gave up on the reader: no more writes
                        self._sending = len(view)
            except OSError:
                with self._cond:
                    self.dead = True
                    self.dropped += self._sending + len(self._buf)
                    self._sending = 0
                    self._buf.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the reader to take everything; True if it did."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._buf or self._sending:
                left = deadline - time.monotonic()
                if left <= 0 or self.dead:
                    break
                self._cond.wait(left)
            return not (self._buf or self._sending)

    def close(self, timeout: float) -> bool:
        """Let the reader catch up for at most `timeout` s, then drop the rest; True if
        it caught up (the thread is then out of send() for good). Later put()s are
        dropped and counted."""
        with self._cond:
            self._closed = True
        drained = self.flush(timeout)
        with self._cond:
            if isinstance(self._try_send, _OwnNonBlocking):
                self._try_send.close()          # put() no longer writes
            self._try_send = None
            self._abandoned = not drained
            self.dropped += len(self._buf) + self._sending
            self._buf.clear()
            self._sending = 0
            self._cond.notify_all()
        return drained


class _OwnNonBlocking:
    """os.write on a descriptor of its own, opened O_NONBLOCK; close() gives it back."""

    def __init__(self, fd: int):
        self.fd = fd

    def __call__(self, data) -> int:
        return os.write(self.fd, data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def nonblocking_writer(fd: int) -> Callable[[bytes], int] | None:
    """A write to what `fd` is open on that never blocks, or None: a regular file's
    writes do not wait for a reader; a terminal or a pipe is opened again (through
    /proc/self/fd) as a description of its own with O_NONBLOCK, leaving `fd`'s
    flags, which other processes may share, alone."""
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return lambda data: os.write(fd, data)
        if not (os.isatty(fd) or stat.S_ISFIFO(mode)):
            return None
        return _OwnNonBlocking(os.open(f"/proc/self/fd/{fd}",
                                       os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError:
        return None


class TextOutput:
    """A text stream (write, flush) on an OutputQueue over file descriptor `fd`: for
    logging and akvm's closing lines, which must not block on a stalled stderr."""

    def __init__(self, fd: int, name: str):
        self.queue = OutputQueue(lambda data: os.write(fd, data), name,
                                 try_send=nonblocking_writer(fd))

    def write(self, text: str) -> int:
        self.queue.put(text.encode(errors="replace"))
        return len(text)

    def flush(self) -> None:
        """Nothing to do: the queue's thread writes as soon as it can."""
