"""Host files and sockets akvm creates for the user, made without surprises.

akvm often runs as root. A path the user names for output may be a symbolic
link someone planted (to /etc/shadow, say): output files are opened without
following a link in the last component (O_NOFOLLOW). A listening UNIX socket
is created 0600 whatever the umask, so only its owner can connect to a
guest's console or network link.

socket is imported only where a socket is probed: every start opens output
files through this module, and most starts listen on no socket.
"""
from __future__ import annotations

import errno
import os
import stat


def open_output(path: str, append: bool = False, mode: int = 0o644) -> int:
    """A descriptor for writing `path` (created; truncated unless `append`). Raises
    OSError; a symbolic link reads as 'is a symbolic link'."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW |
             (os.O_APPEND if append else os.O_TRUNC))
    try:
        return os.open(path, flags, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "it is a symbolic link (not followed)", path) from None
        raise


def bind_private(sock: socket.socket, path: str) -> None:
    """bind() a UNIX socket at `path` with mode 0600: the socket's mode, set before
    bind, is what the file gets (less the umask), with no window where it is wider."""
    os.fchmod(sock.fileno(), 0o600)
    sock.bind(path)


def remove_stale_socket(path: str) -> None:
    """Before listening at `path`: a socket file nobody listens on is a leftover of an
    earlier run and goes; anything else stays, and FileExistsError says why."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError("exists and is not a socket; refusing to replace it")
    import socket
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass                    # e.g. a full accept queue: someone is there
    finally:
        probe.close()
    raise FileExistsError("is in use by another listener")
