"""User processes in the bundled guest kernel (guest/user.c, guest/user/): run, spawn,
the user-* self-tests and the ring-3 benchmarks, under akvm and QEMU."""
import re

import pytest

from tests.conftest import needs_kvm, needs_qemu

pytestmark = needs_kvm

# Generous: guest ring-0 code is emulated on this host (see guest/README.md).
TIMEOUT = 180
USER_TESTS = {"user-hello", "user-syscalls", "user-smp", "user-fault", "user-cores",
              "user-shootdown"}
TWO_CORE_TESTS = {"user-smp", "user-cores", "user-shootdown"}     # SKIP with one core


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
    assert re.search(rf"^{m.group(1)}\s+running\s+1\s+2 smp", ps, re.M), ps  # cores mask 0x2
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
        assert set(result.passed) == USER_TESTS - TWO_CORE_TESTS
        assert set(result.skipped) == TWO_CORE_TESTS
    else:
        assert set(result.passed) == USER_TESTS
        check_multicore_output(result.output)


def check_multicore_output(out):
    """user-cores and user-shootdown: what the extra core did, and who faulted where."""
    assert re.search(r"mcp: pid \d+: core 1 in ring 3 \(extra core 1\), 2 cores in the process",
                     out), out
    assert re.search(r"mcp: pid \d+: 2 cores running, exiting from core 0", out), out
    m = re.search(r"user-shootdown: core 0 unmapped (0x[0-9a-f]+); core 1 acknowledged (\d+) "
                  r"shootdown IPI\(s\), then faulted there", out)
    assert m and int(m.group(2)) >= 1, out
    assert re.search(rf"user fault: pid \d+ \(mcp\) on core 1: #PF page fault at rip 0x[0-9a-f]+, "
                     rf"address {m.group(1)} \(not present read\): killed", out), out


@pytest.mark.akvm_guest(cpus=2, timeout=TIMEOUT)
def test_process_on_two_cores_from_the_monitor(akvm_guest):
    """mcp: core_request starts a second core in the same address space; exit stops it."""
    out = akvm_guest.command("run mcp exit 2")
    assert re.search(r"\(mcp\): exit status 0", out), out
    # The core went back to idle: it takes the next process.
    out = akvm_guest.command("run -c 1 hello")
    assert "on core 1" in out and "exit status 0" in out, out
    out = akvm_guest.command("run mcp fault")
    assert re.search(r"user fault: pid \d+ \(mcp\) on core 1: #PF", out), out
    assert re.search(r"\(mcp\): exit status 142 \(killed: #PF page fault\)", out), out
    ps = akvm_guest.command("ps")
    assert "running" not in ps, ps


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


def check_device_benchmarks(out):
    for n in (1, 2):
        assert re.search(rf"^BENCH user-shootdown-{n} iterations=50 cycles_per_op=\d+ "
                         rf"ns_per_op=\d+ iotlb=1$", out, re.M), out
    for name in ("translated", "passthrough"):
        assert re.search(rf"^BENCH user-edu-dma-{name} iterations=\d+ cycles_per_op=\d+ "
                         rf"ns_per_op=\d+ bytes_per_op=4088 MBps=\d+$", out, re.M), out


def test_user_device_benchmarks_under_akvm(akvm_guest_factory):
    """munmap shootdowns by a process on 1 and 2 cores (with the IOTLB of the edu's domain),
    and edu DMA from ring 3 with and without translation."""
    guest = akvm_guest_factory(cpus=2, args=EDU_ARGS, timeout=TIMEOUT)
    check_device_benchmarks(guest.command("bench user-shootdown user-edu", timeout=TIMEOUT))
    # The edu went back to pass-through: the kernel's own DMA test still works.
    result = guest.selftest("iommu-passthrough")
    assert result.passed == ["iommu-passthrough"], result.output


@needs_qemu
@pytest.mark.parametrize("cpus", [1, 2])
def test_user_selftests_under_qemu(akvm_guest_factory, cpus):
    guest = akvm_guest_factory(vmm="qemu", cpus=cpus, timeout=TIMEOUT)
    result = guest.selftest("user-*")
    assert result.failed == {}
    assert set(result.passed) >= USER_TESTS - TWO_CORE_TESTS
    if cpus == 2:
        assert set(result.passed) == USER_TESTS
        check_multicore_output(result.output)
    out = guest.command("run hello")
    assert "exit status 0" in out, out


# Device assignment (guest/user.c assign/release, guest/user/edudma.c): not default
# self-tests, they need the edu device behind VT-d.
EDU_TESTS = ("user-edu-dma", "user-edu-fault", "user-edu-munmap", "user-edu-release",
             "user-edu-noflush", "user-edu-noflush-many")
EDU_ARGS = ["--iommu", "vtd", "--device", "edu"]
QEMU_EDU = ["-machine", "q35,kernel-irqchip=split",
            "-device", "intel-iommu,aw-bits=48,caching-mode=off", "-device", "edu"]


@pytest.mark.parametrize("qi", ["off", "on"])
def test_user_edu_assignment_under_akvm(akvm_guest_factory, qi):
    guest = akvm_guest_factory(cpus=2, args=EDU_ARGS, timeout=TIMEOUT)
    out = guest.command(f"iommu qi {qi}")
    assert "iommu:" not in out, out
    result = guest.selftest(*EDU_TESTS)
    assert result.failed == {}, result.output
    assert set(result.passed) == set(EDU_TESTS), result.output
    assert re.search(r"edudma: pid \d+: 4088 bytes DMAed to IOVA 0x[0-9a-f]+ and 0x[0-9a-f]+ "
                     r"\(0x8040[0-9a-f]+, 0x8040[0-9a-f]+\) from ring 3, data ok", result.output)
    assert "DMAR fault: write of 0xf000000 by" in result.output, result.output


def test_user_edu_run_and_noflush_knob(akvm_guest_factory):
    guest = akvm_guest_factory(cpus=2, args=EDU_ARGS, timeout=TIMEOUT)
    out = guest.command("run edudma dma")
    assert "data ok" in out and re.search(r"\(edudma\): exit status 0", out), out
    assert "does not invalidate" in guest.command("iommu noflush")
    assert "invalidates" in guest.command("iommu flush")
    # The device went back to pass-through: the kernel's own edu tests still work.
    result = guest.selftest("iommu-passthrough")
    assert result.passed == ["iommu-passthrough"], result.output


def test_user_edu_tests_skip_without_the_device(akvm_guest_factory):
    guest = akvm_guest_factory(cpus=1, timeout=TIMEOUT)
    result = guest.selftest(*EDU_TESTS, "user-edu-two")
    assert result.failed == {}, result.output
    assert set(result.skipped) == {*EDU_TESTS, "user-edu-two"}, result.output


def test_user_edu_two_needs_two_edus(akvm_guest_factory):
    guest = akvm_guest_factory(cpus=2, args=EDU_ARGS, timeout=TIMEOUT)
    result = guest.selftest("user-edu-two")
    assert result.skipped == {"user-edu-two": "needs two edu devices behind the IOMMU"}, \
        result.output


def test_noflush_stale_use_is_reported_by_the_coherence_checker(akvm_guest_factory):
    """user-edu-noflush skips the IOTLB invalidation of munmap on purpose: the edu's next
    DMA uses the stale entry (it lands in the old frame, which the kernel holds back), and
    check=on logs it. Twice: the held-back frame did not corrupt the frame free list."""
    guest = akvm_guest_factory(cpus=2, args=["--iommu", "vtd,check=on", "--device", "edu"],
                               timeout=TIMEOUT)
    pids = []
    for _ in range(2):
        result = guest.selftest("user-edu-noflush")
        assert result.passed == ["user-edu-noflush"], result.output
        assert "used the stale IOTLB entry: it wrote the old frame" in result.output
        pids.append(re.search(r"edudma: pid (\d+): DMA to IOVA (0x[0-9a-f]+) .* after munmap "
                              r"without IOTLB flush done", result.output).groups())
    assert "exit status 0" in guest.command("run edudma dma")
    guest.close()
    # akvm logs on stderr, which shares the terminal with the serial console.
    for n, (pid, iova) in enumerate(pids, 1):
        assert re.search(rf"akvm: iommu: check: stale IOTLB entry #{n}: domain {pid} device 00:0\d\.0 "
                         rf"iova {iova}: cached frame 0x[0-9a-f]+ \(rw\), the tables now fault",
                         guest.serial_log), guest.serial_log[-3000:]


def check_edu_two(result):
    assert result.passed == ["user-edu-two"], result.output
    a = re.search(r"edudma: pid \d+ \(a\): DMA into its buffer at IOVA (0x[0-9a-f]+) ok; DMA to "
                  r"IOVA (0x[0-9a-f]+) \(mapped only in b\) done", result.output)
    b = re.search(r"edudma: pid \d+ \(b\): DMA into its buffer at IOVA (0x[0-9a-f]+) ok; after a "
                  r"exited, that buffer and its page at IOVA (0x[0-9a-f]+) are unchanged",
                  result.output)
    assert a and b and a.groups() == b.groups(), result.output
    assert re.search(rf"DMAR fault: write of {a.group(2)} by 00:0\d\.0, reason", result.output)


def test_two_processes_with_an_edu_each_under_akvm(akvm_guest_factory):
    guest = akvm_guest_factory(cpus=2, args=EDU_ARGS + ["--device", "edu"], timeout=TIMEOUT)
    check_edu_two(guest.selftest("user-edu-two"))
    # Both went back to pass-through, and one process can have either edu again.
    result = guest.selftest("user-edu-dma", "user-edu-release")
    assert set(result.passed) == {"user-edu-dma", "user-edu-release"}, result.output


@needs_qemu
def test_user_edu_selftests_under_qemu(akvm_guest_factory):
    """The same assignments against QEMU's intel-iommu and two edu devices (each DMA takes
    QEMU's edu 100 ms)."""
    guest = akvm_guest_factory(vmm="qemu", cpus=2, args=QEMU_EDU + ["-device", "edu"],
                               timeout=TIMEOUT)
    result = guest.selftest(*EDU_TESTS)
    assert result.failed == {} and result.skipped == {}, result.output
    assert set(result.passed) == set(EDU_TESTS), result.output
    assert "used the stale IOTLB entry" in result.output
    check_edu_two(guest.selftest("user-edu-two"))


@needs_qemu
def test_user_device_benchmarks_under_qemu(akvm_guest_factory):
    guest = akvm_guest_factory(vmm="qemu", cpus=2, args=QEMU_EDU, timeout=TIMEOUT)
    check_device_benchmarks(guest.command("bench user-shootdown user-edu", timeout=TIMEOUT))


# A process owns a virtio-blk PCI device (guest/user/vblk.c, a ring-3 virtio driver): the
# non-default self-test user-vblk, then the kernel's own driver gets the device back.
VBLK_RW = re.compile(r"vblk: pid \d+: 2048 sectors, features 0x([0-9a-f]+); wrote, flushed, read "
                     r"back 64 sectors at 512 through IOVA 0x[0-9a-f]+ \(one 32768-byte "
                     r"descriptor\) from ring 3, data ok; original restored")
VBLK_FAULT = re.compile(r"DMAR fault: write of 0xf000000 by (\S+), reason 5 ")


def check_user_vblk(guest):
    result = guest.selftest("user-vblk", "virtio-blk")
    assert result.failed == {} and result.skipped == {}, result.output
    assert result.passed == ["user-vblk", "virtio-blk"], result.output
    m = VBLK_RW.search(result.output)
    assert m, result.output
    features = int(m.group(1), 16)
    assert features >> 32 & 3 == 3, hex(features)    # VERSION_1 and ACCESS_PLATFORM
    where = re.search(r"vblk: pid \d+: 1042:(\S+) mapped at 0x8040[0-9a-f]+ \(16384 bytes\)",
                      result.output)
    assert where, result.output
    fault = VBLK_FAULT.search(result.output)
    assert fault and fault.group(1) == where.group(1), result.output
    assert re.search(r"then a read into IOVA 0x[0-9a-f]+ worked", result.output), result.output
    assert "ready" in guest.command("virtio")         # the kernel's driver has it again
    return result.output


def test_user_vblk_under_akvm(akvm_guest_factory, disk):
    before = disk.read_bytes()
    guest = akvm_guest_factory(cpus=2, timeout=TIMEOUT, args=[
        "--iommu", "vtd", "--device", f"virtio-blk,file={disk}", "--stats"])
    out = check_user_vblk(guest)
    # akvm's device fails the request whose buffer the IOMMU refused, and says why.
    assert "read into unmapped IOVA 0xf000000: status 1 (IOERR)" in out, out
    guest.close()
    assert "DMA write of 0xf000000 by 00:" in guest.serial_log
    assert re.search(r"virtio-blk0: \d+ reads, \d+ writes, \d+ flushes, 1 errors",
                     guest.serial_log), guest.serial_log[-2000:]
    assert disk.read_bytes() == before               # both writers put the sectors back


def test_user_vblk_skips_without_the_iommu(akvm_guest_factory, disk):
    guest = akvm_guest_factory(cpus=1, timeout=TIMEOUT,
                               args=["--device", f"virtio-blk,file={disk}"])
    result = guest.selftest("user-vblk")
    assert list(result.skipped) == ["user-vblk"] and "no IOMMU" in result.skipped["user-vblk"]
    guest.close()
    guest = akvm_guest_factory(cpus=1, timeout=TIMEOUT, args=["--iommu", "vtd"])
    result = guest.selftest("user-vblk")
    assert result.skipped == {"user-vblk": "no modern virtio-blk PCI device (1af4:1042)"}


@needs_qemu
def test_user_vblk_under_qemu(akvm_guest_factory, disk):
    before = disk.read_bytes()
    guest = akvm_guest_factory(vmm="qemu", cpus=2, timeout=TIMEOUT, args=[
        "-machine", "q35,kernel-irqchip=split", "-device", "intel-iommu,aw-bits=48,caching-mode=off",
        "-drive", f"if=none,id=d0,file={disk},format=raw",
        "-device", "virtio-blk-pci,drive=d0,disable-legacy=on,iommu_platform=on"])
    out = check_user_vblk(guest)
    # QEMU 7.2 completes the request: the blocked write went to a bounce buffer and was
    # dropped; the fault record is what tells.
    assert re.search(r"read into unmapped IOVA 0xf000000: (status \d|device set)", out), out
    guest.close()
    assert disk.read_bytes() == before


# The VT-d unit lent to a process for a benchmark (guest/user/invbench.c, the benchmark-only
# system call iommu_lend): IOTLB invalidations timed from ring 3, queued and register-based.
INV_QI = ["user-iommu-inv-qi-1"] + [f"user-iommu-inv-qi-batch{n}" for n in (8, 32, 128, 254)]
INV_REG = ["user-iommu-inv-reg-domain", "user-iommu-inv-reg-page"]
LENT = "the VT-d unit is lent to a process (benchmark)"


def check_inv_bench(out, qi=True):
    """Every figure well formed (or, without ECAP.QI, the queued ones skipped), no failure."""
    for name in (INV_QI if qi else []) + INV_REG:
        assert re.search(rf"^BENCH {name} iterations=\d+ cycles_per_op=\d+ ns_per_op=\d+$", out,
                         re.M), out
    if not qi:
        assert "BENCH user-iommu-inv-qi skipped: no queued invalidation (ECAP.QI = 0)" in out, out
    assert "exit status" not in out and "taking the VT-d unit back" not in out, out
    lent = re.findall(r"invbench: pid \d+: VT-d unit lent \((queued|registers)\)", out)
    assert lent == (["queued"] if qi else []) + ["registers"], out
    return out


def test_user_iommu_invalidation_bench_under_akvm(akvm_guest_factory):
    guest = akvm_guest_factory(cpus=2, args=EDU_ARGS, timeout=TIMEOUT)
    check_inv_bench(guest.command("bench user-iommu", timeout=TIMEOUT))
    # The kernel took the unit back with register-based invalidation, as it had it.
    assert "register-based invalidation" in guest.command("iommu")
    result = guest.selftest("iommu-reg-inv", "iommu-translate", "iommu-psi")
    assert set(result.passed) == {"iommu-reg-inv", "iommu-translate", "iommu-psi"}, result.output
    # Lent while the kernel's queue is in use: it takes IQT back as its tail and goes on.
    assert "iommu:" not in guest.command("iommu qi on")
    assert guest.selftest("iommu-qi").passed == ["iommu-qi"]
    out = check_inv_bench(guest.command("bench user-iommu", timeout=TIMEOUT))
    assert int(re.search(r"lent \(queued\): .* tail (\d+),", out).group(1)) > 0, out
    assert "queued invalidation" in guest.command("iommu")
    result = guest.selftest("iommu-qi", "iommu-qi-batch", "iommu-translate")
    assert result.failed == {} and len(result.passed) == 3, result.output
    out = guest.command("run edudma dma")      # a process's domain, invalidated through the queue
    assert "data ok" in out and re.search(r"\(edudma\): exit status 0", out), out


def test_user_iommu_invalidation_bench_without_qi(akvm_guest_factory):
    """--iommu vtd,qi=off: no queued invalidation to lend; the register figures still come."""
    guest = akvm_guest_factory(cpus=1, args=["--iommu", "vtd,qi=off", "--device", "edu"],
                               timeout=TIMEOUT)
    check_inv_bench(guest.command("bench user-iommu", timeout=TIMEOUT), qi=False)
    result = guest.selftest("iommu-reg-inv", "iommu-translate")
    assert set(result.passed) == {"iommu-reg-inv", "iommu-translate"}, result.output


def test_user_iommu_bench_skips_without_an_iommu(akvm_guest_factory):
    guest = akvm_guest_factory(cpus=1, timeout=TIMEOUT)
    out = guest.command("bench user-iommu", timeout=TIMEOUT)
    assert re.search(r"^BENCH user-iommu skipped: no DMAR table$", out, re.M), out


def check_lend_ends_by_exit_and_kill(guest):
    """A queue error left behind, descriptors queued without IQT and a kill: the kernel
    takes the unit back each time and its own queued invalidation works after."""
    assert "iommu:" not in guest.command("iommu qi on")
    out = guest.command("run invbench bad")
    assert re.search(r"invbench: pid \d+: invalid descriptor at \d+: FSTS 0x10,", out), out
    assert re.search(r"pid \d+: taking the VT-d unit back: queue error \(FSTS 0x10, IQH \d+, "
                     r"IQT \d+\): emptied", out), out
    assert re.search(r"\(invbench\): exit status 0", out), out
    assert guest.selftest("iommu-qi").passed == ["iommu-qi"]
    out = guest.command("run invbench kill")
    assert re.search(r"\(invbench\): exit status 142 \(killed: #PF page fault\)", out), out
    assert "taking the VT-d unit back" not in out, out
    result = guest.selftest("iommu-qi", "iommu-qi-batch")
    assert result.failed == {} and len(result.passed) == 2, result.output


def test_lent_iommu_comes_back_on_exit_and_kill(akvm_guest_factory):
    guest = akvm_guest_factory(cpus=2, args=EDU_ARGS, timeout=TIMEOUT)
    check_lend_ends_by_exit_and_kill(guest)


def test_kernel_keeps_off_a_lent_iommu(akvm_guest_factory):
    """While a process on core 1 holds the unit, the kernel's invalidations and assign()
    are refused; its exit gives the unit back."""
    guest = akvm_guest_factory(cpus=2, args=EDU_ARGS, timeout=TIMEOUT)
    out = guest.command("spawn -c 1 invbench hold 8000")
    m = re.search(r"pid (\d+) \(invbench\) started on core 1", out)
    assert m, out
    pid = m.group(1)
    if "holds the VT-d unit" not in out:
        guest.expect(rf"invbench: pid {pid} holds the VT-d unit for 8000 ms")
    assert f"lent to pid {pid} for a benchmark" in guest.command("iommu")
    result = guest.selftest("iommu-qi", "iommu-reg-inv")
    assert set(result.failed) == {"iommu-qi", "iommu-reg-inv"}, result.output
    assert all(LENT in why for why in result.failed.values()), result.output
    out = guest.command("run edudma dma")       # assign() refused
    assert re.search(r"\(edudma\): exit status 1\b", out), out
    guest.expect(rf"pid {pid} \(invbench\) on core 1: exit status 0", timeout=60)
    assert "lent to pid" not in guest.command("iommu")
    result = guest.selftest("iommu-qi", "iommu-reg-inv", "iommu-translate")
    assert result.failed == {} and len(result.passed) == 3, result.output
    assert "data ok" in guest.command("run edudma dma")


@needs_qemu
def test_user_iommu_invalidation_bench_under_qemu(akvm_guest_factory):
    guest = akvm_guest_factory(vmm="qemu", cpus=2, args=QEMU_EDU, timeout=TIMEOUT)
    check_inv_bench(guest.command("bench user-iommu", timeout=TIMEOUT))
    result = guest.selftest("iommu-reg-inv", "iommu-translate")
    assert set(result.passed) == {"iommu-reg-inv", "iommu-translate"}, result.output
    check_lend_ends_by_exit_and_kill(guest)
