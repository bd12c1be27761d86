"""The bundled guest's device drivers (VT-d, edu, virtio) and software-interrupt tests.

Under QEMU (the reference the akvm device models are checked against):
intel-iommu + edu on q35, modern virtio-pci on q35, virtio-mmio (legacy and
version 2) on microvm. The same guest self-tests then run under akvm's own
models, and the software-interrupt tests (which QEMU cannot run on this host:
INT3 / INT n end KVM_RUN with an emulation failure) run under akvm only.
"""
import re

import pytest

from tests.integration.conftest import Echo
from tests.conftest import needs_kvm, needs_qemu
from akvm.base.exitcode import ExitCode

pytestmark = needs_kvm

TIMEOUT = 180

QEMU_VTD = ["-machine", "q35,kernel-irqchip=split",
            "-device", "intel-iommu,aw-bits=48,caching-mode=off", "-device", "edu"]

EDU_TESTS = {"edu-id", "edu-dma", "edu-msi", "edu-intx"}
IOMMU_TESTS = {"iommu-enable", "iommu-reg-inv", "iommu-qi", "iommu-qi-intr", "iommu-qi-error",
               "iommu-qi-batch", "iommu-passthrough", "iommu-translate", "iommu-3level",
               "iommu-fault", "iommu-psi", "iommu-dsi", "iommu-shootdown", "iommu-stale"}
VIRTIO_TESTS = {"virtio-blk", "virtio-console", "virtio-rng"}


def skipped(output: str) -> dict[str, str]:
    return dict(re.findall(r"^SKIP (\S+): (.*)$", output, re.M))


# --- QEMU ------------------------------------------------------------------------------

@needs_qemu
def test_iommu_and_edu_selftests_under_qemu(akvm_guest_factory):
    guest = akvm_guest_factory(vmm="qemu", cpus=2, args=QEMU_VTD, timeout=TIMEOUT)
    info = guest.command("iommu")
    assert "explicit device scopes" in info            # QEMU's DRHD lists its devices
    assert re.search(r"CAP  0x[0-9a-f]{16}: ND \d", info) and "ECAP 0x" in info
    result = guest.selftest("edu-*", "iommu-*")
    assert result.failed == {}
    assert skipped(result.output) == {}
    assert EDU_TESTS | IOMMU_TESTS <= set(result.passed)
    # QEMU's IOTLB caches: without an invalidation the DMA went to the old page.
    assert "used the stale translation" in result.output
    assert re.search(r"DMAR fault: write of 0xa004000 by 00:03\.0, reason 5", result.output)
    assert "translation on" in guest.command("iommu")


@needs_qemu
def test_iommu_and_edu_benchmarks_run_under_qemu(akvm_guest_factory):
    guest = akvm_guest_factory(vmm="qemu", cpus=1, args=QEMU_VTD, timeout=TIMEOUT)
    out = guest.command("bench iommu edu")
    for name in ("iommu-inv-reg-domain", "iommu-inv-reg-page", "iommu-inv-qi-1",
                 "iommu-inv-qi-batch254", "edu-dma-passthrough", "edu-dma-translated"):
        assert re.search(rf"^BENCH {name} iterations=\d+ cycles_per_op=\d+ ns_per_op=\d+",
                         out, re.M), out


@needs_qemu
def test_device_tests_skip_cleanly_without_the_devices(akvm_guest_factory):
    guest = akvm_guest_factory(vmm="qemu", cpus=1, timeout=TIMEOUT)
    result = guest.selftest("edu-*", "iommu-*", "virtio-*")
    assert result.passed == [] and result.failed == {}
    assert set(skipped(result.output)) == EDU_TESTS | IOMMU_TESTS | VIRTIO_TESTS
    assert f"{len(EDU_TESTS | IOMMU_TESTS | VIRTIO_TESTS)} skipped" in result.output


@needs_qemu
def test_virtio_pci_selftests_under_qemu(akvm_guest_factory, disk, tmp_path):
    before = disk.read_bytes()
    sock = tmp_path / "console.sock"
    echo = Echo(sock)
    echo.start()
    args = ["-machine", "q35",
            "-drive", f"if=none,id=d0,file={disk},format=raw",
            "-device", "virtio-blk-pci,drive=d0,disable-legacy=on",
            "-device", "virtio-rng-pci,disable-legacy=on",
            "-device", "virtio-serial-pci,disable-legacy=on",
            "-chardev", f"socket,id=c0,path={sock},server=on,wait=off",
            "-device", "virtconsole,chardev=c0"]
    guest = akvm_guest_factory(vmm="qemu", cpus=2, args=args, timeout=TIMEOUT)
    result = guest.selftest(*sorted(VIRTIO_TESTS))
    assert result.failed == {}
    assert VIRTIO_TESTS <= set(result.passed)
    assert "echo matched" in result.output
    assert b"virtio-console echo" in echo.received
    listing = guest.command("virtio")
    for kind in ("block", "rng", "console"):
        assert re.search(rf"virtio {kind}\s+pci \S+, ready", listing), listing
    guest.close()
    assert disk.read_bytes() == before                 # the block test puts the sectors back


@needs_qemu
@pytest.mark.parametrize("version", ["legacy", "modern"])
def test_virtio_mmio_selftests_under_qemu_microvm(akvm_guest_factory, disk, tmp_path, version):
    out = tmp_path / "console.out"
    args = ["-M", "microvm",
            "-drive", f"if=none,id=d0,file={disk},format=raw",
            "-device", "virtio-blk-device,drive=d0",
            "-device", "virtio-rng-device",
            "-device", "virtio-serial-device",
            "-chardev", f"file,id=c0,path={out}",
            "-device", "virtconsole,chardev=c0"]
    if version == "modern":
        args += ["-global", "virtio-mmio.force-legacy=false"]
    guest = akvm_guest_factory(vmm="qemu", cpus=1, args=args, timeout=TIMEOUT)
    listing = guest.command("virtio")
    tag = "(legacy v1)" if version == "legacy" else "(v2)"
    assert len(re.findall(rf"mmio 0x[0-9a-f]+ {re.escape(tag)}", listing)) == 3, listing
    result = guest.selftest(*sorted(VIRTIO_TESTS))
    assert result.failed == {}
    assert VIRTIO_TESTS <= set(result.passed)
    assert "no echo within 1 s" in result.output     # a file does not talk back
    guest.close()
    assert b"virtio-console echo" in out.read_bytes()


@needs_qemu
def test_software_interrupt_tests_are_not_default(akvm_guest_factory):
    guest = akvm_guest_factory(vmm="qemu", cpus=1, timeout=TIMEOUT)
    listing = guest.command("selftest list").splitlines()
    assert "int3" in listing and "intn" in listing     # listed without "(default)"
    assert "edu-dma (default)" in listing and "virtio-blk (default)" in listing


# --- the same guest under akvm -----------------------------------------------------------

def test_iommu_and_edu_selftests_under_akvm(akvm_guest_factory):
    guest = akvm_guest_factory(cpus=2, args=["--device", "edu", "--iommu", "vtd"], timeout=TIMEOUT)
    assert "INCLUDE_PCI_ALL" in guest.command("iommu")
    result = guest.selftest("edu-*", "iommu-*")
    assert result.failed == {}
    assert EDU_TESTS | IOMMU_TESTS <= set(result.passed)
    assert "used the stale translation" in result.output


def test_software_interrupts_under_akvm(akvm_guest_factory):
    guest = akvm_guest_factory(cpus=1, timeout=TIMEOUT)
    result = guest.selftest("int3", "intn")
    assert result.failed == {}
    assert {"int3", "intn"} <= set(result.passed)


@pytest.mark.parametrize("variant,code", [("int", ExitCode.RESET),
                                          ("int0", ExitCode.TRIPLE_FAULT)])
def test_akaros_style_reboot_under_akvm(akvm_guest_factory, variant, code):
    guest = akvm_guest_factory(cpus=1, timeout=TIMEOUT)
    guest.send(f"reboot {variant}\r")
    assert guest.wait_exit() == code


def test_coherence_checker_reports_the_missing_flush(akvm_guest_factory):
    """The guest's iommu-stale test skips an invalidation on purpose; check=on must say so."""
    guest = akvm_guest_factory(cpus=1, args=["--device", "edu", "--iommu", "vtd,check=on"],
                               timeout=TIMEOUT)
    result = guest.selftest("iommu-stale")
    assert "iommu-stale" in result.passed
    # akvm logs on stderr, which shares the terminal with the serial console.
    assert "akvm: iommu: check: stale IOTLB entry #1" in guest.serial_log
