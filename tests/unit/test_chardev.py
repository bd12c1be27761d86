"""Serial console backends: escapes, terminal modes, files, UNIX sockets, --serial parsing."""
import os
import socket
import termios
import threading
import time

import pytest

from akvm.devices.chardev import (
    ChardevError, Chardev, EscapeFilter, FileChardev, StdioChardev, parse_serial,
)
from akvm.devices.chardev_unix import OFFLINE_BACKLOG, UnixSocketChardev

CTRL_A = b"\x01"


class Collector:
    """A sink that remembers what it got and lets a test wait for it."""

    def __init__(self):
        self.data = bytearray()
        self._cond = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self._cond:
            self.data += data
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 5.0) -> bytes:
        with self._cond:
            self._cond.wait_for(lambda: len(self.data) >= n, timeout)
            return bytes(self.data)


def wait_until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def read_available(fd, timeout=5.0, want=1):
    out = bytearray()
    deadline = time.monotonic() + timeout
    os.set_blocking(fd, False)
    while len(out) < want and time.monotonic() < deadline:
        try:
            out += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.01)
    return bytes(out)


# -- escape filter ------------------------------------------------------------

class TestEscapeFilter:
    def make(self):
        self.quits = 0
        self.helps = 0

        def quit_():
            self.quits += 1

        def help_():
            self.helps += 1

        return EscapeFilter(quit_, help_)

    def test_plain_bytes_pass(self):
        f = self.make()
        assert f.feed(b"hello\r") == b"hello\r"

    def test_ctrl_a_ctrl_a_sends_one_ctrl_a(self):
        f = self.make()
        assert f.feed(b"a\x01\x01b") == b"a\x01b"

    def test_ctrl_a_x_quits_and_drops_the_rest(self):
        f = self.make()
        assert f.feed(b"ab\x01xcd") == b"ab"
        assert self.quits == 1 and f.quit
        assert f.feed(b"more") == b""

    def test_ctrl_a_h_and_question_mark_print_help(self):
        f = self.make()
        assert f.feed(b"\x01h\x01?") == b""
        assert self.helps == 2 and self.quits == 0

    def test_escape_split_across_reads(self):
        f = self.make()
        assert f.feed(b"z\x01") == b"z"
        assert f.feed(b"x") == b""
        assert self.quits == 1

    def test_unknown_command_is_swallowed(self):
        f = self.make()
        assert f.feed(b"\x01qok") == b"ok"
        assert self.quits == 0 and self.helps == 0


# -- stdio on a pty ---------------------------------------------------------------

@pytest.fixture
def pty_stdio():
    master, slave = os.openpty()
    err_r, err_w = os.pipe()
    dev = StdioChardev(stdin_fd=slave, stdout_fd=slave, stderr_fd=err_w)
    yield dev, master, slave, err_r
    dev.close()
    for fd in (master, slave, err_r, err_w):
        os.close(fd)


def test_pty_is_tty_with_escapes(pty_stdio):
    dev, *_ = pty_stdio
    assert dev.is_tty and dev.escapes


def test_raw_mode_while_running_and_restored_on_close(pty_stdio):
    dev, master, slave, _ = pty_stdio
    before = termios.tcgetattr(slave)
    assert before[3] & termios.ICANON
    dev.start(Collector(), on_quit=lambda: None)
    raw = termios.tcgetattr(slave)
    assert not raw[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
    assert not raw[0] & (termios.ICRNL | termios.IXON)
    dev.close()
    assert termios.tcgetattr(slave) == before


def test_pty_input_reaches_sink_unbuffered(pty_stdio):
    dev, master, _, _ = pty_stdio
    sink = Collector()
    dev.start(sink, on_quit=lambda: None)
    os.write(master, b"ls\x03")              # no newline, Ctrl-C is data in raw mode
    assert sink.wait_for(3) == b"ls\x03"


def test_pty_escapes(pty_stdio):
    dev, master, _, err_r = pty_stdio
    sink = Collector()
    quit_ = threading.Event()
    dev.start(sink, on_quit=quit_.set)
    os.write(master, b"a\x01\x01b\x01h")
    assert sink.wait_for(3) == b"a\x01b"
    assert b"C-a x" in read_available(err_r, want=20)
    os.write(master, b"\x01x")
    assert quit_.wait(5)
    assert bytes(sink.data) == b"a\x01b"


def test_stdout_write_reaches_terminal(pty_stdio):
    dev, master, _, _ = pty_stdio
    dev.write(b"boot\x1b[0m")               # bytes go out as written, unbuffered
    assert read_available(master, want=8) == b"boot\x1b[0m"


def test_close_is_idempotent(pty_stdio):
    dev, *_ = pty_stdio
    dev.start(Collector(), on_quit=lambda: None)
    dev.close()
    dev.close()


# -- stdio on pipes -------------------------------------------------------------

def test_piped_stdin_passes_bytes_verbatim_and_eof_ends_input():
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    dev = StdioChardev(stdin_fd=in_r, stdout_fd=out_w)
    assert not dev.is_tty and not dev.escapes
    sink = Collector()
    quits = []
    dev.start(sink, on_quit=lambda: quits.append(1))
    os.write(in_w, b"\x01x\x01\x01data")
    os.close(in_w)
    assert sink.wait_for(8) == b"\x01x\x01\x01data"
    assert wait_until(lambda: dev.input_ended)
    assert quits == []
    dev.write(b"still works")               # EOF on input does not stop output
    assert read_available(out_r, want=11) == b"still works"
    dev.close()
    for fd in (in_r, out_r, out_w):
        os.close(fd)


def test_pipe_with_escapes_forced_on():
    in_r, in_w = os.pipe()
    dev = StdioChardev(stdin_fd=in_r, stdout_fd=1, escapes=True)
    quit_ = threading.Event()
    dev.start(Collector(), on_quit=quit_.set)
    os.write(in_w, b"\x01x")
    assert quit_.wait(5)
    dev.close()
    os.close(in_r)
    os.close(in_w)


def test_devnull_stdin_is_immediate_eof():
    fd = os.open(os.devnull, os.O_RDONLY)
    dev = StdioChardev(stdin_fd=fd, stdout_fd=1)
    dev.start(Collector())
    assert wait_until(lambda: dev.input_ended)
    dev.close()
    os.close(fd)


def test_output_to_closed_pipe_is_dropped_quietly():
    out_r, out_w = os.pipe()
    os.close(out_r)
    dev = StdioChardev(stdin_fd=0, stdout_fd=out_w)
    dev.write(b"x")                         # EPIPE: dropped, no exception
    dev.write(b"y")
    os.close(out_w)


# -- file -------------------------------------------------------------------

def test_file_chardev_truncates(tmp_path):
    path = tmp_path / "serial.log"
    path.write_bytes(b"old")
    dev = FileChardev(str(path))
    dev.write(b"new ")
    dev.write(b"text")
    dev.start(Collector())                  # no input: harmless
    dev.close()
    assert path.read_bytes() == b"new text"


def test_file_chardev_appends(tmp_path):
    path = tmp_path / "serial.log"
    path.write_bytes(b"old|")
    with FileChardev(str(path), append=True) as dev:
        dev.write(b"new")
    assert path.read_bytes() == b"old|new"


def test_file_chardev_bad_path(tmp_path):
    with pytest.raises(ChardevError, match="cannot open"):
        FileChardev(str(tmp_path / "missing-dir" / "log"))


# -- unix socket --------------------------------------------------------------

def connect(path):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(str(path))
    c.settimeout(5)
    return c


def test_unix_socket_roundtrip(tmp_path):
    path = tmp_path / "con.sock"
    dev = UnixSocketChardev(str(path))
    sink = Collector()
    dev.start(sink)
    dev.write(b"kept for the first client;")
    c = connect(path)
    assert dev.wait_for_client(5)
    dev.write(b"hello")
    got = b""
    while len(got) < len(b"kept for the first client;hello"):
        got += c.recv(100)
    assert got == b"kept for the first client;hello"
    c.sendall(b"typed")
    assert sink.wait_for(5) == b"typed"
    c.close()
    dev.close()
    assert not path.exists()


def test_unix_socket_next_client_after_disconnect(tmp_path):
    path = tmp_path / "con.sock"
    dev = UnixSocketChardev(str(path))
    sink = Collector()
    dev.start(sink)
    first = connect(path)
    assert dev.wait_for_client(5)
    first.sendall(b"1")
    sink.wait_for(1)
    first.close()
    assert wait_until(lambda: not dev.wait_for_client(0))
    dev.write(b"between;")                  # between clients: kept for the next one
    second = connect(path)
    assert wait_until(lambda: dev.clients == 2)
    dev.write(b"two")
    got = b""
    while len(got) < len(b"between;two"):
        got += second.recv(100)
    assert got == b"between;two"
    second.sendall(b"2")
    assert sink.wait_for(2) == b"12"
    second.close()
    dev.close()


def test_unix_socket_write_after_client_vanished(tmp_path):
    path = tmp_path / "con.sock"
    dev = UnixSocketChardev(str(path))
    dev.start(Collector())
    c = connect(path)
    assert dev.wait_for_client(5)
    c.close()
    for _ in range(20):
        dev.write(b"x" * 1000)              # EPIPE is swallowed
    dev.close()


def test_unix_socket_replaces_stale_socket(tmp_path):
    path = tmp_path / "stale.sock"
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(str(path))
    old.close()                             # file remains, nobody listens
    dev = UnixSocketChardev(str(path))
    dev.start(Collector())
    c = connect(path)
    assert dev.wait_for_client(5)
    c.close()
    dev.close()


def test_unix_socket_refuses_regular_file(tmp_path):
    path = tmp_path / "notasocket"
    path.write_text("precious")
    with pytest.raises(ChardevError, match="exists and is not a socket"):
        UnixSocketChardev(str(path))
    assert path.read_text() == "precious"


def test_unix_socket_refuses_live_listener(tmp_path):
    path = tmp_path / "live.sock"
    first = UnixSocketChardev(str(path))
    try:
        with pytest.raises(ChardevError, match="in use"):
            UnixSocketChardev(str(path))
    finally:
        first.close()


def test_unix_socket_close_without_start(tmp_path):
    path = tmp_path / "idle.sock"
    UnixSocketChardev(str(path)).close()
    assert not path.exists()


# -- parse_serial -------------------------------------------------------------

def test_parse_stdio_and_none():
    assert isinstance(parse_serial("stdio"), StdioChardev)
    none = parse_serial("none")
    assert type(none) is Chardev
    none.write(b"discarded")
    none.start(Collector())
    none.close()


def test_parse_file_and_unix(tmp_path):
    f = parse_serial(f"file:{tmp_path / 'out.log'}")
    assert isinstance(f, FileChardev)
    f.close()
    u = parse_serial(f"unix:{tmp_path / 's.sock'}")
    assert isinstance(u, UnixSocketChardev)
    u.close()


@pytest.mark.parametrize("spec", ["x", "", "file:", "unix:", "tcp:1234", "STDIO", "pty"])
def test_parse_rejects(spec):
    with pytest.raises(ChardevError) as info:
        parse_serial(spec)
    assert str(info.value) == (
        f"--serial: expected stdio, file:PATH, unix:PATH or none, got {spec!r}")


def test_parse_error_message_exact():
    with pytest.raises(ChardevError) as info:
        parse_serial("x")
    assert str(info.value) == "--serial: expected stdio, file:PATH, unix:PATH or none, got 'x'"


def test_unix_socket_offline_backlog_is_bounded(tmp_path):
    path = tmp_path / "con.sock"
    dev = UnixSocketChardev(str(path))
    dev.start(Collector())
    dev.write(b"x" * OFFLINE_BACKLOG)
    dev.write(b"tail")
    c = connect(path)
    assert dev.wait_for_client(5)
    c.settimeout(5)
    got = b""
    while not got.endswith(b"tail"):
        got += c.recv(65536)
    assert len(got) == OFFLINE_BACKLOG and got.startswith(b"x")
    c.close()
    dev.close()


# -- least privilege ---------------------------------------------------------

def test_file_chardev_does_not_follow_a_symlink(tmp_path):
    """A link planted where the log goes must not make akvm (root) truncate its target."""
    victim = tmp_path / "shadow"
    victim.write_bytes(b"precious")
    link = tmp_path / "serial.log"
    link.symlink_to(victim)
    with pytest.raises(ChardevError, match="symbolic link"):
        parse_serial(f"file:{link}")
    assert victim.read_bytes() == b"precious"


def test_unix_sockets_are_private_whatever_the_umask(tmp_path):
    import stat
    from akvm.devices.virtio.netback import SocketBackend
    old = os.umask(0o000)
    try:
        console = UnixSocketChardev(str(tmp_path / "con.sock"))
        net = SocketBackend(str(tmp_path / "net.sock"))
    finally:
        os.umask(old)
    try:
        for path in ("con.sock", "net.sock"):
            assert stat.S_IMODE(os.stat(tmp_path / path).st_mode) == 0o600, path
    finally:
        console.close()
        net.close()
