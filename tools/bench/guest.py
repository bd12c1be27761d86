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
domain, and with its context switched to pass-through; user-iommu-inv-* is
one IOTLB invalidation issued from ring 3 by a process the kernel lent the
VT-d unit to (guest/user/invbench.c): queued (one page descriptor + one
wait per round trip, or N page descriptors per wait, per invalidation; the
wait carries SW only, as QEMU 7.2 asserts on SW with IF) and register-based
(IVA + IOTLB register, IVT polled). In ring 3 these are the VMM's cost, not
the ring-0 emulator's: compare them with the ring-0 iommu-inv-* rows.
user-fastexit-{alone,with-qi} is one port-0x80 write (an exit the run loop
completes in C) from one core, alone and while a second core rings the
invalidation queue nonstop with full batches: one vCPU's long completion
must not hold up another's exits. Both vCPUs are busy in the second figure,
so on a 2-CPU host it also carries the host's scheduling.
"""
from __future__ import annotations

import re

from tools.bench.common import Row, have_qemu
from akvm.testing import Guest

NAMES = ("pio", "mmio", "cpuid", "ipi", "iommu", "edu", "user-shootdown", "user-edu",
         "user-iommu", "user-fastexit")
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
    rows = []
    for name, ns in akvm.items():
        # Batched invalidations from ring 3 are tens of ns: keep their digits.
        div, unit = (1, "ns/op") if name.startswith("user-iommu-inv-") else (1000, "us/op")
        rows.append(Row(f"guest bench {name}", unit, ns / div, "QEMU",
                        qemu[name] / div if name in qemu else None,
                        "guest-measured, ring 3" if name.startswith("user-")
                        else "guest-measured, ring 0"))
    return rows
