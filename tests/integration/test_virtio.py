"""virtio devices under KVM: the bundled guest's drivers (PCI, MMIO, behind the IOMMU),
ioeventfd notifications, MSI-X by irqfd, and data safety across a SIGKILL."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import Echo
from tests.conftest import needs_kvm
from akvm.base import kvm

pytestmark = needs_kvm

TIMEOUT = 180
VIRTIO_TESTS = ("virtio-blk", "virtio-console", "virtio-rng")


def kvm_has_ioeventfd() -> bool:
    system = kvm.System()
    try:
        return bool(system.check_extension(kvm.KVM_CAP_IOEVENTFD))
    finally:
        system.close()


def stat_line(log, device):
    m = re.search(rf"^\s*{device}: (.*)$", log, re.M)
    assert m, f"no statistics for {device} in:\n{log[-2000:]}"
    return m.group(1)


def test_pci_lists_the_modern_virtio_devices(akvm_guest_factory, disk):
    guest = akvm_guest_factory(args=["--device", f"virtio-blk,file={disk}",
                                     "--device", "virtio-rng"], timeout=TIMEOUT)
    out = guest.command("pci")
    assert "1af4:1042" in out and "1af4:1044" in out


def test_guest_drivers_over_pci(akvm_guest_factory, disk, tmp_path):
    before = disk.read_bytes()
    sock = tmp_path / "console.sock"
    echo = Echo(sock)
    echo.start()
    guest = akvm_guest_factory(args=["--device", f"virtio-blk,file={disk}",
                                     "--device", "virtio-rng",
                                     "--device", f"virtio-console,chardev=unix:{sock}",
                                     "--stats"], timeout=TIMEOUT)
    result = guest.selftest(*VIRTIO_TESTS)
    assert result.failed == {}
    assert set(VIRTIO_TESTS) <= set(result.passed)
    assert "echo matched" in result.output
    assert b"virtio-console echo" in echo.received
    guest.close()
    assert disk.read_bytes() == before                 # the self-test puts the sectors back
    blk = stat_line(guest.serial_log, "virtio-blk0")
    assert re.match(r"[1-9]\d* reads, [1-9]\d* writes, [1-9]\d* flushes, 0 errors; "
                    r"[1-9]\d* requests, [1-9]\d* bytes read, [1-9]\d* written;", blk)
    if kvm_has_ioeventfd():
        for device in ("virtio-blk0", "virtio-rng0", "virtio-console0"):
            assert stat_line(guest.serial_log, device).endswith("0 notifications by exit")
    for device in ("virtio-blk0", "virtio-rng0", "virtio-console0"):     # the guest polls
        assert "; 0 interrupts, 0 by irqfd;" in stat_line(guest.serial_log, device)


def test_the_guest_virtio_blk_benchmarks_run(akvm_guest_factory, disk):
    """guest/virtiobench.c prints the lines tools/bench/virtio.py reads (1 MiB disk: the
    sequential bench wraps on its only 1 MiB block)."""
    from tools.bench.virtio import _BENCH
    guest = akvm_guest_factory(args=["--device", f"virtio-blk,file={disk}"], timeout=TIMEOUT)
    out = guest.command("bench virtio-blk-rand4k virtio-blk-seq1m", timeout=TIMEOUT)
    found = {name: (iops, mbps) for name, _, iops, mbps in _BENCH.findall(out)}
    assert set(found) == {"virtio-blk-rand4k", "virtio-blk-seq1m"}, out
    assert int(found["virtio-blk-rand4k"][0]) > 0 and int(found["virtio-blk-seq1m"][1]) > 0


def test_the_virtio_blk_benchmarks_skip_without_a_disk(akvm_guest_factory):
    out = akvm_guest_factory(timeout=TIMEOUT).command("bench virtio-blk-rand4k")
    assert "BENCH virtio-blk-rand4k skipped: no virtio-blk device" in out


def lapic_irr(vcpu, vector: int) -> bool:
    raw = bytes(vcpu.get_lapic())
    return bool(raw[0x200 + vector // 32 * 0x10 + vector % 32 // 8] >> (vector % 8) & 1)


def enable_lapic(vcpu) -> None:
    """Software-enable the xAPIC (SVR bit 8), as a guest would; KVM drops interrupts before."""
    raw = bytearray(bytes(vcpu.get_lapic()))
    raw[0xF0:0xF4] = (0x1FF).to_bytes(4, "little")
    vcpu.set_lapic(kvm.kvm_lapic_state.from_buffer_copy(raw))


def test_msix_vectors_become_irqfds_in_kvm(tiny_kernel):
    """Guest-independent (the bundled guest polls its rings): on a built, not running,
    machine, drive a virtio-pci function from Python as a driver would. Unmasking MSI-X
    vectors programs MSI routes into KVM (seen in KVM_SET_GSI_ROUTING), the device's
    interrupt goes out as an eventfd write, and KVM puts the vector in vCPU 0's IRR."""
    from tests.unit.test_irqroutes import decode
    from tests.unit.test_virtio_pci import Machine as Driver
    from akvm.config import MachineConfig
    from akvm.devicetable import parse_device
    from akvm.machine import Machine
    machine = Machine.build(MachineConfig(kernel=str(tiny_kernel), serial="none",
                                          devices=[parse_device("virtio-rng")]))
    try:
        if machine.gsi_routes is None:
            pytest.skip("KVM has no irqfds or GSI routing: MSIs go by KVM_SIGNAL_MSI")
        tables = []
        program = machine.vm.set_gsi_routing
        machine.vm.set_gsi_routing = lambda entries: (tables.append([decode(e) for e in entries]),
                                                      program(entries))
        vcpu = machine.vcpus[0].vcpu
        enable_lapic(vcpu)
        driver = Driver.__new__(Driver)
        driver.mmio, driver.mem = machine.mmio_bus, machine.memory
        driver.pci = machine.virtio_devices[0].transport
        driver.bdf = tuple(driver.pci.address)
        driver.bring_up(msix=True)              # vector v: 0xFEE00000 (APIC 0), vector 0x40 + v
        assert [e[1:] for e in tables[-1] if e[0] == "msi"] == [(24, 0xFEE0_0000, 0x40),
                                                                (25, 0xFEE0_0000, 0x41)]
        assert not lapic_irr(vcpu, 0x41)
        from tests.unit.virtio_driver import DATA
        driver.queues[0].add([(DATA, 16, True)])
        driver.notify(0)
        assert driver.queues[0].take_used() == [(0, 16)]
        deadline = time.monotonic() + 5
        while not lapic_irr(vcpu, 0x41) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lapic_irr(vcpu, 0x41), "the irqfd did not reach the LAPIC"
        assert stat_line(machine.format_stats(), "virtio-rng0").endswith(
            "; 1 interrupts, 1 by irqfd; 1 notifications by exit")
    finally:
        machine.serial.close()
        machine._close_virtio()


def test_guest_drivers_over_mmio(akvm_guest_factory, disk):
    cmdline = "virtio_mmio.device=0x200@0xf0000000:5 virtio_mmio.device=0x200@0xf0001000:10"
    guest = akvm_guest_factory(args=["--device", f"virtio-blk,file={disk},transport=mmio",
                                     "--device", "virtio-rng,transport=mmio"],
                               cmdline=cmdline, timeout=TIMEOUT)
    assert "'virtio_mmio.device=0x200@0xf0000000:5'" in guest.serial_log   # akvm said so
    assert "'virtio_mmio.device=0x200@0xf0001000:10'" in guest.serial_log
    virtio = guest.command("virtio")
    assert "mmio 0xf0000000 (v2)" in virtio and "mmio 0xf0001000 (v2)" in virtio
    result = guest.selftest("virtio-blk", "virtio-rng")
    assert result.failed == {} and {"virtio-blk", "virtio-rng"} <= set(result.passed)


def test_guest_drivers_behind_the_iommu(akvm_guest_factory, disk):
    guest = akvm_guest_factory(args=["--device", f"virtio-blk,file={disk}",
                                     "--device", "virtio-rng", "--iommu", "vtd", "--stats"],
                               timeout=TIMEOUT)
    guest.command("iommu on")
    result = guest.selftest("virtio-blk", "virtio-rng")
    assert result.failed == {} and {"virtio-blk", "virtio-rng"} <= set(result.passed)
    assert "0 faults recorded" in guest.command("iommu faults")
    guest.close()
    m = re.search(r"iommu: enabled, (\d+) translations", guest.serial_log)
    assert m and int(m.group(1)) > 0                   # the rings and buffers went through it


# --- data safety -------------------------------------------------------------------------

@pytest.fixture(scope="session")
def vblk_kernel(tmp_path_factory):
    import shutil
    if shutil.which("gcc") is None or shutil.which("ld") is None:
        pytest.skip("needs gcc and ld to build the vblk test kernel")
    from tests.kernels import build_vblk
    return build_vblk(tmp_path_factory.mktemp("vblk"))


def power_cut(vblk_kernel, image, env=None):
    """Boot vblk on `image`: it writes 32 sectors, flushes, reads them back and says
    "vblk: flushed SEED"; akvm is killed with SIGKILL the moment that line arrives.
    Returns the line and whether the image now holds what the guest wrote."""
    seed, sectors = 1234567, 32
    proc = subprocess.Popen([sys.executable, "-m", "akvm", "run", "--kernel", str(vblk_kernel),
                             "--cmdline", f"{seed} {sectors}", "--serial", "stdio",
                             "--device", f"virtio-blk,file={image},transport=mmio"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert line == f"vblk: flushed {seed}\n".encode(), (line, proc.stderr.read())
    assert proc.returncode == -signal.SIGKILL
    expected = bytes((seed + (i // 512) * 31 + i) & 0xFF for i in range(sectors * 512))
    return image.read_bytes()[:sectors * 512] == expected


def test_a_flushed_write_survives_sigkill(vblk_kernel, tmp_path):
    """Everything the guest wrote and flushed is in the image after SIGKILL."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(64 * 1024))
    assert power_cut(vblk_kernel, image)


def test_a_flushed_write_survives_a_power_cut(vblk_kernel, io_shim, tmp_path):
    """SIGKILL alone keeps the page cache, so it cannot tell a FLUSH that skipped
    fdatasync from one that did not. Here the image sits behind a volatile write cache
    (tests/shim: writes held in memory until fdatasync, lost when akvm dies), and its
    fdatasync takes 0.3 s: the guest's data survives only if FLUSH completes after
    fdatasync has written it out."""
    from tests.conftest import shim_env
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(64 * 1024))
    assert power_cut(vblk_kernel, image, shim_env(io_shim, image, hold=1, sync_delay_ms=300))


def test_the_power_cut_test_fails_for_a_flush_that_does_not_sync(vblk_kernel, io_shim,
                                                                  tmp_path):
    """The same run where fdatasync writes nothing out, as if FLUSH did not call it:
    the guest still sees its flush complete, and the cut loses its data. (What the
    test above would see if akvm's FLUSH skipped fdatasync, or completed before it.)"""
    from tests.conftest import shim_env
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(64 * 1024))
    assert not power_cut(vblk_kernel, image, shim_env(io_shim, image, hold=1, no_sync=1))


# --- --device errors: one clear line naming the bad key ----------------------------------

@pytest.mark.parametrize("text,message", [
    ("virtio-blk", "virtio-blk: file=PATH is required"),
    ("virtio-blk,file=/nonexistent/disk.img", "virtio-blk: file=/nonexistent/disk.img: cannot open"),
    ("virtio-blk,file={disk},bogus=1", "virtio-blk: unknown option 'bogus'"),
    ("virtio-blk,file={disk},transport=usb", "virtio-blk: transport=usb: expected pci or mmio"),
    ("virtio-blk,file={disk},readonly=maybe", "virtio-blk: readonly=maybe: expected on or off"),
    ("virtio-rng,speed=9", "virtio-rng: unknown option 'speed'"),
    ("virtio-net", "virtio-net: give exactly one backend"),
    ("virtio-net,loopback=on,socket=/tmp/x", "virtio-net: give exactly one backend"),
    ("virtio-net,loopback=on,mac=zz", "virtio-net: mac=zz:"),
    ("virtio-net,loopback=maybe", "virtio-net: loopback=maybe: expected on or off"),
    ("virtio-net,socket={disk}", "virtio-net: socket={disk}:"),
    ("virtio-console,chardev=tty:x", "virtio-console: chardev=tty:x: expected stdio"),
])
def test_bad_device_options(tiny_kernel, disk, text, message):
    from akvm.config import ConfigError, MachineConfig
    from akvm.devicetable import parse_device
    from akvm.machine import Machine
    with pytest.raises(ConfigError) as e:       # from the option table, or from the builder
        Machine.build(MachineConfig(kernel=str(tiny_kernel), serial="none",
                                    devices=[parse_device(text.format(disk=disk))]))
    assert str(e.value).startswith(message.format(disk=disk)), str(e.value)
    assert "\n" not in str(e.value)


def test_console_on_stdio_needs_the_serial_elsewhere(tiny_kernel):
    from akvm.config import ConfigError, MachineConfig
    from akvm.devicetable import parse_device
    from akvm.machine import Machine
    config = MachineConfig(kernel=str(tiny_kernel), serial="stdio",
                           devices=[parse_device("virtio-console")])
    with pytest.raises(ConfigError, match="chardev=stdio: stdio is already the serial console"):
        Machine.build(config)


def test_bad_device_from_the_command_line(tiny_kernel):
    r = subprocess.run([sys.executable, "-m", "akvm", "run", "--kernel", str(tiny_kernel),
                        "--device", "virtio-blk,file=/nonexistent.img"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "akvm: error: virtio-blk: file=/nonexistent.img: cannot open: No such file or directory"]


def test_an_image_in_use_is_refused(tiny_kernel, disk):
    from akvm.config import ConfigError, MachineConfig
    from akvm.devicetable import parse_device
    from akvm.machine import Machine
    from akvm.devices.virtio.image import RawImage
    holder = RawImage(str(disk))
    try:
        config = MachineConfig(kernel=str(tiny_kernel), serial="none",
                               devices=[parse_device(f"virtio-blk,file={disk}")])
        with pytest.raises(ConfigError, match="in use by another process"):
            Machine.build(config)
    finally:
        holder.close()
