"""Upstream Akaros finds akvm's e1000 (--device e1000,net=user), with and without VT-d.

Its etherigbe driver reads the MAC from the EEPROM by bit-banging EECD (and
refuses an image whose words do not sum to 0xBABA), resets the MAC, probes
all 32 MDIO addresses for the PHY, restarts autonegotiation and routes INTA#
through the IOAPIC from the MP table; then it prints its "#l0: i82543" line.
Nothing opens #ether.0 at boot (the initramfs has no programs), so the link
is seen from akvm's side: up, after the driver's autonegotiation. Saved at
the monitor then, the machine resumes in a new akvm with the e1000 as the
driver left it.
"""
import os
import re

import pytest

from tests.conftest import needs_kvm

AKAROS = os.environ.get("AKVM_AKAROS_KERNEL", "")
pytestmark = [needs_kvm, pytest.mark.skipif(not os.path.isfile(AKAROS),
                                            reason="set AKVM_AKAROS_KERNEL to an upstream Akaros kernel")]
MAC = "02:41:4b:56:4d:01"
MONITOR = r"ROS\(Core 0\)> "
STATS = (r"^\s*e1000-0: .*0 errors; \d+ TDT/RDT writes in C \(\d+ sent by the vCPU\); "
         r"\d+ interrupts; link up, "
         r"([1-9]\d*) autonegotiations")


@pytest.mark.parametrize("iommu", [[], ["--iommu", "vtd"]], ids=["no-iommu", "vtd"])
def test_akaros_finds_the_e1000(akvm_guest_factory, iommu, tmp_path):
    from tests.integration.test_net import libslirp_or_skip
    libslirp_or_skip()
    guest = akvm_guest_factory(kernel=AKAROS, cpus=2, memory="1G", prompt=MONITOR,
                               timeout=300, args=["--device", "e1000,net=user", "--stats", *iommu],
                               control=tmp_path / "control.sock", wait_prompt=False)
    guest.expect(r"igbe/e1000 driver found 0x8086:100e at 00:(\w\w)\.0")
    slot = guest.child.match.group(1).decode()
    guest.expect(r"IRQ (\d+), vector \d+ \(0x[0-9a-f]+\), type ioapic")
    irq = guest.child.match.group(1).decode()
    guest.expect(rf"#l0: i82543: 1000Mbps port 0x([0-9a-f]+) irq {irq}: {MAC}")
    guest.expect("Hit ctrl-g to enter the monitor")
    guest.send("\x07")
    guest.expect(MONITOR)               # the driver is done with the device: PHY, MAC, IRQ
    guest.snapshot(tmp_path / "snap")
    guest.close()
    log = guest.serial_log
    assert not re.search(r"panic|assertion failed|Unable to build IOAPIC route", log, re.I), log
    assert int(irq) >= 16 and slot != "00"
    stats = re.search(STATS, log, re.M)
    assert stats, log[-3000:]

    restored = akvm_guest_factory(restore=tmp_path / "snap", prompt=MONITOR, timeout=120,
                                  args=["--stats"])
    assert "PID" in restored.command("ps")
    restored.close()
    log = restored.serial_log
    assert not re.search(r"panic|assertion failed", log, re.I), log
    again = re.search(STATS, log, re.M)             # the PHY and counters as the driver left them
    assert again and again.group(1) == stats.group(1), log[-3000:]
