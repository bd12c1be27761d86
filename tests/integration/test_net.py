"""Networking as a guest sees it: the bundled guest's ring-3 driver and IPv4 stack
(guest/user/net.c) on akvm's NICs over user networking (libslirp).

Each test starts its own servers on 127.0.0.1 and talks to nothing else: the guest
reaches them through its gateway 10.0.2.2, and the host reaches the guest through a
hostfwd port."""
import re
import socket
import subprocess
import sys
import threading

import pytest

from tests.conftest import needs_kvm, needs_qemu

pytestmark = needs_kvm

TIMEOUT = 120
GUEST_PORT = 2222


def libslirp_or_skip():
    from akvm.devices.usernet import _load
    from akvm.devices.virtio.netback import NetBackendError
    try:
        _load()
    except NetBackendError as e:
        pytest.skip(str(e))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class LineServer(threading.Thread):
    """A host TCP server on 127.0.0.1: reads one line, answers 'hello guest', keeps the line."""

    def __init__(self):
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lines = []
        self.peers = []

    def run(self):
        self.server.settimeout(TIMEOUT)
        while True:
            try:
                conn, peer = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(30)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(256)
                    if not chunk:
                        break
                    data += chunk
                self.lines.append(data.decode())
                self.peers.append(peer)
                conn.sendall(b"hello guest\n")
                conn.recv(16)                   # until the guest closes

    def close(self):
        self.server.close()


@pytest.fixture
def line_server():
    libslirp_or_skip()
    server = LineServer()
    server.start()
    yield server
    server.close()


def check(guest, device, server, fwd_port, kind=None):
    """`net check` on one NIC: DHCP, ARP, ping, a TCP exchange with `server` through the
    gateway, then one through the host forward fwd_port -> the guest's GUEST_PORT."""
    before, start = len(server.lines), len(guest.serial_log)
    opt = f"-d {kind} " if kind else ""
    guest.send(f"run net {opt}check {server.port} {GUEST_PORT}\r")
    guest.expect(rf"net: tcp listening on 10\.0\.2\.15:{GUEST_PORT}", timeout=60)
    with socket.create_connection(("127.0.0.1", fwd_port), timeout=30) as c:
        c.sendall(b"from the host\n")
        assert c.recv(100) == b"echo: from the host\n"
    guest.expect(guest.prompt, timeout=60)
    out = guest.serial_log[start:]
    assert re.search(r"pid \d+ \(net\): exit status 0", out), out
    assert "net: dhcp 10.0.2.15 mask 255.255.255.0 gateway 10.0.2.2 dns 10.0.2.3" in out
    assert "net: arp 10.0.2.2 is-at 52:55:0a:00:02:02" in out
    assert "net: ping 10.0.2.2: 3/3 replies" in out
    assert f"got 'hello guest', closed" in out
    assert re.search(r"net: tcp accepted 10\.0\.2\.2:\d+, got 'from the host', answered", out)
    assert len(server.lines) == before + 1, server.lines
    assert re.fullmatch(f"hello from 10\\.0\\.2\\.15 over {device}\n", server.lines[-1]), server.lines
    assert server.peers[-1][0] == "127.0.0.1"
    return out


def test_virtio_net_pci_and_mmio_on_user_networking(akvm_guest_factory, line_server):
    """Two NICs, each on its own libslirp: virtio-net on PCI (its MAC given, read by the
    driver from the configuration space) and on virtio-mmio."""
    fwd_pci, fwd_mmio = free_port(), free_port()
    guest = akvm_guest_factory(args=[
        "--device", f"virtio-net,net=user,hostfwd=tcp::{fwd_pci}-:{GUEST_PORT},mac=02:00:00:aa:bb:cc,"
                    "tx=vcpu",
        "--device", f"virtio-net,net=user,hostfwd=tcp:127.0.0.1:{fwd_mmio}-:{GUEST_PORT},"
                    "transport=mmio", "--stats"],
        cmdline="virtio_mmio.device=0x200@0xf0000000:5", timeout=TIMEOUT)
    out = check(guest, "virtio-net pci 00:01.0", line_server, fwd_pci, "virtio-pci")
    assert "net: virtio-net pci 00:01.0 mac 02:00:00:aa:bb:cc, DMA to physical addresses" in out
    out = check(guest, "virtio-net mmio", line_server, fwd_mmio, "virtio-mmio")
    assert "net: virtio-net mmio mac 02:41:4b:56:4d:02, DMA to physical addresses" in out
    guest.close()
    for nic in ("virtio-net0", "virtio-net1"):
        m = re.search(rf"^\s*{nic}: (\d+) frames out, (\d+) in, 0 dropped, 0 errors; (\d+) "
                      r"transmit notifications in C \((\d+) sent by the vCPU\)", guest.serial_log,
                      re.M)
        assert m and int(m.group(1)) >= 15 and int(m.group(2)) >= 15, guest.serial_log[-3000:]
        if nic == "virtio-net0":        # PCI, tx=vcpu: the transmit notify completes in C,
            assert 0 < int(m.group(4)) <= int(m.group(3)), m.group(0)    # the vCPU runs libslirp
        else:                           # virtio-mmio: its ioeventfd and the engine's thread
            assert int(m.group(3)) == 0, m.group(0)


def test_virtio_net_behind_the_iommu(akvm_guest_factory, line_server):
    fwd = free_port()
    guest = akvm_guest_factory(args=[
        "--device", f"virtio-net,net=user,hostfwd=tcp::{fwd}-:{GUEST_PORT}", "--iommu", "vtd",
        "--stats"], timeout=TIMEOUT)
    out = check(guest, "virtio-net pci 00:01.0", line_server, fwd)
    assert "mac 02:41:4b:56:4d:01, DMA through the IOMMU" in out
    guest.close()
    m = re.search(r"iommu: enabled, (\d+) translations", guest.serial_log)
    assert m and int(m.group(1)) > 100, guest.serial_log[-3000:]
    assert re.search(r"iotlb domain [2-9]\d*: \d+ hits", guest.serial_log)    # the process's


def test_a_forward_on_a_port_in_use_is_one_line(tiny_kernel):
    libslirp_or_skip()
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "akvm", "run", "--kernel", str(tiny_kernel),
                        "--serial", "none", "--device",
                        f"virtio-net,net=user,hostfwd=tcp::{port}-:22"],
                       capture_output=True, text=True, timeout=60)
    taken.close()
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"akvm: error: virtio-net: net=user: hostfwd=tcp:127.0.0.1:{port}-10.0.2.15:22: "
        f"cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_e1000_on_user_networking(akvm_guest_factory, line_server):
    """The ring-0 probe (reset, EEPROM, PHY, one INTx interrupt) and the ring-3 driver."""
    fwd = free_port()
    guest = akvm_guest_factory(args=[
        "--device", f"e1000,net=user,hostfwd=tcp::{fwd}-:{GUEST_PORT},mac=02:00:00:00:10:00",
        "--stats"], timeout=TIMEOUT)
    result = guest.selftest("e1000")
    assert result.passed == ["e1000"], result.output
    assert re.search(r"e1000 00:\w\w\.0: mac 02:00:00:00:10:00 \(EEPROM sum 0xbaba\), PHY 0141:0c20 "
                     r"link up, autonegotiation complete, INTA# -> GSI (1[6-9]|2[0-3]) -> vector "
                     r"0xd6: ICR 0xc", result.output), result.output
    out = check(guest, "e1000", line_server, fwd, "e1000")
    assert "net: e1000 mac 02:00:00:00:10:00, DMA to physical addresses" in out
    guest.close()
    m = re.search(r"^\s*e1000-0: (\d+) frames out, (\d+) in, 0 dropped, 0 errors; ([1-9]\d*) "
                  r"TDT/RDT writes in C \((\d+) sent by the vCPU\); 1 interrupts; link up",
                  guest.serial_log, re.M)
    assert m and int(m.group(1)) >= 15 and int(m.group(2)) >= 15, guest.serial_log[-3000:]
    assert 0 < int(m.group(4)) <= int(m.group(3))      # the vCPU runs libslirp's input


def test_e1000_behind_the_iommu(akvm_guest_factory, line_server):
    fwd = free_port()
    guest = akvm_guest_factory(args=[
        "--device", f"e1000,net=user,hostfwd=tcp::{fwd}-:{GUEST_PORT}", "--iommu", "vtd",
        "--stats"], timeout=TIMEOUT)
    out = check(guest, "e1000", line_server, fwd, "e1000")
    assert "net: e1000 mac 02:41:4b:56:4d:01, DMA through the IOMMU" in out
    guest.close()
    m = re.search(r"iommu: enabled, (\d+) translations", guest.serial_log)
    assert m and int(m.group(1)) >= 31, guest.serial_log[-3000:]      # one a frame at least
    assert re.search(r"iotlb domain [2-9]\d*: \d+ hits", guest.serial_log)    # the process's
    assert "faults: none" in guest.serial_log


def test_two_akvm_exchange_frames_over_a_socket(akvm_guest_factory, tmp_path):
    """e1000 in one, virtio-net in the other, on one SOCK_SEQPACKET link: ARP, then pings
    answered, with static addresses (no DHCP server on this link)."""
    path = tmp_path / "link.sock"
    a = akvm_guest_factory(args=["--device", f"e1000,socket={path}"], timeout=TIMEOUT)
    b = akvm_guest_factory(args=["--device", f"virtio-net,socket={path},mac=02:00:00:00:00:0b"],
                           timeout=TIMEOUT)
    a.send("run net answer 10.0.0.1 5\r")
    a.expect("net: answering on 10.0.0.1")
    out = b.command("run net peer 10.0.0.2 10.0.0.1 5", timeout=60)
    assert "net: ping 10.0.0.1: 5/5 replies" in out, out
    a.expect(a.prompt, timeout=60)
    assert re.search(r"net: answered 5 pings; \d+ frames out, \d+ in\s+pid \d+ \(net\): exit "
                     r"status 0", a.serial_log), a.serial_log[-2000:]


@needs_qemu
def test_the_same_driver_on_qemus_nics(akvm_guest_factory, line_server):
    """The cross-check: the guest's probe and driver on QEMU's e1000 and virtio-net-pci
    with QEMU's user networking (the same libslirp)."""
    fwd_e, fwd_v = free_port(), free_port()
    guest = akvm_guest_factory(vmm="qemu", timeout=TIMEOUT, args=[
        "-nic", f"user,model=e1000,hostfwd=tcp:127.0.0.1:{fwd_e}-:{GUEST_PORT}",
        "-netdev", f"user,id=n1,hostfwd=tcp:127.0.0.1:{fwd_v}-:{GUEST_PORT}",
        "-device", "virtio-net-pci,netdev=n1,disable-legacy=on"])
    result = guest.selftest("e1000")
    assert result.passed == ["e1000"], result.output
    check(guest, "e1000", line_server, fwd_e, "e1000")
    check(guest, r"virtio-net pci 00:\w\w\.0", line_server, fwd_v, "virtio-pci")


def pings_went_on(restored) -> None:
    """The restored guest's `pingloop` ends, its pings answered across the snapshot."""
    restored.expect(r"net: ping 10\.0\.2\.2: (\d+)/(\d+) replies, the last \d+ ms before the end",
                    timeout=60)
    answered, sent = (int(g) for g in restored.child.match.groups())
    restored.expect(restored.prompt, timeout=30)
    assert re.search(r"pid \d+ \(net\): exit status 0", restored.serial_log), restored.serial_log
    assert answered >= sent - 3


def test_a_snapshot_with_the_nic_at_work(akvm_guest_factory, tmp_path):
    """Saved while a process pings through virtio-net (its queues served in C), resumed in a
    new akvm with a new libslirp: the rings go on where they were, the pings are answered.
    By default (tx=thread) the transmit notify stays the ioeventfd's: none reaches C."""
    libslirp_or_skip()
    guest = akvm_guest_factory(args=["--device", "virtio-net,net=user"],
                               control=tmp_path / "control.sock", timeout=TIMEOUT)
    guest.send("run net pingloop 6\r")
    guest.expect("net: pinging 10.0.2.2 for 6 s")
    guest.snapshot(tmp_path / "snap")
    guest.close()
    restored = akvm_guest_factory(restore=tmp_path / "snap", timeout=TIMEOUT, wait_prompt=False,
                                  args=["--stats"])
    pings_went_on(restored)
    restored.close()
    m = re.search(r"^\s*virtio-net0: (\d+) frames out, .* (\d+) transmit notifications in C",
                  restored.serial_log, re.M)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) == 0, restored.serial_log[-3000:]


@pytest.mark.parametrize("iommu", [[], ["--iommu", "vtd"]], ids=["no-iommu", "vtd"])
def test_a_snapshot_with_the_e1000_at_work(akvm_guest_factory, line_server, tmp_path, iommu):
    """Saved while a process pings through the e1000 (its rings served in C, behind VT-d
    through the unit's translator in C), resumed in a new akvm with a new libslirp: the rings and registers go
    on where they were and the pings are answered; then the probe's INTx interrupt and a
    whole DHCP, ping and TCP exchange, the host forward included, on the restored NIC."""
    fwd = free_port()
    guest = akvm_guest_factory(args=["--device", f"e1000,net=user,hostfwd=tcp::{fwd}-:{GUEST_PORT}",
                                     *iommu], control=tmp_path / "control.sock", timeout=TIMEOUT)
    guest.send("run net -d e1000 pingloop 6\r")
    guest.expect("net: pinging 10.0.2.2 for 6 s")
    client = guest.control_client()
    client.execute("stop")
    saved = client.execute("query-stats")["devices"][0]
    guest.snapshot(tmp_path / "snap")
    client.execute("quit")                  # its forward's port is the restored machine's
    assert guest.wait_exit() == 0

    restored = akvm_guest_factory(restore=tmp_path / "snap", timeout=TIMEOUT, wait_prompt=False,
                                  args=["--stats"])
    pings_went_on(restored)
    result = restored.selftest("e1000")
    assert result.passed == ["e1000"], result.output
    out = check(restored, "e1000", line_server, fwd, "e1000")
    dma = "DMA through the IOMMU" if iommu else "DMA to physical addresses"
    assert f"net: e1000 mac 02:41:4b:56:4d:01, {dma}" in out
    restored.close()
    m = re.search(r"^\s*e1000-0: (\d+) frames out, (\d+) in, \d+ dropped, 0 errors; (\d+) TDT/RDT "
                  r"writes in C", restored.serial_log, re.M)
    assert m, restored.serial_log[-3000:]
    frames_out, frames_in, in_c = (int(g) for g in m.groups())
    assert frames_out > saved["tx_frames"] + 15 and frames_in > saved["rx_frames"] + 15
    assert in_c > saved["exits_in_c"] > 0           # C's again, after the restore
