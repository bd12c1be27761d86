"""Userspace exit round trip: whole runs of N port (or MMIO) writes, start-up included.

The same guest (tools/bench/exits.S) under akvm, under akvm without its
seccomp filter (--sandbox off: what the filter costs), under a bare C
KVM_RUN loop that does nothing but re-enter (bare_kvm.c: the floor), and
under QEMU.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.bench.common import Row, alternate, have_qemu

HERE = Path(__file__).parent
N = 1_000_000
RUNS = 3


def build(workdir: Path) -> tuple[Path, Path, Path]:
    """The exits kernel as an ELF (akvm, QEMU) and a flat image (bare loop), and the bare loop."""
    obj, elf, flat, bare = (workdir / n for n in ("exits.o", "exits.elf", "exits.bin", "bare_kvm"))
    subprocess.run(["as", "--32", "-o", obj, HERE / "exits.S"], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-N", "-Ttext=0x100000", "--no-warn-rwx-segments",
                    "-o", elf, obj], check=True)
    subprocess.run(["objcopy", "-O", "binary", elf, flat], check=True)
    subprocess.run(["gcc", "-O2", "-o", bare, HERE / "bare_kvm.c"], check=True)
    return elf, flat, bare


def _timed(cmd: list) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - start


def run(n: int = N) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        elf, flat, bare = build(Path(tmp))
        for mode, what in (("p", "port writes"), ("m", "MMIO writes")):
            cmdline = f"{mode} {n}"
            samplers = {
                "akvm": lambda: _timed([sys.executable, "-m", "akvm", "run", "--kernel", elf,
                                        "--cmdline", cmdline, "--serial", "none"]),
                "unfiltered": lambda: _timed([sys.executable, "-m", "akvm", "run", "--kernel", elf,
                                              "--cmdline", cmdline, "--serial", "none",
                                              "--sandbox", "off"]),
                "bare": lambda: _timed([bare, flat, cmdline]),
            }
            if have_qemu():
                samplers["qemu"] = lambda: _timed(["qemu-system-x86_64", "-enable-kvm", "-machine", "q35",
                                                   "-kernel", elf, "-append", cmdline, "-display", "none",
                                                   "-serial", "none", "-monitor", "none", "-no-reboot"])
            med = alternate(RUNS, **samplers)
            rows.append(Row(f"{n} {what}, whole run", "s", med["akvm"], "bare C KVM_RUN loop",
                            med["bare"], f"median of {RUNS}; the floor"))
            rows.append(Row(f"{n} {what}, whole run", "s", med["akvm"], "akvm --sandbox off",
                            med["unfiltered"], f"median of {RUNS}; the seccomp filter's cost"))
            if "qemu" in med:
                rows.append(Row(f"{n} {what}, whole run", "s", med["akvm"], "QEMU", med["qemu"],
                                f"median of {RUNS}; QEMU includes SeaBIOS"))
    return rows
