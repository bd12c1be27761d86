"""Boot the tiny multiboot kernel under KVM: serial output, exit codes, SMP, serial input."""
import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import needs_kvm, open_fds
from akvm.config import ConfigError, MachineConfig
from akvm.devicetable import parse_device
from akvm.base.exitcode import ExitCode
from akvm.machine import Machine, UserError

pytestmark = needs_kvm


@contextlib.contextmanager
def started(kernel, *args, **popen):
    """akvm running in the background; killed if the test ends before it does."""
    proc = subprocess.Popen([sys.executable, "-m", "akvm", "run", "--kernel", str(kernel), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def run(kernel, *args, stdin=subprocess.DEVNULL, timeout=60, **popen):
    return subprocess.run([sys.executable, "-m", "akvm", "run", "--kernel", str(kernel), *args],
                          capture_output=True, stdin=stdin, timeout=timeout, **popen)


def test_serial_output_and_poweroff(tiny_kernel):
    r = run(tiny_kernel, "--cmdline", "p")
    assert r.stdout == b"tiny: hello, cmdline=p\n"
    assert r.returncode == ExitCode.POWEROFF


def test_a_run_with_sigchld_ignored_is_clean(tiny_kernel):
    """The builder is then reaped by the kernel, not by akvm: no complaint."""
    r = run(tiny_kernel, preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN))
    assert r.returncode == ExitCode.POWEROFF
    assert r.stderr == b"akvm: guest powered off\n"
    assert r.stderr.decode().strip() == "akvm: guest powered off"


def test_output_within_a_second(tiny_kernel):
    start = time.monotonic()
    with started(tiny_kernel, "--cmdline", "e", stdin=subprocess.PIPE) as proc:
        line = proc.stdout.readline()
        elapsed = time.monotonic() - start
        proc.stdin.write(b"q")
        proc.stdin.close()
        proc.wait(timeout=30)
    assert line == b"tiny: hello, cmdline=e\n"
    # Generous bound for a loaded CI machine; tools/bench measures the real figure.
    assert elapsed < 5


def test_reset_exit_code(tiny_kernel):
    r = run(tiny_kernel, "--cmdline", "r")
    assert r.returncode == ExitCode.RESET
    assert b"guest reset the machine" in r.stderr


def test_triple_fault_exit_code_and_register_dump(tiny_kernel):
    r = run(tiny_kernel, "--cmdline", "t")
    err = r.stderr.decode()
    assert r.returncode == ExitCode.TRIPLE_FAULT
    assert err.startswith("akvm: vcpu0: triple fault\n")
    for reg in ("RAX=", "RIP=", "CR0=", "EFER=", "CS=", "GDT=", "IDT="):
        assert reg in err
    assert "Traceback" not in err


def test_two_vcpus_start_the_ap(tiny_kernel):
    r = run(tiny_kernel, "--cmdline", "s", "--cpus", "2", "--stats")
    out = r.stdout.decode()
    assert r.returncode == ExitCode.POWEROFF
    assert "AP\n" in out and "tiny: AP online" in out
    assert re.search(r"vcpu1 exits: .*\d+ completed in C", r.stderr.decode())   # its output


def test_one_vcpu_has_no_ap(tiny_kernel):
    r = run(tiny_kernel, "--cmdline", "s", "--cpus", "1")
    assert b"tiny: no AP" in r.stdout


def test_serial_input_echo(tiny_kernel):
    r = subprocess.run([sys.executable, "-m", "akvm", "run", "--kernel", str(tiny_kernel),
                        "--cmdline", "e"], input=b"hello akvm q", capture_output=True, timeout=60)
    assert r.stdout.endswith(b"hello akvm ")
    assert r.returncode == ExitCode.POWEROFF


def test_serial_to_file(tiny_kernel, tmp_path):
    log = tmp_path / "serial.log"
    r = run(tiny_kernel, "--cmdline", "p", "--serial", f"file:{log}")
    assert r.returncode == 0 and r.stdout == b""
    assert log.read_bytes() == b"tiny: hello, cmdline=p\n"


def test_stats_counts_exits(tiny_kernel):
    r = run(tiny_kernel, "--cmdline", "p", "--stats")
    err = r.stderr.decode()
    assert "vcpu0 exits: io" in err and "com1: 23 bytes out" in err


def test_sigterm_ends_cleanly(tiny_kernel):
    with started(tiny_kernel, "--cmdline", "e", stdin=subprocess.PIPE) as proc:
        assert proc.stdout.readline().startswith(b"tiny: hello")
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.POWEROFF
    assert b"stopped by SIGTERM" in err and b"Traceback" not in err


def test_multiboot_info_reaches_guest_with_module(tiny_kernel, tmp_path):
    mod = tmp_path / "mod.bin"
    mod.write_bytes(b"x" * 5000)
    r = run(tiny_kernel, "--cmdline", "p module test", "--module", f"{mod},arg1 arg2")
    assert r.stdout == b"tiny: hello, cmdline=p module test\n"


def test_pit_channel0_counts_at_entry(tiny_kernel):
    r = run(tiny_kernel, "--cmdline", "c")
    assert b"tiny: PIT counting" in r.stdout


def test_serial_on_a_unix_socket(tiny_kernel, tmp_path):
    import socket
    path = tmp_path / "com1.sock"
    with started(tiny_kernel, "--cmdline", "e", "--serial", f"unix:{path}",
                 stdin=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.settimeout(30)
            got = b""
            while b"cmdline=e\n" not in got:
                data = s.recv(100)
                assert data, got                    # EOF: akvm went away
                got += data
            s.sendall(b"hi q")
            while not got.endswith(b"hi "):
                data = s.recv(100)
                assert data, got
                got += data
        assert proc.wait(timeout=30) == ExitCode.POWEROFF
    assert got.startswith(b"tiny: hello")


def test_a_build_that_fails_closes_what_it_opened(tmp_path, tiny_kernel):
    """The kernel is parsed after KVM built the VM (its loaders import meanwhile):
    a bad kernel, or a bad device, must still leave no descriptor behind."""
    bad = tmp_path / "not-a-kernel"
    bad.write_bytes(bytes(4096))
    configs = [MachineConfig(kernel=str(bad), serial="none"),
               MachineConfig(kernel=str(tiny_kernel), serial="none",
                             devices=[parse_device(f"virtio-blk,file={tmp_path}/missing.img")])]
    before = open_fds()
    for config in configs * 2:
        with pytest.raises((UserError, ConfigError)):
            Machine.build(config)
    assert open_fds() <= before
