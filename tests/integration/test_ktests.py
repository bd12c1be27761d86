"""pytest --akaros-ktests: Akaros's own kernel tests as pytest results, with upstream's
testing kernel (AKVM_AKAROS_KTESTS), through pytester and --junitxml.

That kernel passes 29 tests, has 22 disabled, and panics in ARENA's
test_user_dma (an upstream bug: it runs with no current process), so
END_KERNEL_TESTS never comes: the report must still.
"""
import os
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import needs_kvm

pytest_plugins = ["pytester"]
KTESTS = os.environ.get("AKVM_AKAROS_KTESTS", "")
pytestmark = [needs_kvm, pytest.mark.skipif(
    not os.path.isfile(KTESTS), reason="set AKVM_AKAROS_KTESTS to an Akaros kernel built "
                                       "with CONFIG_KERNEL_TESTING")]


def junit(path) -> dict[tuple[str, str], tuple[str, str]]:
    """(suite, test) -> (outcome, the failure or skip text)."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        suite = case.attrib["classname"].rsplit(".", 1)[-1]
        outcome, text = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"skipped": "skipped"}.get(child.tag, "failed")
                text = (child.attrib.get("message") or "") + (child.text or "")
        out[(suite, case.attrib["name"])] = (outcome, text)
    return out


def test_each_ktest_is_a_result_and_the_panic_is_reported(pytester):
    xml = pytester.path / "ktests.xml"
    result = pytester.runpytest_subprocess("--akaros-ktests", KTESTS, f"--junitxml={xml}",
                                           timeout=600)
    result.assert_outcomes(passed=29, skipped=22, failed=1)
    cases = junit(xml)
    assert len(cases) == 52
    assert cases[("POSTBOOT", "test_hashtable")][0] == "passed"
    assert cases[("POSTBOOT", "test_circular_buffer")][0] == "passed"
    assert cases[("ARENA", "test_dma_pool")][0] == "passed"
    outcome, why = cases[("POSTBOOT", "test_ipi_sending")]
    assert outcome == "skipped" and "DISABLED" in why
    outcome, why = cases[("ARENA", "test_user_dma")]
    assert outcome == "failed"
    assert "not reported: kernel panic at kern/arch/x86/trap.c" in why
    assert "in setup_dma_arena" in why                        # the serial log's backtrace
    assert sum(1 for o, _ in cases.values() if o == "passed") == 29
    result.stdout.fnmatch_lines(["*Captured serial log call*"])


def test_a_hang_fails_what_is_not_reported(pytester):
    """With a timeout shorter than the boot, nothing is reported: every enabled test fails
    as hung, the disabled ones are skipped, and the run still ends."""
    result = pytester.runpytest_subprocess("--akaros-ktests", KTESTS,
                                           "--akaros-ktests-timeout", "2", timeout=120)
    result.assert_outcomes(failed=30, skipped=22)
    result.stdout.fnmatch_lines(["*not reported: no ktest result for 2 s: the kernel hangs*"])


def test_a_kernel_without_ktests(pytester):
    from akvm import guest_kernel
    result = pytester.runpytest_subprocess("--akaros-ktests", str(guest_kernel.build()))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--akaros-ktests: *registers no ktest suites*"])
