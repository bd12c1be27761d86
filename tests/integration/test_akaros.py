"""Upstream Akaros under akvm: boot to the monitor, answer commands, reboot cleanly.

Nothing of Akaros is in this repository. Build its kernel (github brho/akaros,
defconfig) and point AKVM_AKAROS_KERNEL at it; the test skips otherwise.
"""
import os
import re

import pytest

from tests.conftest import needs_kvm
from akvm.base.exitcode import ExitCode

AKAROS = os.environ.get("AKVM_AKAROS_KERNEL", "")
pytestmark = [needs_kvm, pytest.mark.skipif(not os.path.isfile(AKAROS),
                                            reason="set AKVM_AKAROS_KERNEL to an upstream Akaros kernel")]
MONITOR = r"ROS\(Core 0\)> "


def test_akaros_boots_to_its_monitor(akvm_guest_factory):
    guest = akvm_guest_factory(kernel=AKAROS, cpus=2, memory="1G", prompt=MONITOR, timeout=300,
                               args=["--stats"], wait_prompt=False)
    guest.expect("Hit ctrl-g to enter the monitor")
    guest.send("\x07")
    guest.expect(MONITOR)
    assert "kerninfo" in guest.command("help")
    assert "Special kernel symbols" in guest.command("kerninfo")
    assert "PID" in guest.command("ps")
    log = guest.serial_log
    assert "Number of Cores Detected: 2" in log
    assert not re.search(r"panic|assertion failed", log, re.I), log
    guest.send("reboot\r")
    assert guest.wait_exit() == ExitCode.RESET
