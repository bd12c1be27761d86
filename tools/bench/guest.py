"""Guest-measured costs: the bundled guest's `bench` under akvm and under QEMU.

The guest times each operation with the TSC (exits, IPIs, IOMMU
invalidations register-based and queued, batched N per wait, edu DMA with
and without translation) and prints `BENCH name ... ns_per_op=X`. Both
VMMs get an IOMMU and an edu device. Ring 0 is emulated on kvm_pvm hosts,
so these figures include that cost on both sides.

The user-* ones time a loop in a process (ring 3, native on kvm_pvm too):
user-shootdown-N is one munmap by a process that runs on N cores (IPIs to
the other N - 1, INVLPG, and the page-selective IOTLB invalidation of the
domain it owns the edu through); user-edu-dma-{translated,passthrough} is
one 4088-byte edu DMA programmed from ring 3 through the process's VT-d
domain, and with its context switched to pass-through.
"""
from __future__ import annotations

import re

from tools.bench.common import Row, have_qemu
from vmm.testing import Guest

NAMES = ("pio", "mmio", "cpuid", "ipi", "iommu", "edu", "user-shootdown", "user-edu")
AKVM_ARGS = ["--device", "edu", "--iommu", "vtd"]
QEMU_ARGS = ["-machine", "q35,kernel-irqchip=split", "-device", "intel-iommu,aw-bits=48",
             "-device", "edu"]
_BENCH = re.compile(r"^BENCH (\S+) .*ns_per_op=(\d+)", re.M)


def guest_bench(vmm: str, args: list[str]) -> dict[str, float]:
    with Guest(cpus=2, vmm=vmm, args=args, timeout=600) as guest:
        out = guest.command("bench " + " ".join(NAMES), timeout=600)
    return {name: float(ns) for name, ns in _BENCH.findall(out)}


def run() -> list[Row]:
    akvm = guest_bench("akvm", AKVM_ARGS)
    qemu = guest_bench("qemu", QEMU_ARGS) if have_qemu() else {}
    return [Row(f"guest bench {name}", "us/op", ns / 1000, "QEMU",
                qemu[name] / 1000 if name in qemu else None,
                "guest-measured, ring 3" if name.startswith("user-") else "guest-measured, ring 0")
            for name, ns in akvm.items()]
