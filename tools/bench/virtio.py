"""Guest-measured virtio-blk: 4 KiB random-read IOPS and 1 MiB sequential-read MB/s.

The bundled guest's `bench virtio-blk-rand4k virtio-blk-seq1m`
(guest/virtiobench.c: its polled virtio-blk PCI driver, one request in
flight) reads a 64 MiB raw image of random bytes, written just before, so
the host's page cache is warm. Under akvm the disk is `--device
virtio-blk,file=IMG`; under QEMU `virtio-blk-pci` (modern only) on
`cache=writeback`, machine q35 on both. With the IOMMU: akvm `--iommu vtd`,
QEMU `intel-iommu` (kernel-irqchip=split) with `iommu_platform=on` on the
disk (QEMU 7.2 otherwise keeps virtio DMA off the IOMMU), and the guest
turns translation on (`iommu on`: pass-through context entries) and
negotiates VIRTIO_F_ACCESS_PLATFORM, checked here.

Ring 0 is emulated on kvm_pvm hosts (about 0.6 us per guest instruction):
the driver's side of each request, some 200 us, is in both VMMs' figures.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from tools.bench.common import Row, alternate, have_qemu
from akvm.testing import Guest

RUNS = 3
IMAGE_MIB = 64
NAMES = ("virtio-blk-rand4k", "virtio-blk-seq1m")
VIRTIO_F_ACCESS_PLATFORM = 1 << 33
_BENCH = re.compile(r"^BENCH (virtio-blk-\S+) iterations=\d+ cycles_per_op=\d+ ns_per_op=(\d+)"
                    r"(?: iops=(\d+))?(?: bytes_per_op=\d+ MBps=(\d+))?\s*$", re.M)
_FEATURES = re.compile(r"^virtio block\s+pci .*features (0x[0-9a-f]+)", re.M)


def make_image(path: Path, mib: int = IMAGE_MIB) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    with open(path, "rb") as f:                    # through the page cache once more
        while f.read(1 << 20):
            pass


def akvm_args(image: Path, iommu: bool) -> list[str]:
    return ["--device", f"virtio-blk,file={image}"] + (["--iommu", "vtd"] if iommu else [])


def qemu_args(image: Path, iommu: bool) -> list[str]:
    machine = "q35,kernel-irqchip=split" if iommu else "q35"
    disk = "virtio-blk-pci,drive=d0,disable-legacy=on" + (",iommu_platform=on" if iommu else "")
    return (["-machine", machine] + (["-device", "intel-iommu,aw-bits=48"] if iommu else []) +
            ["-device", disk, "-drive", f"if=none,id=d0,file={image},format=raw,cache=writeback"])


def guest_bench(vmm: str, args: list[str], iommu: bool) -> dict[str, dict[str, float]]:
    """{bench name: {"ns": ns_per_op, "iops" or "MBps": figure}} from one boot."""
    with Guest(cpus=1, vmm=vmm, args=args, timeout=600) as guest:
        if iommu:
            guest.command("iommu on")
        out = guest.command("bench " + " ".join(NAMES), timeout=600)
        virtio = guest.command("virtio")
    found = {}
    for name, ns, iops, mbps in _BENCH.findall(out):
        found[name] = {"ns": float(ns)}
        if iops:
            found[name]["iops"] = float(iops)
        if mbps:
            found[name]["MBps"] = float(mbps)
    if set(found) != set(NAMES):
        raise RuntimeError(f"{vmm}: the guest's virtio-blk bench did not run:\n{out}")
    m = _FEATURES.search(virtio)
    if m is None or bool(int(m.group(1), 16) & VIRTIO_F_ACCESS_PLATFORM) != iommu:
        raise RuntimeError(f"{vmm}: VIRTIO_F_ACCESS_PLATFORM {'not ' if iommu else ''}"
                           f"negotiated:\n{virtio}")
    return found


def run() -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "disk.img"
        make_image(image)
        for iommu in (False, True):
            runs: dict[str, list] = {"akvm": [], "qemu": []}

            def sampler(vmm, args):
                def sample():
                    runs[vmm].append(guest_bench(vmm, args, iommu))
                    return 0.0
                return sample
            samplers = {"akvm": sampler("akvm", akvm_args(image, iommu))}
            if have_qemu():
                samplers["qemu"] = sampler("qemu", qemu_args(image, iommu))
            alternate(RUNS, **samplers)
            where = "behind the IOMMU (pass-through contexts)" if iommu else "no IOMMU"
            for name, field, unit, what in (
                    ("virtio-blk-rand4k", "iops", "IOPS", "4 KiB random reads"),
                    ("virtio-blk-seq1m", "MBps", "MB/s", "1 MiB sequential reads")):
                akvm = _median([r[name] for r in runs["akvm"]], field)
                qemu = _median([r[name] for r in runs["qemu"]], field) if runs["qemu"] else None
                akvm_us = _median([r[name] for r in runs["akvm"]], "ns") / 1000
                lat = f"{akvm_us:.0f} us/op"
                if runs["qemu"]:
                    lat += f" vs {_median([r[name] for r in runs['qemu']], 'ns') / 1000:.0f}"
                rows.append(Row(f"virtio-blk {what}, {where}", unit, akvm, "QEMU", qemu,
                                f"guest-measured, polled, 1 in flight, {IMAGE_MIB} MiB image in "
                                f"the page cache; {lat}; median of {RUNS}; guest ring 0 is "
                                "emulated (kvm_pvm) on both sides"))
    return rows


def _median(results: list[dict], field: str) -> float:
    values = sorted(r[field] for r in results)
    return values[len(values) // 2]
