"""akvm.testing.ktests without KVM: the ktest output grammar, a run read as it streams
(a stand-in for akvm prints what an Akaros testing kernel prints), and kernels without
ktests refused."""
import pytest

from akvm import guest_kernel
from akvm.testing.ktests import KtestLog, KtestRun, KtestsError, read_suites

# What Akaros prints (kern/src/ktest/ktest.c), with its \n -> \n\r on the serial line.
OUTPUT = (
    "Booting...\n\r"
    "<-- BEGIN_KERNEL_TESTS -->\n\r"
    "<-- BEGIN_KERNEL_POSTBOOT_TESTS -->\n\r"
    "\tDISABLED [test_ipi_sending]\n\r"
    "\tPASSED   [test_hashtable](0.010438s)   \n\r"
    "\tFAILED   [test_sort](0.000123s)   Assertion failure in test_sort() at "
    "kern/src/ktest/pb_ktests.c:321: Numbers should be ascending\n\r"
    "<-- END_KERNEL_POSTBOOT_TESTS -->\n\r"
    "<-- BEGIN_KERNEL_ARENA_TESTS -->\n\r"
    "\tPASSED   [test_nextfit](0.005899s)   \n\r"
    "\n\r"
    "kernel panic at kern/arch/x86/trap.c:291, from core 0: Proc-less Page Fault\n\r"
    "Backtrace of kernel context on Core 0:\n\r"
    "Entering Nanwan's Dungeon on Core 0 (Ints off):\n\r"
    "ROS(Core 0)> ")


def test_the_grammar():
    log = KtestLog()
    for line in OUTPUT.split("\n"):
        log.feed(line)
    r = log.results
    assert r[("POSTBOOT", "test_ipi_sending")].outcome == "DISABLED"
    assert (r[("POSTBOOT", "test_hashtable")].outcome, r[("POSTBOOT", "test_hashtable")].seconds,
            r[("POSTBOOT", "test_hashtable")].message) == ("PASSED", 0.010438, "")
    failed = r[("POSTBOOT", "test_sort")]
    assert failed.outcome == "FAILED" and failed.message == (
        "Assertion failure in test_sort() at kern/src/ktest/pb_ktests.c:321: "
        "Numbers should be ascending")
    assert r[("ARENA", "test_nextfit")].outcome == "PASSED"
    assert log.panic == "kernel panic at kern/arch/x86/trap.c:291, from core 0: Proc-less Page Fault"
    assert not log.finished


def stand_in(tmp_path, text: str, then: str = "") -> KtestRun:
    """A run whose 'akvm' prints `text`, then does `then` (a shell command)."""
    out = tmp_path / "out"
    out.write_text(text)
    run = KtestRun("kernel", 2, "1G", timeout=2)
    run.command = ["sh", "-c", f"cat {out}; {then}"]
    return run


def test_a_run_streams_results_until_the_panic(tmp_path):
    run = stand_in(tmp_path, OUTPUT, then="sleep 30")
    assert run.result("POSTBOOT", "test_sort").message.endswith("Numbers should be ascending")
    assert run.result("ARENA", "test_user_dma") is None
    assert run.ended.startswith("kernel panic at kern/arch/x86/trap.c:291")
    assert "ROS(Core 0)> " in run.log.text               # the backtrace is in the log
    assert run.proc.poll() is not None                   # and the VMM was stopped
    run.close()


def test_a_run_that_hangs(tmp_path):
    run = stand_in(tmp_path, "<-- BEGIN_KERNEL_POSTBOOT_TESTS -->\n", then="sleep 30")
    assert run.result("POSTBOOT", "test_hashtable") is None
    assert run.ended == "no ktest result for 2 s: the kernel hangs"
    run.close()


def test_a_run_that_ends(tmp_path):
    run = stand_in(tmp_path, OUTPUT.split("<-- BEGIN_KERNEL_ARENA")[0] + "<-- END_KERNEL_TESTS -->\n")
    assert run.result("ARENA", "test_nextfit") is None
    assert "without it" in run.ended
    run = stand_in(tmp_path, "Booting...\n", then="exit 3")
    assert run.result("ARENA", "test_nextfit") is None
    assert run.ended == "akvm exited with status 3"


def test_a_kernel_without_ktests_is_refused(tmp_path):
    with pytest.raises(KtestsError, match="registers no ktest suites"):
        read_suites(str(guest_kernel.build()))
    bad = tmp_path / "not-elf"
    bad.write_bytes(b"hello")
    with pytest.raises(KtestsError):
        read_suites(str(bad))
