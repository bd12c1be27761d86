"""Upstream Akaros under akvm: boot to the monitor, answer commands, reboot cleanly; a
snapshot taken at the monitor resumes there and answers.

Nothing of Akaros is in this repository. Build its kernel (github brho/akaros,
defconfig) and point AKVM_AKAROS_KERNEL at it; the tests skip otherwise.
"""
import os
import re

import pytest

from tests.conftest import needs_kvm
from akvm.base.exitcode import ExitCode
from akvm.testing import Guest

AKAROS = os.environ.get("AKVM_AKAROS_KERNEL", "")
pytestmark = [needs_kvm, pytest.mark.skipif(not os.path.isfile(AKAROS),
                                            reason="set AKVM_AKAROS_KERNEL to an upstream Akaros kernel")]
MONITOR = r"ROS\(Core 0\)> "


@pytest.fixture(scope="module")
def akaros(tmp_path_factory):
    """Akaros booted once (about 11 s) to its monitor, and saved there."""
    d = tmp_path_factory.mktemp("akaros")
    guest = Guest(AKAROS, cpus=2, memory="1G", prompt=MONITOR, timeout=300, args=["--stats"],
                  control=d / "control.sock")
    guest.start(wait_prompt=False)
    try:
        guest.expect("Hit ctrl-g to enter the monitor")
        guest.send("\x07")
        guest.expect(MONITOR)
        summary = guest.snapshot(d / "snap")
        yield guest, d / "snap", summary
    finally:
        guest.close()


def test_akaros_boots_to_its_monitor(akaros):
    guest, _, _ = akaros
    assert "kerninfo" in guest.command("help")
    assert "Special kernel symbols" in guest.command("kerninfo")
    assert "PID" in guest.command("ps")
    log = guest.serial_log
    assert "Number of Cores Detected: 2" in log
    assert not re.search(r"panic|assertion failed", log, re.I), log
    guest.send("reboot\r")
    assert guest.wait_exit() == ExitCode.RESET


def test_akaros_snapshot_resumes_at_its_monitor(akaros, akvm_guest_factory):
    _, snap, summary = akaros
    # Akaros zeroes far more memory than it fills: only pages holding data take disk.
    assert summary["disk_usage"] <= summary["ram_touched"] + (1 << 20)
    guest = akvm_guest_factory(restore=snap, prompt=MONITOR, timeout=120)
    assert "Special kernel symbols" in guest.command("kerninfo")
    assert "PID" in guest.command("ps")
    assert not re.search(r"panic|assertion failed", guest.serial_log, re.I), guest.serial_log
    guest.send("reboot\r")
    assert guest.wait_exit() == ExitCode.RESET
