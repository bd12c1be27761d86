"""A device's own thread: it waits on file descriptors and runs the device's work.

What wakes it: a queue's kick eventfd (written by KVM through an ioeventfd,
without a vCPU exit, or by the transport on the MMIO exit path), a backend
descriptor (a TAP device, a socket) and call() from other threads. So a
vCPU only ever signals an eventfd and goes back to the guest: it never
waits for disk or network I/O.
"""
from __future__ import annotations

import collections
import logging
import os
import selectors
import threading
import weakref
from typing import Callable

from akvm.devices.state import HoldBetweenCalls

log = logging.getLogger("akvm.virtio")

JOIN_S = 0.5            # how long stop() waits for the thread to finish what it is doing


def new_eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def closed_with(owner, fds) -> weakref.finalize:
    """A call that closes `fds` once: made by owner.close(), or when owner is collected
    without it (a model built and dropped by a test or tools/fuzz) so nothing leaks."""
    return weakref.finalize(owner, _close_all, tuple(fds))


def _close_all(fds) -> None:
    for fd in fds:
        os.close(fd)


def drain_eventfd(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass


class Worker(HoldBetweenCalls):
    """One thread, an epoll set of readable fds with callbacks, and a call queue."""

    def __init__(self, name: str):
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._wake = new_eventfd()
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._selector.register(self._wake, selectors.EVENT_READ, self._run_calls)
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call callback() on the thread whenever fd is readable (worker thread or before start)."""
        try:
            self._selector.register(fd, selectors.EVENT_READ, callback)
        except KeyError:
            self._selector.modify(fd, selectors.EVENT_READ, callback)

    def unwatch(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError, RuntimeError):   # not watched, or already stopped
            pass

    def call(self, fn: Callable[[], None]) -> None:
        """Run fn on the worker thread (now, when already on it)."""
        if self.on_thread:
            fn()
            return
        self._calls.append(fn)
        os.eventfd_write(self._wake, 1)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = JOIN_S) -> bool:
        """Stop the thread; False when it is still busy after `timeout` s (in backend
        I/O that does not end: its descriptors then stay open for it)."""
        if self._wake < 0:
            return True
        self.resume()
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not None and not self.on_thread:
            self._thread.join(timeout=timeout)
            if self._thread.is_alive():
                return False
        self._selector.close()
        os.close(self._wake)
        self._wake = -1
        return True

    def _run_calls(self) -> None:
        drain_eventfd(self._wake)
        while self._calls:
            self._calls.popleft()()

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select():
                if self._stopping:
                    return
                try:
                    key.data()
                except Exception:          # a bug in a device model: keep serving the others
                    log.exception("%s: internal error", self.name)
