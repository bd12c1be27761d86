"""The bundled guest kernel's I/OAT driver (guest/ioat.c) on akvm's model: the ioat-*
self-tests with and without VT-d, and a process that owns a channel through the IOMMU
(user/ioatdma.c): copies between its own pages, a munmap the IOTLB shootdown makes
fault, and under `iommu noflush` the stale entry that akvm's coherence checker reports."""
import re

import pytest

from akvm.testing import parse_selftest
from tests.conftest import needs_kvm

pytestmark = needs_kvm

TIMEOUT = 180
IOAT = ["--device", "ioat,functions=0+3"]
KERNEL_TESTS = {"ioat-id", "ioat-copy", "ioat-append", "ioat-msix", "ioat-intx",
                "ioat-suspend", "ioat-errors", "ioat-vtd"}


def test_selftests_without_an_iommu(akvm_guest_factory):
    guest = akvm_guest_factory(cpus=2, timeout=TIMEOUT, args=IOAT)
    result = guest.selftest("ioat-*")
    assert result.failed == {}
    assert set(result.passed) == KERNEL_TESTS - {"ioat-vtd"}
    assert set(result.skipped) == {"ioat-vtd"}
    assert "ioat: 2 functions at 00:04, CBVER 0x33, XFERCAP 2^20" in guest.serial_log


def test_selftests_and_a_process_owner_behind_vtd(akvm_guest_factory):
    guest = akvm_guest_factory(cpus=2, timeout=TIMEOUT,
                               args=[*IOAT, "--iommu", "vtd,check=on", "--stats"])
    result = guest.selftest("ioat-*", "user-ioat-copy", "user-ioat-munmap", "user-ioat-noflush")
    assert result.failed == {}
    assert set(result.passed) == KERNEL_TESTS | {"user-ioat-copy", "user-ioat-munmap",
                                                 "user-ioat-noflush"}
    log = guest.serial_log
    assert "user-ioat-munmap: DMAR fault: write of" in log and "by 00:04.3" in log
    assert re.search(r"check: stale IOTLB entry #\d+: domain \d+ device 00:04\.3", log), log
    # The process's copies ran in C from the IOTLB unless the checker must see every hit:
    # with check=on they are Python's; the kernel's (pass-through) ones are C's.
    guest.close()
    stats = guest.serial_log
    m = re.search(r"ioat 00:04\.0: (\d+) descriptors.*engine rounds (\d+) in C", stats)
    assert m and int(m.group(1)) > 1000 and int(m.group(2)) > 0, stats[-2000:]


def test_a_process_owners_copies_run_in_c_from_the_iotlb(akvm_guest_factory):
    """Without the checker, a translated channel's IOTLB hits are served in C."""
    guest = akvm_guest_factory(cpus=2, timeout=TIMEOUT, args=[*IOAT, "--iommu", "vtd", "--stats"])
    result = guest.selftest("user-ioat-copy", "user-ioat-munmap")
    assert result.failed == {} and len(result.passed) == 2
    guest.close()
    m = re.search(r"ioat 00:04\.3: (\d+) descriptors, (\d+) bytes, (\d+) errors.*"
                  r"engine rounds (\d+) in C, (\d+) in Python", guest.serial_log)
    assert m, guest.serial_log[-2000:]
    descriptors, _, errors, in_c, in_python = map(int, m.groups())
    assert errors == 1 and in_c > 0 and descriptors == 7, m.group(0)     # 1 + 5, 1 (+ 1 faulted)


def test_a_snapshot_in_the_middle_of_the_ioat_selftests(akvm_guest_factory, tmp_path):
    """Saved while the ioat-* self-tests run, resumed in a new akvm, which finishes them."""
    first = akvm_guest_factory(cpus=2, timeout=TIMEOUT, args=IOAT, control=tmp_path / "c.sock")
    first.send("selftest ioat-*\r")
    first.expect("PASS ioat-copy")
    client = first.control_client()
    client.execute("stop")
    first.snapshot(tmp_path / "snap")
    client.execute("quit")
    assert first.wait_exit() == 0
    before = first.serial_log
    second = akvm_guest_factory(restore=tmp_path / "snap", timeout=TIMEOUT, wait_prompt=False)
    second.expect(r"\d+ passed, \d+ failed", timeout=TIMEOUT)
    text = before[before.index("selftest ioat"):] + second.serial_log
    result = parse_selftest(text[:text.index(" failed") + len(" failed")])
    assert result.failed == {}, result.failed
    assert set(result.passed) == KERNEL_TESTS - {"ioat-vtd"}
