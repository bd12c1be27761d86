"""User processes in the bundled guest kernel (guest/user.c, guest/user/): run, spawn,
the user-* self-tests and the ring-3 benchmarks, under akvm and QEMU."""
import re

import pytest

from tests.conftest import needs_kvm, needs_qemu

pytestmark = needs_kvm

# Generous: guest ring-0 code is emulated on this host (see guest/README.md).
TIMEOUT = 180
USER_TESTS = {"user-hello", "user-syscalls", "user-smp", "user-fault"}


@pytest.mark.akvm_guest(cpus=2, timeout=TIMEOUT)
def test_run_prints_the_exit_status(akvm_guest):
    out = akvm_guest.command("run hello 5 two")
    assert "hello from user mode: pid " in out, out
    assert "argc 3 [5] [two]" in out, out
    assert re.search(r"pid \d+ \(hello\): exit status 5\b", out), out
    out = akvm_guest.command("run fault pf")
    assert "user fault: pid" in out and "#PF page fault" in out, out
    assert "address 0x9000000000" in out, out
    assert re.search(r"\(fault\): exit status 142 \(killed: #PF page fault\)", out), out
    # The kernel survived: the next program runs, and unknown programs are refused.
    assert re.search(r"\(hello\): exit status 0", akvm_guest.command("run hello")), out
    assert "no such program" in akvm_guest.command("run nosuch")


@pytest.mark.akvm_guest(cpus=2, timeout=TIMEOUT)
def test_run_on_another_core_and_spawn(akvm_guest):
    out = akvm_guest.command("run -c 1 hello")
    assert "on core 1" in out and "exit status 0" in out, out
    out = akvm_guest.command("spawn -c 1 smp 2")
    m = re.search(r"pid (\d+) \(smp\) started on core 1", out)
    assert m, out
    ps = akvm_guest.command("ps")
    assert re.search(rf"^{m.group(1)}\s+running\s+1 smp", ps, re.M), ps
    # A second process on core 0 at the same time: each sees two running.
    out = akvm_guest.command("run smp 2")
    assert re.search(r"smp: pid \d+ on core 0 saw 2 running", out), out
    assert "exit status 0" in out, out
    done = rf"pid {m.group(1)} \(smp\) on core 1: exit status 0"
    if not re.search(done, out):    # it may end before or after the prompt
        akvm_guest.expect(done)


@pytest.mark.parametrize("cpus", [1, 2])
def test_user_selftests_under_akvm(akvm_guest_factory, cpus):
    guest = akvm_guest_factory(cpus=cpus, timeout=TIMEOUT)
    result = guest.selftest("user-*")
    assert result.failed == {}
    if cpus == 1:
        assert set(result.passed) == USER_TESTS - {"user-smp"}
        assert "user-smp" in result.skipped
    else:
        assert set(result.passed) == USER_TESTS


@pytest.mark.akvm_guest(cpus=1, timeout=TIMEOUT)
def test_user_probe(akvm_guest):
    """Not a default test: it reports how ring 0 <-> ring 3 transitions behave here."""
    result = akvm_guest.selftest("user-probe")
    assert result.passed == ["user-probe"], result.output
    assert "3 timer interrupts from ring 3" in result.output


@pytest.mark.akvm_guest(cpus=1, timeout=TIMEOUT)
def test_user_benchmarks(akvm_guest):
    out = akvm_guest.command("bench user-pio user-syscall user-loop")
    for name in ("user-pio", "user-syscall", "user-insn-loop-1k"):
        assert re.search(rf"^BENCH {name} iterations=\d+ cycles_per_op=\d+ ns_per_op=\d+", out,
                         re.M), out


@needs_qemu
@pytest.mark.parametrize("cpus", [1, 2])
def test_user_selftests_under_qemu(akvm_guest_factory, cpus):
    guest = akvm_guest_factory(vmm="qemu", cpus=cpus, timeout=TIMEOUT)
    result = guest.selftest("user-*")
    assert result.failed == {}
    assert set(result.passed) >= USER_TESTS - {"user-smp"}
    out = guest.command("run hello")
    assert "exit status 0" in out, out
