"""Upstream Akaros boot: akvm next to QEMU on the same kernel and memory size.

Set AKVM_AKAROS_KERNEL to a kernel built from github brho/akaros (defconfig).
QEMU cannot complete the xrstor64 that Akaros runs on every core on this
host, so the figure both can reach is "Number of Cores Detected" (printed
just before QEMU dies there); akvm's time to the monitor prompt is shown
beside it. QEMU gets `-cpu qemu64,vendor=GenuineIntel`: with an AMD vendor
KVM rejects Akaros's page tables (see akvm.vcpu.cpu.configure_cpuid).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from tools.bench.common import Row, alternate, have_qemu

RUNS = 3
MILESTONE = b"Number of Cores Detected"
READY = b"Hit ctrl-g to enter the monitor"


def _time_to(cmd: list[str], *markers: bytes) -> list[float]:
    """Seconds from start until each marker appears on the serial console."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    found, buf = [], b""
    try:
        while len(found) < len(markers):
            chunk = proc.stdout.read1(4096)
            if not chunk:
                break
            buf += chunk
            while len(found) < len(markers) and markers[len(found)] in buf:
                found.append(time.perf_counter() - start)
    finally:
        proc.kill()
        proc.wait()
    return found + [float("nan")] * (len(markers) - len(found))


def run(memory: str = "1G", cpus: int = 2) -> list[Row]:
    kernel = os.environ.get("AKVM_AKAROS_KERNEL", "")
    if not os.path.isfile(kernel):
        print("akaros: skipped (set AKVM_AKAROS_KERNEL to an upstream Akaros kernel)", file=sys.stderr)
        return []
    akvm = [sys.executable, "-m", "akvm", "run", "--kernel", kernel, "--memory", memory,
            "--cpus", str(cpus), "--serial", "stdio"]
    samples = {"akvm_cores": [], "akvm_ready": [], "qemu_cores": []}

    def sample_akvm():
        cores, ready = _time_to(akvm, MILESTONE, READY)
        samples["akvm_cores"].append(cores)
        return ready

    samplers = {"akvm": sample_akvm}
    if have_qemu():
        qemu = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "qemu64,vendor=GenuineIntel",
                "-kernel", kernel, "-m", memory, "-smp", str(cpus), "-serial", "stdio",
                "-display", "none", "-monitor", "none", "-no-reboot"]
        samplers["qemu"] = lambda: _time_to(qemu, MILESTONE)[0]
    med = alternate(RUNS, **samplers)
    akvm_cores = sorted(samples["akvm_cores"])[len(samples["akvm_cores"]) // 2]
    rows = [Row(f"Akaros to 'Number of Cores Detected' ({cpus} vCPUs, {memory})", "s", akvm_cores,
                "QEMU", med.get("qemu"), f"median of {RUNS}; QEMU dies on xrstor64 right after")]
    rows.append(Row("Akaros to 'Hit ctrl-g' (monitor ready)", "s", med["akvm"], note=
                    "QEMU cannot get there on this host (xrstor64 emulation failure)"))
    return rows
