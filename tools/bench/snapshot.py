"""Restore to an answering prompt: a snapshot resumed in a new process, next to QEMU.

akvm: the guest boots with a control socket, is saved at its prompt
(snapshot-save), and quits; each sample starts `akvm run --restore DIR` (akvm
pip-installed into a new venv, as a user has it: common.installed_akvm), sends
Enter until the guest's prompt answers, and counts from the process's start
to that prompt. QEMU: the same guest and machine, saved from its monitor with
`migrate "exec:cat > FILE"`, each sample started with `-incoming "exec:cat
FILE"` and measured the same way. Enter is sent every few milliseconds from
the start, for both, so neither waits on how the other signals readiness.

Also: the 8 GiB guest against the 512 MiB one (restoring must not grow with
RAM), upstream Akaros saved at its monitor (AKVM_AKAROS_KERNEL), and each
snapshot's disk usage against the guest RAM the guest had touched.
"""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pexpect

from tools.bench.common import Row, alternate, have_qemu, installed_akvm
from akvm import guest_kernel
from akvm.testing import GUEST_PROMPT, Guest

RUNS = 15
AKAROS_MONITOR = r"ROS\(Core 0\)> "
ENTER_EVERY_S = 0.005
MiB = 1 << 20


def _cpu_seconds(pid: int) -> float:
    """User and system time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _time_to_prompt(cmd: list[str], prompt: str, quit_keys: bool, cpu: list | None = None) -> float:
    """Seconds from starting `cmd` until Enter gets the prompt back; the process's CPU
    time by then is appended to `cpu`."""
    start = time.perf_counter()
    child = pexpect.spawn(cmd[0], cmd[1:], timeout=60)
    child.delaybeforesend = None            # pexpect sleeps 50 ms before each send otherwise
    try:
        deadline = start + 60
        while True:
            child.send("\r")
            try:
                child.expect(prompt, timeout=ENTER_EVERY_S)
                break
            except pexpect.TIMEOUT:
                if time.perf_counter() > deadline:
                    raise
        elapsed = time.perf_counter() - start
        if cpu is not None:
            cpu.append(_cpu_seconds(child.pid))
    finally:
        if quit_keys and child.isalive():
            child.sendcontrol("a")
            child.send("x")
            child.expect(pexpect.EOF)
        child.close(force=True)
    return elapsed


def _python_start(python: str, cpu: list) -> float:
    start = time.perf_counter()
    before = os.times()
    subprocess.run([python, "-c", "pass"], check=True)
    after = os.times()
    cpu.append(after.children_user + after.children_system
               - before.children_user - before.children_system)
    return time.perf_counter() - start


def _akvm_snapshot(folder: Path, prompt: str = GUEST_PROMPT, wake: tuple = (), **guest) -> dict:
    """Boot, reach the prompt (after `wake`: (pattern, keys) pairs), save into folder/snap."""
    guest = Guest(prompt=prompt, control=folder / "control.sock", timeout=300, **guest)
    guest.start(wait_prompt=not wake)
    try:
        for pattern, keys in wake:
            guest.expect(pattern)
            guest.send(keys)
        if wake:
            guest.expect(prompt)
        return guest.snapshot(folder / "snap")
    finally:
        guest.close()


def _qemu_base(kernel: str, cpus: int, memory: str) -> list[str]:
    return ["qemu-system-x86_64", "-enable-kvm", "-kernel", kernel, "-smp", str(cpus),
            "-m", memory, "-display", "none", "-serial", "stdio", "-no-reboot"]


def _qemu_migrate(base: list[str], folder: Path) -> Path:
    """Boot under QEMU, `migrate "exec:cat > FILE"` from the monitor at the prompt."""
    monitor, out = folder / "qemu-monitor.sock", folder / "qemu.migration"
    child = pexpect.spawn(base[0], base[1:] + ["-monitor", f"unix:{monitor},server=on,wait=off"],
                          timeout=120)
    try:
        child.expect(GUEST_PROMPT)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(monitor))
            s.settimeout(0.2)

            def hmp(line: str) -> str:
                s.sendall(line.encode() + b"\n")
                time.sleep(0.1)
                text = b""
                try:
                    while chunk := s.recv(65536):
                        text += chunk
                except socket.timeout:
                    pass
                return text.decode(errors="replace")
            hmp("")
            hmp(f'migrate "exec:cat > {out}"')
            deadline = time.monotonic() + 300
            while "Migration status: completed" not in hmp("info migrate"):
                if time.monotonic() > deadline:
                    raise RuntimeError("QEMU's migration to a file did not complete")
            hmp("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    return out


def _usage(summary: dict) -> tuple[float, float]:
    return summary["disk_usage"] / MiB, (summary["ram_touched"] + MiB) / MiB


def run() -> list[Row]:
    kernel = str(guest_kernel.build())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="akvm-bench-") as tmp:
        tmp = Path(tmp)
        akvm, python = installed_akvm(tmp)
        snaps, samplers, usage = {}, {}, {}
        cpu = {"akvm 512M": [], "akvm 8G": [], "python": []}
        for memory in ("512M", "8G"):
            folder = tmp / f"guest-{memory}"
            folder.mkdir()
            usage[memory] = _usage(_akvm_snapshot(folder, kernel=kernel, cpus=2, memory=memory))
            snaps[memory] = folder / "snap"
            cmd = [akvm, "run", "--restore", str(snaps[memory]), "--serial", "stdio"]
            samplers[f"akvm {memory}"] = lambda cmd=cmd, m=memory: _time_to_prompt(
                cmd, GUEST_PROMPT, True, cpu[f"akvm {m}"])
            if have_qemu():
                base = _qemu_base(kernel, 2, memory)
                mig = _qemu_migrate(base, folder)
                usage[f"qemu {memory}"] = mig.stat().st_size / MiB
                incoming = base + ["-monitor", "none", "-incoming", f"exec:cat {mig}"]
                samplers[f"qemu {memory}"] = \
                    lambda cmd=incoming: _time_to_prompt(cmd, GUEST_PROMPT, False)
        akaros = os.environ.get("AKVM_AKAROS_KERNEL", "")
        if os.path.isfile(akaros):
            folder = tmp / "akaros"
            folder.mkdir()
            usage["akaros"] = _usage(_akvm_snapshot(
                folder, prompt=AKAROS_MONITOR, kernel=akaros, cpus=2, memory="1G",
                wake=(("Hit ctrl-g to enter the monitor", "\x07"),)))
            cmd = [akvm, "run", "--restore", str(folder / "snap"), "--serial", "stdio"]
            samplers["akvm akaros"] = lambda: _time_to_prompt(cmd, AKAROS_MONITOR, True)
        else:
            print("snapshot: Akaros skipped (set AKVM_AKAROS_KERNEL)", file=sys.stderr)
        samplers["python"] = lambda: _python_start(python, cpu["python"])
        med = alternate(RUNS, **samplers)

    ms = {k: v * 1000 for k, v in med.items()}
    note = (f"median of {RUNS}; whole process (akvm installed in a venv), from its start to "
            "the prompt answering Enter")
    for memory in ("512M", "8G"):
        rows.append(Row(f"guest/ restore to an answering prompt (2 vCPUs, {memory})", "ms",
                        ms[f"akvm {memory}"], "QEMU -incoming", ms.get(f"qemu {memory}"),
                        note + "; target 50 ms"))
    rows.append(Row("guest/ restore, 8 GiB against 512 MiB", "ms", ms["akvm 8G"],
                    "akvm at 512 MiB", ms["akvm 512M"], "target: at most 1.2x"))
    cpu_ms = {k: statistics.median(v) * 1000 for k, v in cpu.items()}
    rows.append(Row("guest/ restore, CPU time of the process at the prompt, 8 GiB against "
                    "512 MiB", "ms", cpu_ms["akvm 8G"], "akvm at 512 MiB", cpu_ms["akvm 512M"],
                    f"median of {RUNS}; user + system, as the kernel counts it (10 ms ticks); "
                    f"a bare Python start uses {cpu_ms['python']:.0f} ms"))
    if "akvm akaros" in ms:
        rows.append(Row("Akaros restore to an answering monitor (2 vCPUs, 1G)", "ms",
                        ms["akvm akaros"], note=f"{note}; target 150 ms (a boot to the monitor "
                                               "takes about 11 s)"))
    rows.append(Row("Python interpreter start (the venv's python -c pass)", "ms", ms["python"],
                    note="the floor under every figure above: part of each akvm start"))
    for key, label in (("512M", "guest/ at its prompt, 512M"), ("8G", "guest/ at its prompt, 8G"),
                       ("akaros", "Akaros at its monitor, 1G")):
        if key not in usage:
            continue
        used, limit = usage[key]
        qemu = usage.get(f"qemu {key}")
        rows.append(Row(f"snapshot disk usage, {label}", "MiB", used, "RAM touched + 1 MiB", limit,
                        "target: at most 1.0x" + (f"; QEMU's migration file {qemu:.2f} MiB"
                                                  if qemu is not None else "")))
    return rows
