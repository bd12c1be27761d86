"""OutputQueue: console output never blocks its writer; a stalled reader costs bounded
memory (the rest is dropped and counted) and a bounded wait at close."""
import fcntl
import os
import socket
import threading
import time

from akvm.base.outqueue import OUTPUT_LIMIT, OutputQueue
from akvm.devices.chardev import CLOSE_FLUSH_S, StdioChardev
from akvm.devices.chardev_unix import UnixSocketChardev

F_SETPIPE_SZ = 1031


def returns_within(fn, seconds: float) -> bool:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


def test_a_stalled_pipe_never_blocks_the_writer_and_drops_are_counted():
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    dev = StdioChardev(stdin_fd=r, stdout_fd=w)
    data = b"x" * 1024
    assert returns_within(lambda: [dev.write(data) for _ in range(1024)], 5)  # 1 MiB
    started = time.monotonic()
    dev.close()
    assert time.monotonic() - started < CLOSE_FLUSH_S + 0.5
    # 1 MiB written, the pipe took 4 KiB and the queue OUTPUT_LIMIT: the rest dropped.
    assert dev.dropped >= 1024 * 1024 - OUTPUT_LIMIT - 4096 - len(data)
    got = os.read(r, 8192)
    assert got and set(got) == {ord("x")}      # what was sent came in order, unchanged
    os.close(r)
    os.close(w)


def test_a_slow_reader_gets_everything():
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    q = OutputQueue(lambda b: os.write(w, b), "test")
    payload = bytes(range(256)) * 256                     # 64 KiB, under the limit
    for i in range(0, len(payload), 1000):
        q.put(payload[i:i + 1000])
    got = bytearray()
    while len(got) < len(payload):
        got += os.read(r, 3000)
    assert bytes(got) == payload and q.dropped == 0
    assert q.close(1.0)
    os.close(r)
    os.close(w)


def test_a_vanished_reader_drops_quietly():
    def gone(_):
        raise BrokenPipeError
    q = OutputQueue(gone, "test")
    q.put(b"abc")
    assert not q.flush(0.5) or q.dead
    q.put(b"def")
    assert q.dead and q.dropped == 6


def test_a_socket_client_that_never_reads_blocks_neither_writes_nor_close(tmp_path):
    path = tmp_path / "con.sock"
    dev = UnixSocketChardev(str(path))
    dev.start(lambda data: None)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    assert dev.wait_for_client(5)
    assert returns_within(lambda: [dev.write(b"y" * 4096) for _ in range(1024)], 5)  # 4 MiB
    started = time.monotonic()
    dev.close()
    assert time.monotonic() - started < CLOSE_FLUSH_S + 1.0
    assert dev.dropped > 4 * 1024 * 1024 - OUTPUT_LIMIT - 1024 * 1024   # socket buffers < 1 MiB
    client.close()


def test_output_written_just_before_close_reaches_a_reading_client(tmp_path):
    """close() lets the client's queue drain (a reader that reads gets everything)."""
    for i in range(30):
        path = tmp_path / f"con{i}.sock"
        dev = UnixSocketChardev(str(path))
        dev.start(lambda data: None)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        assert dev.wait_for_client(5)
        dev.write(b"last words")
        dev.close()
        client.settimeout(5)
        got = b""
        while data := client.recv(100):
            got += data
        client.close()
        assert got == b"last words", i


def test_a_terminal_nobody_reads_never_blocks_the_writer():
    """A pseudo-terminal fills up; writes that would block go to the queue (the direct
    write is through a non-blocking description of the terminal of its own)."""
    master, slave = os.openpty()
    dev = StdioChardev(stdin_fd=slave, stdout_fd=slave, stderr_fd=slave)
    assert returns_within(lambda: [dev.write(b"z" * 4096) for _ in range(256)], 5)   # 1 MiB
    started = time.monotonic()
    dev.close()
    assert time.monotonic() - started < CLOSE_FLUSH_S + 0.5
    assert dev.dropped > 0
    assert os.get_blocking(slave)                   # the shared description is left alone
    os.close(master)
    os.close(slave)
