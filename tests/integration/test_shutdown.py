"""A stalled console never holds akvm: SIGTERM, Ctrl-A x and a guest poweroff end the
process within 2 s whatever the console's reader does, and what the reader could not
take is dropped and counted (--stats)."""
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import needs_kvm
from akvm.base.exitcode import ExitCode

pytestmark = needs_kvm

BOUND_S = 2.0                   # the bound, from the request to the process's end
F_SETPIPE_SZ = 1031


def stalled_pipe():
    """A pipe with a one-page buffer whose read end nobody reads."""
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    return r, w


def akvm(kernel, *args, **popen):
    return subprocess.Popen([sys.executable, "-m", "akvm", "run", "--kernel", str(kernel),
                             "--stats", *args], **popen)


def ended_within(proc, since: float) -> float:
    """Seconds from `since` to the process's end (killed and failed after 20 s)."""
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("akvm did not end within 20 s")
    return time.monotonic() - since


def test_poweroff_with_stdout_nobody_reads(tiny_kernel, tmp_path):
    """The guest sends 384 KiB to a pipe that holds 4 KiB and powers off: its vCPU
    never waits for the reader, the surplus is dropped and counted."""
    r, w = stalled_pipe()
    err = tmp_path / "stderr"
    with open(err, "wb") as errf:
        proc = akvm(tiny_kernel, "--cmdline", "F", stdin=subprocess.DEVNULL, stdout=w,
                    stderr=errf)
    os.close(w)
    try:
        ended_within(proc, time.monotonic())
    finally:
        os.close(r)
    log = err.read_text()
    assert proc.returncode == ExitCode.POWEROFF, log
    assert "akvm: guest powered off" in log
    m = re.search(r"com1: (\d+) bytes out .*, (\d+) bytes dropped by a stalled console", log)
    assert m, log
    sent, dropped = int(m.group(1)), int(m.group(2))
    assert sent > 384 * 1024
    assert dropped > 64 * 1024       # beyond the pipe and the 256 KiB buffer


def test_sigterm_with_stdout_nobody_reads(tiny_kernel):
    r, w = stalled_pipe()
    proc = akvm(tiny_kernel, "--cmdline", "f", stdin=subprocess.DEVNULL, stdout=w,
                stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        time.sleep(1.5)                 # booted, and flooding a full pipe
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        elapsed = ended_within(proc, time.monotonic())
    finally:
        os.close(r)
    assert proc.returncode == ExitCode.POWEROFF
    assert elapsed < BOUND_S, f"{elapsed:.2f} s"


def test_sigterm_with_a_socket_client_that_never_reads(tiny_kernel, tmp_path):
    path = tmp_path / "com1.sock"
    proc = akvm(tiny_kernel, "--cmdline", "f", "--serial", f"unix:{path}",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.connect(str(path))
                break
            except OSError:
                assert time.monotonic() < deadline, "no console socket"
                time.sleep(0.05)
        time.sleep(1.5)                 # the socket's buffers fill up
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        elapsed = ended_within(proc, time.monotonic())
    finally:
        client.close()
    assert proc.returncode == ExitCode.POWEROFF
    assert elapsed < BOUND_S, f"{elapsed:.2f} s"


def test_ctrl_a_x_on_a_terminal_nobody_reads(tiny_kernel):
    """stdout and stderr on a pseudo-terminal whose master is never read: the
    terminal fills up, and Ctrl-A x still ends akvm (and gives the terminal back)."""
    master, slave = os.openpty()
    proc = akvm(tiny_kernel, "--cmdline", "f", stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        time.sleep(1.5)
        assert proc.poll() is None
        os.write(master, b"\x01x")
        elapsed = ended_within(proc, time.monotonic())
    finally:
        os.close(master)
    assert proc.returncode == ExitCode.POWEROFF
    assert elapsed < BOUND_S, f"{elapsed:.2f} s"


def test_sigterm_with_a_debugger_and_a_control_client_that_never_read(tiny_kernel, tmp_path):
    """A gdb client and a control client that send requests and never read the replies:
    the stub's and the control socket's threads block on full sockets, and SIGTERM still
    ends akvm within the bound."""
    control_path = tmp_path / "control.sock"
    err = tmp_path / "stderr"
    with open(err, "wb") as errf:
        proc = akvm(tiny_kernel, "--cmdline", "f", "--gdb", "tcp:127.0.0.1:0",
                    "--control", f"unix:{control_path}",
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf)
    clients = []
    try:
        deadline = time.monotonic() + 30
        while not (m := re.search(rb"gdb: listening on [\d.]+:(\d+)", err.read_bytes())):
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        gdb = socket.create_connection(("127.0.0.1", int(m.group(1))))
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.connect(str(control_path))
        clients += [gdb, control]
        for sock, request in ((gdb, b"$g#67"), (control, b'{"execute": "query-stats"}\n')):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                for _ in range(20000):
                    sock.send(request)
            except BlockingIOError:
                pass                    # the server stopped reading: its replies are stuck
        time.sleep(1.0)
        assert proc.poll() is None, err.read_text()
        proc.send_signal(signal.SIGTERM)
        elapsed = ended_within(proc, time.monotonic())
    finally:
        for sock in clients:
            sock.close()
    assert proc.returncode == ExitCode.POWEROFF, err.read_text()
    assert elapsed < BOUND_S, f"{elapsed:.2f} s"
