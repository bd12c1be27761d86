"""A raw disk image file: positioned reads and writes, sync, hole punching.

Opened with an advisory lock (shared when read-only, exclusive otherwise),
so two VMs cannot write one image. The size is whatever the file (or block
device) holds now.

The descriptor is never closed under a call that uses it: every call (and
the C queue, through using()) holds it in use, and close() leaves the last
user to close it. Were it closed early, its number could be reused by
another file that the call would then write into.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import threading

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


class ImageError(Exception):
    """The image cannot be used (missing, unreadable, locked by another process)."""


IOV_MAX = 1024                       # iovecs one preadv/pwritev call takes (Linux)


def _vectored(call, fd: int, buffers: list[memoryview], offset: int) -> int:
    """preadv/pwritev over all of buffers, resuming after short transfers; bytes moved."""
    done = 0
    buffers = [b for b in buffers if len(b)]
    while buffers:
        n = call(fd, buffers[:IOV_MAX], offset + done)
        if n == 0:
            break
        done += n
        while buffers and n >= len(buffers[0]):
            n -= len(buffers[0])
            buffers.pop(0)
        if n:
            buffers[0] = buffers[0][n:]
    return done


class RawImage:
    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            raise ImageError(f"cannot open: {e.strerror or e}") from None
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ImageError("in use by another process (it is locked)") from None
            raise ImageError(f"cannot lock: {e.strerror or e}") from None
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    @contextlib.contextmanager
    def using(self):
        """The descriptor, held open until the block ends; OSError(EBADF) once closed."""
        with self._lock:
            if self._closing:
                raise OSError(errno.EBADF, "the image is closed")
            self._users += 1
        try:
            yield self.fd
        finally:
            with self._lock:
                self._users -= 1
                if self._closing and not self._users:
                    self._close_fd()

    @property
    def size(self) -> int:
        with self.using() as fd:
            return os.lseek(fd, 0, os.SEEK_END)

    def preadv(self, buffers: list[memoryview], offset: int) -> int:
        """Fill buffers (views of guest memory) from offset without a copy; bytes read."""
        with self.using() as fd:
            return _vectored(os.preadv, fd, buffers, offset)

    def pwritev(self, buffers: list[memoryview], offset: int) -> int:
        """Write buffers (views of guest memory) at offset without a copy; bytes written."""
        with self.using() as fd:
            return _vectored(os.pwritev, fd, buffers, offset)

    def pwrite(self, data, offset: int) -> None:
        view = memoryview(data)
        with self.using() as fd:
            while view:
                done = os.pwrite(fd, view, offset)
                view, offset = view[done:], offset + done

    def fdatasync(self) -> None:
        with self.using() as fd:
            os.fdatasync(fd)

    def _fallocate(self, mode: int, offset: int, length: int) -> bool:
        with self.using() as fd:
            if _libc.fallocate(fd, mode, offset, length) == 0:
                return True
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise OSError(err, os.strerror(err))

    def discard(self, offset: int, length: int) -> None:
        """Give the blocks back to the host when it can (reads return zeros after)."""
        self._fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE if unmap else FALLOC_FL_ZERO_RANGE
        if self._fallocate(mode, offset, length):
            return
        zeros = bytes(min(length, 1 << 20))
        while length:
            n = min(length, len(zeros))
            self.pwrite(zeros[:n], offset)
            offset, length = offset + n, length - n

    def close(self) -> None:
        """Close now, or when the last call using the descriptor returns."""
        with self._lock:
            self._closing = True
            if not self._users:
                self._close_fd()

    def _close_fd(self) -> None:
        """Caller holds _lock."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
