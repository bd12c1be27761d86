"""Boot to prompt: from starting the VMM to the guest kernel's monitor prompt."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pexpect

from tools.bench.common import Row, alternate, have_qemu, installed_akvm
from akvm import guest_kernel
from akvm.testing import GUEST_PROMPT, qemu_command

RUNS = 5


def _time_to_prompt(cmd: list[str], quit_keys: bool) -> float:
    start = time.perf_counter()
    child = pexpect.spawn(cmd[0], cmd[1:], timeout=120)
    child.expect(GUEST_PROMPT)
    elapsed = time.perf_counter() - start
    if quit_keys:
        child.sendcontrol("a")
        child.send("x")
        child.expect(pexpect.EOF)
    child.close(force=True)
    return elapsed


def run(cpus: int = 2, memory: str = "512M") -> list[Row]:
    kernel = guest_kernel.build()
    with tempfile.TemporaryDirectory(prefix="akvm-bench-") as tmp:
        installed, _ = installed_akvm(Path(tmp))
        akvm = [installed, "run", "--kernel", str(kernel), "--cpus", str(cpus), "--memory", memory]
        samplers = {"akvm": lambda: _time_to_prompt(akvm, True)}
        if have_qemu():
            qemu = qemu_command(kernel, cpus, memory)
            samplers["qemu"] = lambda: _time_to_prompt(qemu, False)
        med = alternate(RUNS, **samplers)
    return [Row(f"guest/ boot to prompt ({cpus} vCPUs, {memory})", "ms", med["akvm"] * 1000,
                "QEMU", med["qemu"] * 1000 if "qemu" in med else None,
                f"median of {RUNS}; includes process start (akvm installed in a venv)")]
