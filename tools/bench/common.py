"""Shared helpers: medians of alternating runs, table rows, machine description."""
from __future__ import annotations

import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    name: str
    unit: str
    akvm: float
    other_name: str = ""
    other: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if not self.other else self.akvm / self.other


def alternate(runs: int, **samplers) -> dict[str, float]:
    """Run each sampler `runs` times, interleaved, and return the medians by name."""
    samples = {name: [] for name in samplers}
    for _ in range(runs):
        for name, fn in samplers.items():
            samples[name].append(fn())
    return {name: statistics.median(v) for name, v in samples.items()}


def installed_akvm(where: Path) -> tuple[str, str]:
    """akvm as a user installs it: `pip install` of this checkout into a new venv in
    `where` (built and byte-compiled as pip does). Start-up figures then count what
    an installed akvm imports, not an editable install's import hook or this
    machine's site-packages hooks (.pth files). Returns (its akvm command, its python)."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)], check=True)
    return str(venv / "bin" / "akvm"), str(venv / "bin" / "python")


def have_qemu() -> bool:
    return shutil.which("qemu-system-x86_64") is not None


def ensure_qemu() -> bool:
    """Install QEMU from Debian's packages when absent (the bench runs on fresh machines)."""
    if have_qemu():
        return True
    if shutil.which("apt-get") is None:
        return False
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "qemu-system-x86"], check=False,
                   env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    return have_qemu()


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {platform.system()} {platform.release()}"
