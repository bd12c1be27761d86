"""`--iommu vtd` and `--device edu` under KVM: the guest finds the DMAR and the edu device,
the statistics report the unit, and bad options get one line."""
import os
import re

import pytest

from tests.conftest import needs_kvm
from tests.unit.test_cli import akvm, assert_one_line_error

pytestmark = needs_kvm

TIMEOUT = 180


def test_guest_sees_the_dmar_and_the_edu_device(akvm_guest_factory):
    guest = akvm_guest_factory(args=["--iommu", "vtd", "--device", "edu", "--stats"],
                               timeout=TIMEOUT)
    acpi = guest.command("acpi")
    assert "DMAR at" in acpi and "checksum BAD" not in acpi
    assert re.search(r"DMAR: host address width 48\b.* 1 DRHD", acpi), acpi
    assert "DRHD registers at 0xfed90000" in acpi and "INCLUDE_PCI_ALL" in acpi
    pci = guest.command("pci")
    assert "1234:11e8" in pci
    guest.close()
    assert "iommu: disabled" in guest.serial_log           # --stats at exit


def test_aw39_is_what_the_dmar_says(akvm_guest_factory):
    guest = akvm_guest_factory(args=["--iommu", "vtd,aw=39,check=on"], timeout=TIMEOUT)
    assert re.search(r"DMAR: host address width 39\b", guest.command("acpi"))


def test_without_iommu_there_is_no_dmar(akvm_guest_factory):
    guest = akvm_guest_factory(args=["--device", "edu"], timeout=TIMEOUT)
    assert "DMAR at" not in guest.command("acpi")
    assert "1234:11e8" in guest.command("pci")


@pytest.mark.parametrize("args,fragment", [
    (["--iommu", "amd"], "no such IOMMU"),
    (["--iommu", "vtd,aw=40"], "aw=40"),
    (["--iommu", "vtd,check=maybe"], "check=maybe"),
    (["--iommu", "vtd,bogus=1"], "unknown option 'bogus'"),
    (["--device", "edu,dma_bits=99"], "dma_bits=99"),
])
def test_bad_iommu_options(tiny_kernel, args, fragment):
    assert_one_line_error(akvm("run", "--kernel", str(tiny_kernel), *args), fragment)


def test_tiny_kernel_runs_with_the_iommu(tiny_kernel):
    r = akvm("run", "--kernel", str(tiny_kernel), "--cmdline", "p", "--iommu", "vtd",
             "--device", "edu", "--stats")
    assert r.returncode == 0, r.stderr
    assert "iommu: disabled, 0 translations" in r.stderr


AKAROS = os.environ.get("AKVM_AKAROS_KERNEL", "")


@pytest.mark.skipif(not os.path.isfile(AKAROS),
                    reason="set AKVM_AKAROS_KERNEL to an upstream Akaros kernel")
def test_upstream_akaros_enables_translation(akvm_guest_factory):
    """Akaros accepts the unit's CAP/ECAP, programs it with register-based
    invalidation, polls GSTS before it has an IDT, and goes on to its monitor."""
    guest = akvm_guest_factory(kernel=AKAROS, cpus=2, memory="1G", prompt=r"ROS\(Core 0\)> ",
                               timeout=300, args=["--iommu", "vtd", "--device", "edu", "--stats"],
                               wait_prompt=False)
    guest.expect("IOMMU: enabling translation")
    guest.expect("Hit ctrl-g to enter the monitor")
    guest.send("\x07")
    guest.expect(r"ROS\(Core 0\)> ")
    log = guest.serial_log
    assert "No supported IOMMUs" not in log and "HAW mismatch" not in log
    assert not re.search(r"panic|assertion failed", log, re.I), log
    guest.close()
    assert "iommu: enabled" in guest.serial_log
    assert "register context global 1, register iotlb global 1" in guest.serial_log


def test_mp_table_routes_the_edu_intx():
    """Akaros takes PCI interrupt routing from the MP table: the edu's INTA# must be there."""
    from tests.unit.test_mptable import parse
    from akvm.config import MachineConfig
    from akvm.devicetable import parse_device
    from akvm.machine import Machine
    from akvm import guest_kernel
    m = Machine.build(MachineConfig(kernel=str(guest_kernel.build()), serial="none",
                                    devices=[parse_device("edu")]))
    try:
        routes = m.pci.intx_routes()
        assert routes, "edu has an INTx pin"
        _, entries = parse(m.memory)
        pci = {(e[5], e[7]) for t, e in entries if t == 3 and e[4] == 0}     # PCI bus id 0
        assert {((r.device << 2) | r.pin, r.ioapic_pin) for r in routes} <= pci
    finally:
        m.serial.close()
