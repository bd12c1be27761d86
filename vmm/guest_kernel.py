"""The bundled guest kernel: its sources ship with akvm, and make builds it on first use.

In a checkout (or an editable install) the sources are guest/ beside the
package folders and the kernel is built in guest/build, as `make -C guest`
does. A regular install carries them as akvm/guest, and the kernel is built
into a per-user cache directory instead: an installed package is not a
place to write. Either way a line on stderr says when a build starts and
where it goes.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
INSTALLED = _HERE / "guest"             # a regular install
CHECKOUT = _HERE.parent / "guest"        # guest/ next to vmm/
SOURCES = INSTALLED if (INSTALLED / "Makefile").exists() else CHECKOUT


class GuestBuildError(Exception):
    """The sources are missing or `make` failed; the message says which and shows make's output."""


def cache_dir(sources: Path) -> Path:
    """Where a kernel from read-only sources is built: one folder per source tree."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = hashlib.sha256(str(sources).encode()).hexdigest()[:12]
    return base / "akvm" / f"guest-{tag}"


def build_dir(sources: Path) -> Path:
    return sources / "build" if sources == CHECKOUT else cache_dir(sources)


def build(sources: Path = SOURCES) -> Path:
    """`make -C sources` into build_dir() when out of date, and the path of the kernel."""
    if not (sources / "Makefile").exists():
        raise GuestBuildError(f"no guest kernel sources at {sources} (pass --kernel)")
    out = build_dir(sources)
    make = ["make", "-s", "-C", str(sources), f"BUILD={out}"]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / ".lock", "w") as lock:
            # One make at a time: pytest-xdist workers, or two akvm started at once.
            fcntl.flock(lock, fcntl.LOCK_EX)
            fresh = subprocess.run([*make, "-q"], capture_output=True).returncode == 0
            if not fresh:
                print(f"akvm: building the bundled guest kernel into {out}", file=sys.stderr,
                      flush=True)
                r = subprocess.run(make, capture_output=True, text=True)
                if r.returncode != 0:
                    raise GuestBuildError(f"make -C {sources} failed:\n{r.stdout}{r.stderr}")
    except FileNotFoundError:
        raise GuestBuildError("building the guest kernel needs make and gcc (or pass --kernel)") from None
    return out / "kernel"
