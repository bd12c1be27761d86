"""The bundled guest kernel (guest/): found next to the package and built on demand."""
from __future__ import annotations

import subprocess
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parents[1] / "guest"


class GuestBuildError(Exception):
    """guest/ is missing or `make` failed; the message says which and shows make's output."""


def build(guest_dir: Path = GUEST_DIR) -> Path:
    """`make -C guest` (a no-op when up to date) and the path of the kernel it builds."""
    if not (guest_dir / "Makefile").exists():
        raise GuestBuildError(f"no guest kernel sources at {guest_dir} (pass --kernel)")
    try:
        r = subprocess.run(["make", "-s", "-C", str(guest_dir)], capture_output=True, text=True)
    except FileNotFoundError:
        raise GuestBuildError("building the guest kernel needs make and gcc (or pass --kernel)") from None
    if r.returncode != 0:
        raise GuestBuildError(f"make -C {guest_dir} failed:\n{r.stdout}{r.stderr}")
    return guest_dir / "build" / "kernel"
