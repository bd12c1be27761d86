"""Bad user input: one line on stderr, exit status 2, never a traceback."""
import os
import re
import signal
import subprocess
import sys

import pytest

from tests.conftest import needs_kvm


def akvm(*args, stdin=subprocess.DEVNULL, timeout=30, **popen):
    return subprocess.run([sys.executable, "-m", "akvm", *args], capture_output=True, text=True,
                          stdin=stdin, timeout=timeout, **popen)


def ignore_sigchld():
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("akvm: error: ")
    for f in fragments:
        assert f in lines[0]


def test_version():
    r = akvm("--version")
    assert r.returncode == 0 and r.stdout.startswith("akvm ")


def test_help_fits_the_terminal_width_that_columns_says():
    """argparse's wrapping, sized as shutil would size it (akvm's formatter does so
    without importing shutil): COLUMNS, else the terminal (none here: 80)."""
    def usage(columns):
        env = dict(os.environ, COLUMNS=columns)
        out = akvm("run", "--help", env=env).stdout
        return out[:out.index("\n\n")].splitlines()
    narrow, wide, unset = usage("60"), usage("200"), usage("")
    assert all(len(line) <= 60 for line in narrow) and len(narrow) > len(wide)
    assert max(len(line) for line in unset) <= 80 < max(len(line) for line in wide)
    assert usage("-5") == usage("abc") == unset


def test_help_lists_run_options():
    r = akvm("run", "--help")
    assert r.returncode == 0
    for opt in ("--kernel", "--cmdline", "--memory", "--cpus", "--serial", "--module", "--stats",
                "--gdb", "--gdb-wait", "Ctrl-A x"):
        assert opt in r.stdout


def test_missing_kernel(tmp_path):
    assert_one_line_error(akvm("run", "--kernel", str(tmp_path / "nope")), "No such file")


def test_kernel_is_directory(tmp_path):
    assert_one_line_error(akvm("run", "--kernel", str(tmp_path)), "directory")


def test_kernel_or_module_that_is_not_a_regular_file(tiny_kernel, tmp_path):
    """A FIFO would block the open, /dev/zero would be read until memory ran out."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        assert_one_line_error(akvm("run", "--kernel", str(path), timeout=10),
                              f"kernel {path}: not a regular file")
        assert_one_line_error(akvm("run", "--kernel", str(tiny_kernel), "--module", str(path),
                                   "--serial", "none", timeout=10),
                              f"module {path}: not a regular file")


def test_not_a_multiboot_kernel(tmp_path):
    k = tmp_path / "k"
    k.write_bytes(b"\x7fELF" + bytes(200))
    assert_one_line_error(akvm("run", "--kernel", str(k)), "multiboot header")


def test_unknown_option():
    assert_one_line_error(akvm("run", "--bogus"), "--bogus")


def host_cannot_map_a_terabyte() -> bool:
    """Heuristic overcommit refuses a mapping larger than RAM + swap."""
    with open("/proc/sys/vm/overcommit_memory") as f:
        if f.read().strip() != "0":
            return False
    with open("/proc/meminfo") as f:
        kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)}
    return (kib["MemTotal"] + kib["SwapTotal"]) << 10 < 1 << 40


@needs_kvm
@pytest.mark.skipif(not host_cannot_map_a_terabyte(), reason="this host could map 1T of RAM")
def test_more_memory_than_the_host_has(tiny_kernel):
    assert_one_line_error(akvm("run", "--kernel", str(tiny_kernel), "--memory", "1T"),
                          "--memory 1T: the host cannot give that much guest RAM")


def test_errors_stay_one_line_when_sigchld_is_ignored(tmp_path):
    """A parent that ignores SIGCHLD (inherited across exec) makes the kernel reap
    akvm's boot image builder itself: akvm must not trip over that."""
    assert_one_line_error(akvm("run", "--bogus", preexec_fn=ignore_sigchld), "--bogus")
    assert_one_line_error(akvm("run", "--kernel", str(tmp_path / "nope"),
                               preexec_fn=ignore_sigchld), "No such file")


@pytest.mark.parametrize("args,fragment", [
    (["--memory", "12X"], "--memory"),
    (["--memory", "1"], "too small"),
    (["--memory", "1536K"], "whole number of MiB"),
    (["--cpus", "0"], "--cpus"),
    (["--cpus", "two"], "--cpus"),
    (["--cpus", "999"], "--cpus"),
    (["--serial", "tcp:1"], "--serial"),
    (["--module", ",args"], "--module"),
    (["--gdb", "1234"], "--gdb: expected tcp:[HOST]:PORT"),
    (["--gdb", "tcp::65536"], "--gdb"),
    (["--gdb", "tcp:host"], "--gdb"),
    (["--gdb", "tcp:no.such.host.invalid:1"], "--gdb tcp:no.such.host.invalid:1"),
])
def test_bad_values(tiny_kernel, args, fragment):
    assert_one_line_error(akvm("run", "--kernel", str(tiny_kernel), *args), fragment)


def test_gdb_port_in_use(tiny_kernel):
    import socket
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert_one_line_error(akvm("run", "--kernel", str(tiny_kernel), "--gdb", f"tcp::{port}"),
                              f"--gdb tcp:127.0.0.1:{port}: Address already in use")


def test_missing_module(tiny_kernel, tmp_path):
    assert_one_line_error(akvm("run", "--kernel", str(tiny_kernel), "--module", str(tmp_path / "m")),
                          "module")


@needs_kvm
def test_kernel_does_not_fit_in_ram(tiny_kernel_at_64m):
    assert_one_line_error(akvm("run", "--kernel", str(tiny_kernel_at_64m), "--memory", "32M"), "RAM")


def test_no_dev_kvm(tiny_kernel, tmp_path):
    """Without /dev/kvm (hidden by a private mount namespace) akvm says so in one line."""
    unshare = ["unshare", "--mount", "sh", "-c",
               f"mount -t tmpfs none /dev && exec {sys.executable} -m akvm run --kernel {tiny_kernel}"]
    r = subprocess.run(unshare, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
                       cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    if r.returncode != 2 and "unshare" in r.stderr:
        pytest.skip(f"cannot make a mount namespace here: {r.stderr.strip()}")
    assert_one_line_error(r, "/dev/kvm")


def test_parse_device_options():
    from akvm.config import ConfigError
    from akvm.devicetable import parse_device
    spec = parse_device("virtio-blk,file=disk.img,readonly=on")
    assert spec.kind == "virtio-blk"
    assert spec.values == {"file": "disk.img", "readonly": True, "serial": None, "transport": "pci"}
    assert spec.given == {"file", "readonly"}
    assert parse_device("edu").values == {"dma_bits": 28}
    with pytest.raises(ConfigError, match=r"unknown option 'bogus'.*known: dma_bits"):
        parse_device("edu,bogus=1")
    with pytest.raises(ConfigError, match="file=PATH is required"):
        parse_device("virtio-blk")
    with pytest.raises(ConfigError, match="dma_bits=0: expected 1 to 64"):
        parse_device("edu,dma_bits=0")
    for bad in ("", ",x=1", "Edu", "edu,x", "edu,dma_bits=1,dma_bits=2", "nosuch"):
        with pytest.raises(ConfigError):
            parse_device(bad)


def test_help_lists_every_kind_and_option():
    from akvm.devicetable import DEVICES, IOMMUS
    out = akvm("run", "--help").stdout
    for kind in [*DEVICES.values(), *IOMMUS.values()]:
        assert f"  {kind.name}: {kind.help}" in out
        for option in kind.options:
            assert f"{option.key}={option.metavar}" in out


def test_help_shows_each_default_as_the_command_line_takes_it():
    """A default in --help, given back as the option's value, means the default."""
    from akvm.devicetable import DEVICES, IOMMUS, REQUIRED
    out = akvm("run", "--help").stdout
    for kind in [*DEVICES.values(), *IOMMUS.values()]:
        for option in kind.options:
            if option.default in (None, REQUIRED) or option.repeat:
                continue
            line = next(l for l in out.splitlines() if f" {option.key}={option.metavar}" in l)
            shown = re.search(r"default ([^;)\s]+)", line)
            assert shown, line
            assert option.parse(shown.group(1)) == option.default, (kind.name, line)


def test_ioat_functions_option():
    from akvm.config import ConfigError
    from akvm.devicetable import parse_device
    assert parse_device("ioat").values == {"slot": 4, "functions": tuple(range(8))}
    assert parse_device("ioat,functions=0+3").values["functions"] == (0, 3)
    assert parse_device("ioat,functions=0-2+5,slot=9").values == {"slot": 9,
                                                                   "functions": (0, 1, 2, 5)}
    for bad, fragment in (("1-3", "function 0 must be"), ("0-8", "0-7"), ("0+x", "0-7"),
                          ("3-1", "0-7"), ("", "0-7")):
        with pytest.raises(ConfigError, match=fragment):
            parse_device(f"ioat,functions={bad}")


@pytest.mark.parametrize("args,fragment", [
    (["--device", "nosuch"], "no such device"),
    (["--device", "edu,x"], "KEY=VALUE"),
    (["--device", "ioat,functions=3"], "function 0"),
    (["--device", "ioat,slot=0"], "slot=0"),
])
def test_bad_device(tiny_kernel, args, fragment):
    assert_one_line_error(akvm("run", "--kernel", str(tiny_kernel), *args), fragment)


@needs_kvm
def test_ioat_slot_taken(tiny_kernel):
    """Two I/OAT slots at 4: one line naming the function, status 2."""
    assert_one_line_error(akvm("run", "--kernel", str(tiny_kernel), "--device", "ioat,functions=0",
                               "--device", "ioat"), "00:04.0 is taken by ioat.0")
