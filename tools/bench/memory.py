"""VMM memory overhead: resident memory minus the guest RAM the guest touched.

Both VMMs boot the bundled guest to its prompt; then /proc/PID/smaps gives
the process's Rss and the Rss of the guest-RAM mapping (the anonymous
mapping of exactly the guest's RAM size), and the difference is what the
VMM itself costs.
"""
from __future__ import annotations

import sys

import pexpect

from tools.bench.common import Row, alternate, have_qemu
from akvm import guest_kernel
from akvm.testing import GUEST_PROMPT, qemu_command

RUNS = 3
MEMORY_MIB = 512


def overhead_kib(pid: int, ram_bytes: int) -> float:
    """Total Rss minus the Rss of the mapping that is the guest's RAM, in KiB."""
    total = ram = 0
    size = rss = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
                total += rss
                if size == ram_bytes // 1024:
                    ram = max(ram, rss)
    return float(total - ram)


def _measure(cmd: list[str], quit_keys: bool) -> float:
    child = pexpect.spawn(cmd[0], cmd[1:], timeout=120)
    child.expect(GUEST_PROMPT)
    try:
        return overhead_kib(child.pid, MEMORY_MIB << 20) / 1024
    finally:
        if quit_keys:
            child.sendcontrol("a")
            child.send("x")
            child.expect(pexpect.EOF)
        child.close(force=True)


def run() -> list[Row]:
    kernel = guest_kernel.build()
    akvm = [sys.executable, "-m", "akvm", "run", "--kernel", str(kernel), "--memory", f"{MEMORY_MIB}M"]
    samplers = {"akvm": lambda: _measure(akvm, True)}
    if have_qemu():
        samplers["qemu"] = lambda: _measure(qemu_command(kernel, 1, f"{MEMORY_MIB}M"), False)
    med = alternate(RUNS, **samplers)
    return [Row("VMM memory overhead (RSS minus guest RAM touched)", "MiB", med["akvm"], "QEMU",
                med.get("qemu"), f"guest/ at its prompt, {MEMORY_MIB} MiB guest; median of {RUNS}")]
