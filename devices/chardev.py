"""Character backends for the serial console: where UART output goes, where input comes from.

Every backend has the same three calls:
  write(data)               guest output; never blocks, never raises: a reader that
                            stalls gets OUTPUT_LIMIT bytes buffered, then output is
                            dropped and counted (`dropped`, in --stats)
  start(sink, on_quit=None) begin delivering host input as sink(bytes)
  close()                   stop input, restore the terminal, release files; a
                            stalled reader gets CLOSE_FLUSH_S to catch up, no more

parse_serial() turns a --serial argument into a backend.
"""
from __future__ import annotations

import _thread
import atexit
import os
import select
import sys
import termios
import threading
from typing import Callable

from akvm.base.hostfiles import open_output
from akvm.base.outqueue import OutputQueue, nonblocking_writer

Sink = Callable[[bytes], None]

CTRL_A = 0x01
HELP_TEXT = (
    "\r\n"
    "C-a h    print this help\r\n"
    "C-a x    exit the VM\r\n"
    "C-a C-a  send C-a to the guest\r\n"
)
READ_CHUNK = 4096
CLOSE_FLUSH_S = 0.5     # what close() gives a slow reader to catch up: shutdown stays bounded
JOIN_S = 0.5            # how long close() waits for a backend's own thread


class ChardevError(Exception):
    """A serial backend that cannot be set up (bad spec, unusable path)."""


def fd_writer(fd: int):
    """send() for an OutputQueue over fd: blocking writes, a non-blocking fd waited out."""
    def send(data) -> int:
        while True:
            try:
                return os.write(fd, data)
            except BlockingIOError:
                select.select([], [fd], [])
    return send


class _Reader:
    """Reads an fd on a daemon thread until EOF or stop(); a wake-up pipe makes stop() prompt."""

    def __init__(self, fd: int, on_data: Sink, name: str):
        self._fd = fd
        self._on_data = on_data
        self._wake_r, self._wake_w = os.pipe()
        self.eof = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self._fd, self._wake_r], [], [])
                if self._wake_r in ready:
                    return
                try:
                    data = os.read(self._fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""      # EIO: the terminal hung up
                if not data:
                    return
                self._on_data(data)
        finally:
            self.eof.set()

    def stop(self) -> None:
        if self._wake_w < 0:
            return
        os.write(self._wake_w, b"x")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=JOIN_S)
        os.close(self._wake_w)
        os.close(self._wake_r)
        self._wake_w = self._wake_r = -1


class Chardev:
    """Base backend: discards output and has no input (the `none` backend)."""

    def write(self, data: bytes) -> None:
        pass

    @property
    def dropped(self) -> int:
        """Output bytes lost to a stalled or vanished reader."""
        return 0

    def start(self, sink: Sink, on_quit: Callable[[], None] | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


NullChardev = Chardev


class EscapeFilter:
    """QEMU-style console escapes: Ctrl-A x quits, Ctrl-A h help, Ctrl-A Ctrl-A a literal Ctrl-A.

    Any other key after Ctrl-A is swallowed, as QEMU does. Input after a quit
    is discarded, so keys typed past Ctrl-A x never reach the guest.
    """

    def __init__(self, on_quit: Callable[[], None], on_help: Callable[[], None]):
        self.on_quit = on_quit
        self.on_help = on_help
        self._escaped = False
        self.quit = False

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            if self.quit:
                break
            if not self._escaped:
                if byte == CTRL_A:
                    self._escaped = True
                else:
                    out.append(byte)
                continue
            self._escaped = False
            if byte == CTRL_A:
                out.append(CTRL_A)
            elif byte == ord("x"):
                self.quit = True
                self.on_quit()
            elif byte in (ord("h"), ord("?")):
                self.on_help()
        return bytes(out)


def _raw_mode(attrs: list) -> list:
    """cfmakeraw(), except OPOST stays on so host messages with plain \\n still render."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
               | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


class StdioChardev(Chardev):
    """The controlling terminal (or whatever stdin/stdout are).

    On a TTY, input is put in raw mode so Ctrl-C and friends reach the guest,
    and Ctrl-A escapes control the VMM. The old terminal mode comes back on
    close() or at interpreter exit. Piped stdin is passed through untouched
    (no escapes unless asked for) and its EOF just ends input.
    on_quit defaults to interrupting the main thread, like a Ctrl-C would.
    """

    def __init__(self, stdin_fd: int = 0, stdout_fd: int = 1, stderr_fd: int = 2,
                 escapes: bool | None = None):
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.is_tty = os.isatty(stdin_fd)
        self.escapes = self.is_tty if escapes is None else escapes
        self._saved_attrs = None
        self._reader: _Reader | None = None
        # A reader that went away (EPIPE, EIO) ends output: it is dropped from then on.
        self._out = OutputQueue(fd_writer(stdout_fd), "stdio-output",
                                try_send=nonblocking_writer(stdout_fd))
        self._err = OutputQueue(fd_writer(stderr_fd), "stdio-help",
                                try_send=nonblocking_writer(stderr_fd))
        self._sink: Sink | None = None
        self._filter: EscapeFilter | None = None

    def write(self, data: bytes) -> None:
        self._out.put(data)

    @property
    def dropped(self) -> int:
        return self._out.dropped

    def start(self, sink: Sink, on_quit: Callable[[], None] | None = None) -> None:
        if self._reader is not None:
            raise ChardevError("stdio chardev already started")
        if self.stdout_fd == 1:
            sys.stdout.flush()          # earlier buffered prints come first
        self._sink = sink
        if self.escapes:
            self._filter = EscapeFilter(on_quit or _thread.interrupt_main, self._print_help)
        if self.is_tty:
            self._saved_attrs = termios.tcgetattr(self.stdin_fd)
            atexit.register(self._restore_terminal)
            termios.tcsetattr(self.stdin_fd, termios.TCSANOW, _raw_mode(self._saved_attrs))
        self._reader = _Reader(self.stdin_fd, self._on_input, "stdio-input")

    def _on_input(self, data: bytes) -> None:
        if self._filter is not None:
            data = self._filter.feed(data)
        if data:
            self._sink(data)

    def _print_help(self) -> None:
        self._err.put(HELP_TEXT.encode())

    def _restore_terminal(self) -> None:
        # TCSANOW: TCSADRAIN would wait for a reader that may never drain the terminal.
        # Output processing (OPOST) is the same in both modes, so nothing renders differently.
        if self._saved_attrs is not None:
            try:
                termios.tcsetattr(self.stdin_fd, termios.TCSANOW, self._saved_attrs)
            except (termios.error, OSError):
                pass
            self._saved_attrs = None

    @property
    def input_ended(self) -> bool:
        """True once stdin hit EOF (or close() stopped reading)."""
        return self._reader is not None and self._reader.eof.is_set()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
        self._out.close(CLOSE_FLUSH_S)
        self._err.close(0)
        self._restore_terminal()
        atexit.unregister(self._restore_terminal)


class FileChardev(Chardev):
    """Output to a file (truncated, or appended with append=True); there is no input.
    A symbolic link at the path is refused (akvm.base.hostfiles.open_output)."""

    def __init__(self, path: str, append: bool = False):
        self.path = path
        try:
            self._fd = open_output(path, append)
        except OSError as e:
            raise ChardevError(f"--serial: cannot open {path}: {e.strerror or e}") from None
        # A full disk (ENOSPC) or an unwritable file ends output: dropped and counted.
        self._out = OutputQueue(fd_writer(self._fd), f"file-output:{path}",
                                try_send=nonblocking_writer(self._fd))

    def write(self, data: bytes) -> None:
        self._out.put(data)

    @property
    def dropped(self) -> int:
        return self._out.dropped

    def close(self) -> None:
        if self._fd >= 0:
            if self._out.close(CLOSE_FLUSH_S):
                os.close(self._fd)  # else its thread may still be in write(): the fd stays
            self._fd = -1


SERIAL_USAGE = "--serial: expected stdio, file:PATH, unix:PATH or none"


def parse_serial(spec: str) -> Chardev:
    """Build the backend for a --serial argument; files and sockets are opened now."""
    if spec == "stdio":
        return StdioChardev()
    if spec == "none":
        return NullChardev()
    kind, sep, path = spec.partition(":")
    if sep and path:
        if kind == "file":
            return FileChardev(path)
        if kind == "unix":
            from akvm.devices.chardev_unix import UnixSocketChardev   # socket: 2 ms at start-up
            return UnixSocketChardev(path)
    raise ChardevError(f"{SERIAL_USAGE}, got {spec!r}")
