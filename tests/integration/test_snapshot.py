"""Snapshots (snapshot-save on the control socket, akvm run --restore) under KVM: the
bundled guest saved at its prompt and in the middle of its self-tests with virtio-blk
and VT-d at work, then resumed in a new akvm; broken snapshots refused in one line."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from akvm.testing import Guest
from tests.conftest import needs_kvm
from tests.unit.test_cli import akvm, assert_one_line_error

pytestmark = needs_kvm

TIMEOUT = 240


@pytest.fixture(scope="module")
def at_prompt(tmp_path_factory):
    """The guest (2 vCPUs, virtio-rng, edu) saved at its prompt, once for the module."""
    d = tmp_path_factory.mktemp("snap")
    guest = Guest(cpus=2, args=["--device", "virtio-rng", "--device", "edu"],
                  control=d / "control.sock", timeout=TIMEOUT)
    guest.start()
    guest.command("pci")                                 # something on the console before
    summary = guest.snapshot(d / "snap")
    guest.close()
    assert guest.exitstatus == 0
    return d / "snap", summary, guest.serial_log


def test_a_snapshot_at_the_prompt_resumes_and_answers(at_prompt, akvm_guest_factory):
    snap, summary, log = at_prompt
    assert summary["ram_data"] <= summary["ram_touched"]
    assert summary["disk_usage"] <= summary["ram_touched"] + (1 << 20)
    guest = akvm_guest_factory(restore=snap, timeout=TIMEOUT, args=["--stats"])
    assert "2 cores online" in guest.command("cores")
    assert "1234:11e8" in guest.command("pci")
    result = guest.selftest("edu-id", "edu-dma", "edu-msi", "virtio-rng", "timer", "ipi")
    assert result.failed == {} and len(result.passed) == 6, result.output
    guest.close()
    assert guest.exitstatus == 0
    # Statistics go on from the snapshot's: the first run's console output is counted too.
    tx = int(re.search(r"com1: (\d+) bytes out", guest.serial_log).group(1))
    assert tx > len(log)


def test_the_same_snapshot_restores_twice_at_once(at_prompt, akvm_guest_factory):
    snap, _, _ = at_prompt
    a = akvm_guest_factory(restore=snap, timeout=TIMEOUT)
    b = akvm_guest_factory(restore=snap, timeout=TIMEOUT)
    assert "kerninfo" in a.command("help") and "kerninfo" in b.command("help")
    assert a.selftest("user-hello").passed == ["user-hello"]
    assert b.selftest("user-hello").passed == ["user-hello"]


def test_a_restored_machine_saves_again(at_prompt, akvm_guest_factory, tmp_path):
    snap, _, _ = at_prompt
    copy = tmp_path / "copy"
    shutil.copytree(snap, copy)
    first = akvm_guest_factory(restore=copy, control=tmp_path / "c1.sock", timeout=TIMEOUT)
    first.command("run hello 5")
    first.snapshot(copy)                                 # over the snapshot it came from
    assert first.selftest("user-hello").passed == ["user-hello"]    # it runs on, unharmed
    first.close()
    assert len(list(copy.glob("ram-*"))) == 1
    second = akvm_guest_factory(restore=copy, timeout=TIMEOUT)
    assert "TSC" in second.command("kerninfo")
    assert second.selftest("user-syscalls").passed == ["user-syscalls"]


def test_mid_selftest_with_virtio_blk_and_vtd(akvm_guest_factory, tmp_path, disk):
    """Saved while the self-tests run (VT-d translating, virtio-blk behind it), resumed
    in a new akvm, which finishes them: every test passes, and the disk is intact."""
    original = disk.read_bytes()
    args = ["--device", f"virtio-blk,file={disk}", "--iommu", "vtd", "--device", "edu"]
    first = akvm_guest_factory(cpus=2, args=args, control=tmp_path / "c.sock", timeout=TIMEOUT)
    first.send("selftest\r")
    first.expect("PASS iommu-enable")                    # translation on: mid-way in the tests
    client = first.control_client()
    client.execute("stop")
    summary = first.snapshot(tmp_path / "snap")
    client.execute("quit")
    assert first.wait_exit() == 0
    before = first.serial_log
    assert "passed," not in before and summary["ram_data"] > 0

    second = akvm_guest_factory(restore=tmp_path / "snap", timeout=TIMEOUT, wait_prompt=False,
                                args=["--stats"])
    second.expect(r"\d+ passed, \d+ failed", timeout=TIMEOUT)
    second.expect(second.prompt)
    after = second.serial_log
    # The guest's own count: the line being printed at the snapshot can show on both
    # consoles, so the two logs' PASS lines are not counted against it.
    text = before[before.index("selftest"):] + after
    assert "FAIL " not in text, text
    assert re.search(r"\b[1-9]\d* passed, 0 failed", after), after
    for name in ("iommu-qi", "iommu-translate", "iommu-fault", "virtio-blk", "iommu-shootdown",
                 "user-shootdown"):
        assert f"PASS {name}" in after, name
    second.close()
    assert re.search(r"virtio-blk0: [1-9]\d* reads, [1-9]\d* writes", second.serial_log)
    assert "iommu: enabled" in second.serial_log
    assert disk.read_bytes() == original                 # the test put its sectors back


def test_every_device_kind_is_saved_and_restored(akvm_guest_factory, tmp_path):
    """Every --device kind of the table (the virtio ones on PCI and on MMIO) and VT-d in
    one machine, saved after the guest's self-tests drove them and restored: no kind is
    refused or forgotten, and the restored guest drives them again."""
    from tests.integration.test_hostile_bus import device_specs
    args = [a for spec in device_specs(str(tmp_path)) for a in ("--device", spec.text)]
    tests = ("e1000", "edu-dma", "edu-intx", "virtio-blk", "virtio-rng", "ioat-copy", "ioat-msix")
    first = akvm_guest_factory(args=[*args, "--iommu", "vtd"], control=tmp_path / "c.sock",
                               timeout=TIMEOUT)
    result = first.selftest(*tests)
    assert result.failed == {} and len(result.passed) == len(tests), result.output
    client = first.control_client()
    client.execute("snapshot-save", path=str(tmp_path / "snap"))
    client.execute("quit")
    assert first.wait_exit() == 0
    second = akvm_guest_factory(restore=tmp_path / "snap", timeout=TIMEOUT)
    result = second.selftest(*tests)
    assert result.failed == {} and len(result.passed) == len(tests), result.output


# --- what a restore refuses -----------------------------------------------------------

@pytest.fixture(scope="module")
def small_snapshot(tmp_path_factory):
    """A 64 MiB guest with a disk, saved at its prompt."""
    d = tmp_path_factory.mktemp("small")
    disk = d / "disk.img"
    disk.write_bytes(os.urandom(1 << 20))
    guest = Guest(memory="64M", args=["--device", f"virtio-blk,file={disk}"],
                  control=d / "c.sock", timeout=TIMEOUT)
    guest.start()
    guest.snapshot(d / "snap")
    guest.close()
    return d / "snap", disk


def broken(small_snapshot, tmp_path, change):
    snap, _ = small_snapshot
    copy = tmp_path / "broken"
    shutil.copytree(snap, copy)
    change(copy)
    return akvm("run", "--restore", str(copy))


def test_truncated_manifest(small_snapshot, tmp_path):
    def cut(d):
        data = (d / "manifest.json").read_bytes()
        (d / "manifest.json").write_bytes(data[:len(data) // 2])
    assert_one_line_error(broken(small_snapshot, tmp_path, cut), "truncated")


def test_corrupt_manifest(small_snapshot, tmp_path):
    def flip(d):
        data = bytearray((d / "manifest.json").read_bytes())
        data[-100] ^= 0x20
        (d / "manifest.json").write_bytes(bytes(data))
    assert_one_line_error(broken(small_snapshot, tmp_path, flip), "corrupt")


def test_wrong_version(small_snapshot, tmp_path):
    def bump(d):
        header, _, body = (d / "manifest.json").read_bytes().partition(b"\n")
        h = json.loads(header)
        h["version"] = 99
        (d / "manifest.json").write_bytes(json.dumps(h).encode() + b"\n" + body)
    assert_one_line_error(broken(small_snapshot, tmp_path, bump), "format version 99")


def test_not_a_snapshot(tmp_path):
    (tmp_path / "manifest.json").write_text("hello\n")
    assert_one_line_error(akvm("run", "--restore", str(tmp_path)), "not an akvm snapshot")
    assert_one_line_error(akvm("run", "--restore", str(tmp_path / "none")), "does not exist")


def test_truncated_ram_file(small_snapshot, tmp_path):
    def cut(d):
        ram = next(d.glob("ram-*"))
        os.truncate(ram, ram.stat().st_size // 2)
    assert_one_line_error(broken(small_snapshot, tmp_path, cut), "RAM file", "truncated")


def test_missing_ram_file(small_snapshot, tmp_path):
    assert_one_line_error(broken(small_snapshot, tmp_path,
                                 lambda d: next(d.glob("ram-*")).unlink()), "RAM file")


def test_a_changed_disk_is_refused_unless_forced(small_snapshot, akvm_guest_factory):
    snap, disk = small_snapshot
    saved = disk.stat()
    with open(disk, "r+b") as f:
        f.write(b"changed")
    try:
        assert_one_line_error(akvm("run", "--restore", str(snap)), str(disk), "changed since",
                              "--restore-force")
        guest = akvm_guest_factory(restore=snap, args=["--restore-force"], timeout=TIMEOUT)
        assert "virtio block" in guest.command("virtio")
        guest.close()
    finally:
        os.utime(disk, ns=(saved.st_atime_ns, saved.st_mtime_ns))


def test_options_that_the_snapshot_decides(small_snapshot):
    snap, _ = small_snapshot
    assert_one_line_error(akvm("run", "--restore", str(snap), "--memory", "1G"), "--memory")
    assert_one_line_error(akvm("run", "--restore", str(snap), "--device", "edu"), "--device")
    assert_one_line_error(akvm("run", "--restore-force"), "--restore-force goes with --restore")


def test_a_well_formed_manifest_with_a_bad_state(small_snapshot, tmp_path):
    """Checksum right, contents wrong (an edited file, a bug): still one line, status 2."""
    import zlib

    def edit(d):
        header, _, body = (d / "manifest.json").read_bytes().partition(b"\n")
        state = json.loads(body)
        del state["devices"]["com1"]["lcr"]
        body = json.dumps(state).encode()
        h = json.loads(header)
        h.update(crc32=zlib.crc32(body), bytes=len(body))
        (d / "manifest.json").write_bytes(json.dumps(h).encode() + b"\n" + body)
    assert_one_line_error(broken(small_snapshot, tmp_path, edit), "cannot restore it",
                          "com1", "lcr")


@pytest.fixture(scope="module")
def every_kind_snapshot(tmp_path_factory):
    """Every --device kind and VT-d, saved at the prompt."""
    from tests.integration.test_hostile_bus import device_specs
    d = tmp_path_factory.mktemp("every")
    args = [a for spec in device_specs(str(d)) for a in ("--device", spec.text)]
    guest = Guest(args=[*args, "--iommu", "vtd"], control=d / "c.sock", timeout=TIMEOUT)
    guest.start()
    guest.snapshot(d / "snap")
    guest.close()
    return d / "snap"


def _replace_numbers(value, new):
    if isinstance(value, dict):
        return {k: _replace_numbers(v, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_numbers(v, new) for v in value]
    return new if isinstance(value, int) and not isinstance(value, bool) else value


@pytest.mark.parametrize("new", [1 << 70, "x"], ids=["huge", "string"])
def test_an_edited_device_state_is_one_line_or_runs(every_kind_snapshot, tmp_path, new):
    """Each device's saved numbers replaced by a value no device wrote (checksum made
    right, as an editor would): akvm refuses with one line, or takes the values and
    runs; never a traceback."""
    import zlib
    header, _, body = (every_kind_snapshot / "manifest.json").read_bytes().partition(b"\n")
    state = json.loads(body)
    for name in state["devices"]:
        same = re.fullmatch(r"pci/(\w\w:\w\w)\.[1-7]", name)
        if same and f"pci/{same.group(1)}.0" in state["devices"]:
            continue                # a multi-function device's other functions: one model
        edited = json.loads(body)
        edited["devices"][name] = _replace_numbers(edited["devices"][name], new)
        data = json.dumps(edited).encode()
        h = json.loads(header)
        h.update(crc32=zlib.crc32(data), bytes=len(data))
        copy = tmp_path / "edited"
        # Links, not copies: a copy of the sparse RAM file would take the guest's whole RAM.
        shutil.copytree(every_kind_snapshot, copy, copy_function=os.link)
        (copy / "manifest.json").unlink()
        (copy / "manifest.json").write_bytes(json.dumps(h).encode() + b"\n" + data)
        proc = subprocess.Popen([sys.executable, "-m", "akvm", "run", "--restore", str(copy)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)        # it took the values and runs
        _, err = proc.communicate(timeout=20)
        shutil.rmtree(copy)
        assert "Traceback" not in err and "internal error" not in err, (name, err)
        if proc.returncode == 2:        # after any notes of the machine's build, one line
            errors = [line for line in err.splitlines() if line.startswith("akvm: error: ")]
            assert len(errors) == 1 and err.strip().endswith(errors[0]), (name, err)
