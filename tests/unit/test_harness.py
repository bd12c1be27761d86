"""The harness's parsing of the guest's self-test output."""
import pytest

from akvm.testing import GuestError, parse_selftest, qemu_command


def test_parse_pass_and_fail():
    r = parse_selftest("PASS a\nFAIL b: it broke: badly\nPASS c\n2 passed, 1 failed\n")
    assert r.passed == ["a", "c"]
    assert r.failed == {"b": "it broke: badly"}
    assert not r.ok


def test_skips_are_kept_apart():
    r = parse_selftest("PASS a\nSKIP edu-dma: no edu device\n1 skipped\n1 passed, 0 failed\n")
    assert r.ok and r.skipped == {"edu-dma": "no edu device"}


def test_all_pass_is_ok():
    assert parse_selftest("PASS a\r\n1 passed, 0 failed\r\n").ok


def test_missing_summary_is_an_error():
    with pytest.raises(GuestError, match="no 'N passed"):
        parse_selftest("PASS a\n")


def test_summary_must_agree_with_lines():
    with pytest.raises(GuestError, match="disagrees"):
        parse_selftest("PASS a\n2 passed, 0 failed\n")


def test_qemu_command_boots_the_same_kernel():
    cmd = qemu_command("k", 2, "512M", "x=1", ["-device", "edu"])
    assert cmd[:2] == ["qemu-system-x86_64", "-enable-kvm"]
    assert cmd[cmd.index("-kernel") + 1] == "k" and cmd[cmd.index("-smp") + 1] == "2"
    assert cmd[-2:] == ["-append", "x=1"] and "edu" in cmd
