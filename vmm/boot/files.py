"""Kernel and module files: regular files only (/dev/zero would be read for
ever), opened without blocking (a FIFO would wait for a writer)."""
import os
import stat


class BadFile(Exception):
    """A kernel or module file akvm cannot use; the message is one line for the user."""


def open_regular(path: str, what: str) -> int:
    """A descriptor for `path`, which must be a regular file; BadFile says why not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise BadFile(f"{what} {path}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BadFile(f"{what} {path}: "
                      f"{'Is a directory' if stat.S_ISDIR(mode) else 'not a regular file'}")
    return fd
