"""Upstream Akaros finds akvm's e1000 (--device e1000,net=user), with and without VT-d.

Its etherigbe driver reads the MAC from the EEPROM by bit-banging EECD (and
refuses an image whose words do not sum to 0xBABA), resets the MAC, probes
all 32 MDIO addresses for the PHY, restarts autonegotiation and routes INTA#
through the IOAPIC from the MP table; then it prints its "#l0: i82543" line.
Nothing opens #ether.0 at boot (the initramfs has no programs), so the link
is seen from akvm's side: up, after the driver's autonegotiation.
"""
import os
import re

import pytest

from tests.conftest import needs_kvm

AKAROS = os.environ.get("AKVM_AKAROS_KERNEL", "")
pytestmark = [needs_kvm, pytest.mark.skipif(not os.path.isfile(AKAROS),
                                            reason="set AKVM_AKAROS_KERNEL to an upstream Akaros kernel")]
MAC = "02:41:4b:56:4d:01"


@pytest.mark.parametrize("iommu", [[], ["--iommu", "vtd"]], ids=["no-iommu", "vtd"])
def test_akaros_finds_the_e1000(akvm_guest_factory, iommu):
    from tests.integration.test_net import libslirp_or_skip
    libslirp_or_skip()
    guest = akvm_guest_factory(kernel=AKAROS, cpus=2, memory="1G", prompt=r"ROS\(Core 0\)> ",
                               timeout=300, args=["--device", "e1000,net=user", "--stats", *iommu],
                               wait_prompt=False)
    guest.expect(r"igbe/e1000 driver found 0x8086:100e at 00:(\w\w)\.0")
    slot = guest.child.match.group(1).decode()
    guest.expect(r"IRQ (\d+), vector \d+ \(0x[0-9a-f]+\), type ioapic")
    irq = guest.child.match.group(1).decode()
    guest.expect(rf"#l0: i82543: 1000Mbps port 0x([0-9a-f]+) irq {irq}: {MAC}")
    guest.close()                       # the driver is done with the device: PHY, MAC, IRQ
    log = guest.serial_log
    assert not re.search(r"panic|assertion failed|Unable to build IOAPIC route", log, re.I), log
    assert int(irq) >= 16 and slot != "00"
    stats = re.search(r"^\s*e1000-0: (.*)$", log, re.M)
    assert stats, log[-3000:]
    assert re.search(r"0 errors; \d+ TDT/RDT writes in C; \d+ interrupts; link up, "
                     r"[1-9]\d* autonegotiations", stats.group(1))
