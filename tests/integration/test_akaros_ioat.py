"""Upstream Akaros's own DMA driver on akvm's I/OAT model: with and without VT-d.

Akaros probes every 8086:2021 function at boot (its ioatdma port: MSI-X, a channel
reset, a 2000-byte self-test copy) and #cbdma's ktest copies 64 bytes through 00:04.3,
which the monitor runs with `kfunc open_ktest`; the function returns the report's
sized_alloc and `hexdump` shows its text 32 bytes further on.

Each probe costs Akaros about 25-40 s of emulated ring 0 on this host (it builds and
frees a 65536-descriptor ring), and so does every ktest, so the suite keeps to two
boots: without an IOMMU, function 0 alone (how Akaros finds the slot): its probe and
self-test; behind VT-d, functions 0 and 3 (the one #cbdma uses): both probes and the
ktest. All eight are the default (README: what they cost).

Nothing of Akaros is in this repository: AKVM_AKAROS_KERNEL names the kernel.
"""
import os
import re

import pytest

from akvm.base.exitcode import ExitCode
from tests.conftest import needs_kvm

AKAROS = os.environ.get("AKVM_AKAROS_KERNEL", "")
pytestmark = [needs_kvm, pytest.mark.skipif(not os.path.isfile(AKAROS),
                                            reason="set AKVM_AKAROS_KERNEL to an upstream Akaros kernel")]
MONITOR = r"ROS\(Core 0\)> "
# ioatdma's complaints (dev_err prints "[dev]: ..."); "failed" anywhere but Akaros's own
# VMM, which needs VT-x ("vmm_init failed, ret -95" on every boot here)
FAILURES = ("[dev]:", "Self-test", "Too few msix vec", "Failed to setup IOAT MSI-X",
            "MSIX setup failed", "didn't get an MSIX", "kernel warning", "Channel halted")
HEX_LINE = re.compile(r"^[0-9a-f]{16}: ((?:[0-9a-f]{2} ){1,16})", re.M)


def report(text: str) -> str:
    """The bytes a `hexdump` printed, as text up to the first NUL."""
    data = bytes(int(b, 16) for line in HEX_LINE.findall(text) for b in line.split())
    return data.split(b"\0", 1)[0].decode(errors="replace")


def boot(akvm_guest_factory, functions: str, iommu: list[str]):
    """Akaros to its monitor, its log checked for the probe of each function."""
    guest = akvm_guest_factory(kernel=AKAROS, cpus=2, memory="1G", prompt=MONITOR, timeout=900,
                               args=["--stats", "--device", f"ioat,functions={functions}", *iommu],
                               wait_prompt=False)
    guest.expect("Hit ctrl-g to enter the monitor")
    log = guest.serial_log
    assert "ioatdma: Intel(R) QuickData Technology Driver 5.00" in log
    fns = [int(f) for f in functions.split("+")]
    for f in fns:
        assert f"MSI-X irq: (00,04,{f})" in log
    assert len(re.findall(r"IRQ 0, vector \d+ \(0x[0-9a-f]+\), type msi-x", log)) == len(fns)
    assert not [s for s in FAILURES if s in log], log
    assert not [line for line in log.splitlines()
                if "failed" in line and not line.startswith("vmm_init failed")], log
    guest.send("\x07")
    guest.expect(MONITOR)
    return guest


def stats_after_reboot(guest) -> str:
    guest.send("reboot\r")
    assert guest.wait_exit(timeout=120) == ExitCode.RESET
    return guest.serial_log


def test_akaros_probes_an_ioat_function_without_an_iommu(akvm_guest_factory):
    """Direct DMA: the probe's NULL descriptor and 2000-byte self-test copy, done in C."""
    stats = stats_after_reboot(boot(akvm_guest_factory, "0", []))
    assert re.search(r"ioat 00:04.0: 2 descriptors, 2000 bytes, 0 errors, \d+ interrupts; "
                     r"engine rounds \d+ in C, 0 in Python", stats), stats[-3000:]


def test_akaros_probes_the_ioat_functions_and_cbdma_copies_behind_vtd(akvm_guest_factory):
    guest = boot(akvm_guest_factory, "0+3", ["--iommu", "vtd"])
    assert "IOMMU: enabling translation" in guest.serial_log
    out = guest.command("kfunc open_ktest", timeout=600)
    ret = int(re.search(r"open_ktest \(might have\) returned (0x[0-9a-f]+)", out).group(1), 16)
    text = report(guest.command(f"hexdump 0 {ret + 32:#x} 200"))
    src = re.search(r"src_str \(after copy\): (\S+)", text).group(1)
    dst = re.search(r"dst_str \(after copy\): (\S+)", text).group(1)
    assert "Copy Size: 64" in text and "dstfill: X" in text
    assert src == dst == "1" * 20, text
    stats = stats_after_reboot(guest)
    # boot: NULL + 2000 bytes per function; ktest: NULL + 64 bytes on 00:04.3, all in C
    # (VT-d gives the kernel's devices pass-through contexts)
    assert re.search(r"ioat 00:04.0: 2 descriptors, 2000 bytes, 0 errors, \d+ interrupts; "
                     r"engine rounds \d+ in C, 0 in Python", stats), stats[-3000:]
    assert re.search(r"ioat 00:04.3: 4 descriptors, 2064 bytes, 0 errors, \d+ interrupts; "
                     r"engine rounds \d+ in C, 0 in Python", stats), stats[-3000:]
