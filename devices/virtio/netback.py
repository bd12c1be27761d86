"""Where virtio-net frames go: a TAP device, a UNIX socket to another akvm, or back to the guest.

Every backend moves whole Ethernet frames (no virtio header) through
non-blocking descriptors that the device's worker thread watches:

    send(frame)          put one frame on the wire; dropped when it is full
    recv() -> bytes|None the next frame, None when there is none now
    start(worker, cb)    call cb() on the worker when frames may be waiting
    pause() / resume()   stop / restart watching (no receive buffers posted)

TapBackend        /dev/net/tun, IFF_TAP | IFF_NO_PI (needs CAP_NET_ADMIN, or
                  a persistent tap device owned by the user)
SocketBackend     SOCK_SEQPACKET on a UNIX socket path, unprivileged: the first
                  akvm listens on PATH, the second connects to it; each frame
                  is one message
LoopbackBackend   what the guest sends, it receives (a socketpair)
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
import struct

from akvm.base.hostfiles import bind_private

log = logging.getLogger("akvm.virtio")

MAX_FRAME = 65536 + 14
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


class NetBackendError(Exception):
    """A backend that cannot be set up."""


class FdBackend:
    """Frames read from rx_fd and written to tx_fd (one datagram or tap read per frame)."""

    def __init__(self, rx_fd: int, tx_fd: int):
        self.rx_fd, self.tx_fd = rx_fd, tx_fd
        self._worker = None
        self._on_frames = None
        self._paused = False
        self.sent = self.received = self.dropped = 0

    def start(self, worker, on_frames) -> None:
        self._worker, self._on_frames = worker, on_frames
        self._watch()

    def _watch(self) -> None:
        if self._worker is not None and self.rx_fd >= 0 and not self._paused:
            self._worker.watch(self.rx_fd, self._on_frames)

    def pause(self) -> None:
        self._paused = True
        if self._worker is not None and self.rx_fd >= 0:
            self._worker.unwatch(self.rx_fd)

    def resume(self) -> None:
        self._paused = False
        self._watch()

    def recv(self) -> bytes | None:
        if self.rx_fd < 0:
            return None
        try:
            frame = os.read(self.rx_fd, MAX_FRAME)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            self.lost(e)
            return None
        if not frame:
            self.lost(None)
            return None
        self.received += 1
        return frame

    def send(self, frame: bytes) -> None:
        if self.tx_fd < 0:
            self.dropped += 1
            return
        try:
            os.write(self.tx_fd, frame)
            self.sent += 1
        except (BlockingIOError, InterruptedError):
            self.dropped += 1            # the wire is full: like a NIC, drop
        except OSError as e:
            self.dropped += 1
            self.lost(e)

    def lost(self, error: OSError | None) -> None:
        """The peer went away (end of file, or an error on the descriptor)."""

    def close(self) -> None:
        for fd in {self.rx_fd, self.tx_fd}:
            if fd >= 0:
                if self._worker is not None:
                    self._worker.unwatch(fd)
                os.close(fd)
        self.rx_fd = self.tx_fd = -1


class LoopbackBackend(FdBackend):
    def __init__(self):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (a, b):
            s.setblocking(False)
        super().__init__(b.detach(), a.detach())


class TapBackend(FdBackend):
    def __init__(self, name: str):
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise NetBackendError(f"/dev/net/tun: {e.strerror or e}") from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
        except OSError as e:
            os.close(fd)
            hint = " (needs CAP_NET_ADMIN, or a tap device created for this user)" \
                if e.errno in (errno.EPERM, errno.EACCES) else ""
            raise NetBackendError(f"cannot attach tap {name}: {e.strerror or e}{hint}") from None
        super().__init__(fd, fd)


class SocketBackend(FdBackend):
    """The first akvm on PATH listens (and takes a new peer whenever the last one left);
    the second connects. Frames sent while no peer is connected are dropped."""

    def __init__(self, path: str):
        self.path = path
        self.listener: socket.socket | None = None
        conn = self._connect(path)
        if conn is None:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                bind_private(self.listener, path)     # 0600: only the owner connects
                self.listener.listen(1)
            except OSError as e:
                self.listener.close()
                raise NetBackendError(f"cannot listen on {path}: {e.strerror or e}") from None
            self.listener.setblocking(False)
            self._inode = os.stat(path).st_ino
            super().__init__(-1, -1)
        else:
            conn.setblocking(False)
            fd = conn.detach()
            super().__init__(fd, fd)

    @staticmethod
    def _connect(path: str) -> socket.socket | None:
        """A connection to a live listener on path; None after clearing a stale socket file."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISSOCK(st.st_mode):
            raise NetBackendError(f"{path} exists and is not a socket")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(path)
            return s
        except ConnectionRefusedError:
            s.close()
            os.unlink(path)              # a leftover of an akvm that is gone
            return None
        except OSError as e:
            s.close()
            raise NetBackendError(f"cannot connect to {path}: {e.strerror or e}") from None

    def start(self, worker, on_frames) -> None:
        super().start(worker, on_frames)
        if self.listener is not None and worker is not None:
            worker.watch(self.listener.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self._drop_peer()
        self.rx_fd = self.tx_fd = conn.detach()
        self._watch()

    def _drop_peer(self) -> None:
        if self.rx_fd >= 0:
            if self._worker is not None:
                self._worker.unwatch(self.rx_fd)
            os.close(self.rx_fd)
        self.rx_fd = self.tx_fd = -1

    def lost(self, error: OSError | None) -> None:
        log.info("virtio-net: peer on %s went away%s", self.path, f": {error}" if error else "")
        self._drop_peer()

    def close(self) -> None:
        super().close()
        if self.listener is not None:
            if self._worker is not None:
                self._worker.unwatch(self.listener.fileno())
            self.listener.close()
            try:
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.listener = None
