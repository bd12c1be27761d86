"""The I/OAT model's copies from a guest process, next to the host's memcpy.

The bundled guest's `bench user-ioat` (guest/user/ioatdma.c): a process
owns an I/OAT channel through the IOMMU and times copies it programs from
ring 3 (descriptors in its ring, one DMACOUNT write per batch, the
completion writeback polled in memory): 4 KiB copies 16 per doorbell, 1 MiB
copies 63 per doorbell (the ring holds 64), and 64-byte copies 63 per doorbell, first through
its VT-d domain (translated), then with its context switched to
pass-through (physical addresses; the buffers are physically contiguous).
The host's memcpy of the same sizes (memcpy.c, repeated copies between two
buffers, as the guest repeats its own) is the physical limit, measured in
the same run, alternating with the guest's boots.

The IOTLB is given 2048 entries (`--iommu vtd,iotlb=2048`): a 1 MiB copy
touches 512 pages plus the ring, more than the default 512 entries hold,
and then every copy misses on every page and walks (in C, iommu/vtdfast.c).
A row with the default shows what that costs.
"""
from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from tools.bench.common import Row
from akvm.testing import Guest

RUNS = 5
HERE = Path(__file__).parent
SIZES = {"4k": 4096, "1m": 1 << 20}
DEVICE = ["--device", "ioat,functions=0"]
_BENCH = re.compile(r"^BENCH user-ioat-(\S+)-(translated|passthrough) iterations=\d+ "
                    r"cycles_per_op=\d+ ns_per_op=(\d+) bytes_per_op=\d+ MBps=(\d+)", re.M)


def guest_bench(iotlb: int) -> dict[str, float]:
    """{"copy-1m-translated": MB/s, ..., "desc-64b-passthrough": descriptors/s}."""
    with Guest(cpus=2, args=[*DEVICE, "--iommu", f"vtd,iotlb={iotlb}"], timeout=600) as guest:
        out = guest.command("bench user-ioat", timeout=600)
    figures = {}
    for what, how, ns, mbps in _BENCH.findall(out):
        figures[f"{what}-{how}"] = 1e9 / float(ns) if what.startswith("desc") else float(mbps)
    if len(figures) != 6:
        raise RuntimeError(f"bench user-ioat printed:\n{out}")
    return figures


def host_memcpy(binary: Path) -> dict[str, float]:
    out = subprocess.run([binary, *map(str, SIZES.values())], capture_output=True, text=True,
                         check=True).stdout
    mbps = dict(line.split() for line in out.splitlines())
    return {name: float(mbps[str(size)]) for name, size in SIZES.items()}


def run() -> list[Row]:
    guest_runs, host_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "memcpy"
        subprocess.run(["gcc", "-O2", "-o", binary, HERE / "memcpy.c"], check=True)
        for _ in range(RUNS):                           # alternating, in one run
            guest_runs.append(guest_bench(2048))
            host_runs.append(host_memcpy(binary))
    small = guest_bench(512)
    guest = {k: statistics.median(r[k] for r in guest_runs) for k in guest_runs[0]}
    host = {k: statistics.median(r[k] for r in host_runs) for k in SIZES}
    note = f"guest-measured, ring 3; median of {RUNS} boots alternating with the host's"
    rows = []
    for how, label in (("translated", "translated (VT-d domain)"), ("passthrough", "pass-through")):
        for size, text in (("4k", "4 KiB"), ("1m", "1 MiB")):
            rows.append(Row(f"ioat {text} copies from a guest process, {label}", "MB/s",
                            guest[f"copy-{size}-{how}"], "host memcpy", host[size], note))
    for size, text in (("4k", "4 KiB"), ("1m", "1 MiB")):
        rows.append(Row(f"ioat {text} copies: translated / pass-through", "MB/s",
                        guest[f"copy-{size}-translated"], "pass-through",
                        guest[f"copy-{size}-passthrough"], note))
    rows.append(Row("ioat 64-byte copies: translated / pass-through", "desc/s",
                    guest["desc-64b-translated"], "pass-through", guest["desc-64b-passthrough"],
                    note + "; 63 descriptors per DMACOUNT write"))
    rows.append(Row("ioat 1 MiB copies, translated, default IOTLB (512 entries)", "MB/s",
                    small["copy-1m-translated"], "iotlb=2048", guest["copy-1m-translated"],
                    "one boot: a copy's 512 pages and its ring overflow the IOTLB: every "
                    "page misses and is walked in C"))
    return rows
