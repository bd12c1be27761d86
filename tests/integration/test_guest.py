"""The bundled guest kernel's self-tests, run through the pytest plugin under akvm and QEMU."""
import pytest

from tests.conftest import needs_kvm, needs_qemu
from akvm.base.exitcode import ExitCode

pytestmark = needs_kvm

# Generous: guest ring-0 code is emulated on this host (see README).
TIMEOUT = 180


@pytest.mark.parametrize("cpus", [1, 2])
def test_selftests_pass_under_akvm(akvm_guest_factory, cpus):
    guest = akvm_guest_factory(cpus=cpus, timeout=TIMEOUT)
    result = guest.selftest()
    assert result.failed == {}
    assert {"memmap", "acpi", "madt", "ipi", "shootdown", "timer", "pci", "serial", "pit",
            "rtc"} <= set(result.passed)


@pytest.mark.akvm_guest(cpus=2, timeout=TIMEOUT)
def test_monitor_commands(akvm_guest):
    cores = akvm_guest.command("cores")
    assert "2 cores" in cores or "cores online: 2" in cores, cores
    info = akvm_guest.command("kerninfo")
    assert "TSC" in info
    assert "GenuineIntel" in info  # the vendor akvm presents (see akvm.vcpu.cpu.configure_cpuid)
    assert "00:00.0" in akvm_guest.command("pci")
    assert "APIC" in akvm_guest.command("acpi")
    assert "Unknown command 'frobnicate'" in akvm_guest.command("frobnicate")


@pytest.mark.akvm_guest(timeout=TIMEOUT)
def test_poweroff_from_the_monitor(akvm_guest):
    akvm_guest.send("poweroff\r")
    assert akvm_guest.wait_exit() == ExitCode.POWEROFF


@pytest.mark.akvm_guest(timeout=TIMEOUT)
def test_reboot_from_the_monitor(akvm_guest):
    akvm_guest.send("reboot\r")
    assert akvm_guest.wait_exit() == ExitCode.RESET


def test_akvm_run_without_kernel_boots_the_guest(akvm_guest_factory):
    from akvm import guest_kernel
    guest = akvm_guest_factory(kernel=guest_kernel.build(), timeout=TIMEOUT)
    guest.close()
    import pexpect, sys
    child = pexpect.spawn(sys.executable, ["-m", "akvm", "run"], timeout=TIMEOUT)
    child.expect(r"guest\(Core 0\)> ")
    child.sendcontrol("a")
    child.send("x")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == ExitCode.POWEROFF


@needs_qemu
@pytest.mark.parametrize("cpus", [1, 2])
def test_selftests_pass_under_qemu(akvm_guest_factory, cpus):
    guest = akvm_guest_factory(vmm="qemu", cpus=cpus, timeout=TIMEOUT)
    result = guest.selftest()
    assert result.failed == {}
    assert len(result.passed) >= 10


@pytest.mark.akvm_guest(args=["--stats"], timeout=TIMEOUT)
def test_xsave_state_round_trips_through_completion(akvm_guest):
    """x87, SSE and AVX state with several feature bitmaps, through akvm's completer."""
    result = akvm_guest.selftest("xsave")
    assert result.passed == ["xsave"], result.output
    akvm_guest.close()
    log = akvm_guest.serial_log
    assert "completions: " in log
    if "completions: none" not in log:      # kvm_pvm: KVM gave these up and akvm finished them
        assert "xrstor64" in log and "xgetbv 1" in log
