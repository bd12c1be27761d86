"""net=user: libslirp driven by akvm's backend, fed hand-made guest frames (no guest, no KVM).

Every server a test talks to is one it started on 127.0.0.1."""
import socket
import struct
import time

import pytest

from akvm.config import ConfigError
from akvm.devicetable import parse_device
from akvm.devices.usernet import HostFwd, parse_hostfwd
from tests import netframes as F

GUEST_MAC = F.mac("52:54:00:12:34:56")
GATEWAY_MAC = F.mac("52:55:0a:00:02:02")       # slirp's: 52:55 and the IPv4 address
GUEST, GATEWAY, DNS = "10.0.2.15", "10.0.2.2", "10.0.2.3"


def slirp_or_skip():
    from akvm.devices.usernet import UserBackend, _load
    from akvm.devices.virtio.netback import NetBackendError
    try:
        _load()
    except NetBackendError as e:
        pytest.skip(str(e))
    return UserBackend


@pytest.fixture
def backend():
    made = []

    def make(*args, **kwargs):
        made.append(slirp_or_skip()(*args, **kwargs))
        return made[-1]
    yield make
    for b in made:
        b.close()


def expect(b, predicate, timeout=5.0):
    """The first frame from the backend that satisfies predicate (others are skipped)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        frame = b.recv()
        if frame is None:
            time.sleep(0.002)
            continue
        f = F.parse(frame)
        if predicate(f):
            return f
    raise AssertionError("no such frame came")


def from_guest(payload, ethertype=F.ETH_IP, dst=GATEWAY_MAC):
    return F.eth(dst, GUEST_MAC, ethertype, payload)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- the options -----------------------------------------------------------------------

def test_hostfwd_syntax():
    assert parse_hostfwd("tcp::5555-:22") == HostFwd(False, "127.0.0.1", 5555, GUEST, 22)
    assert parse_hostfwd("udp:0.0.0.0:53-10.0.2.16:5353") == HostFwd(True, "0.0.0.0", 53,
                                                                      "10.0.2.16", 5353)
    assert str(parse_hostfwd("tcp::1-:2")) == "tcp:127.0.0.1:1-10.0.2.15:2"
    for bad, why in (("tcp:5555-:22", "expected tcp|udp"), ("sctp::1-:2", "expected tcp|udp"),
                     ("tcp::0-:22", "host port 0"), ("tcp::1-:70000", "guest port 70000"),
                     ("tcp:localhost:1-:2", "not an IPv4 address"),
                     ("tcp::1-192.168.0.1:2", "not in 10.0.2.0/24")):
        with pytest.raises(ValueError, match=why):
            parse_hostfwd(bad)


def test_repeatable_options_give_a_tuple():
    spec = parse_device("virtio-net,net=user,hostfwd=tcp::5555-:22,hostfwd=udp::53-:53,restrict=on")
    assert spec.values["hostfwd"] == (HostFwd(False, "127.0.0.1", 5555, GUEST, 22),
                                      HostFwd(True, "127.0.0.1", 53, GUEST, 53))
    assert spec.values["restrict"] is True and spec.values["net"] == "user"
    assert parse_device("virtio-net,loopback=on").values["hostfwd"] == ()
    with pytest.raises(ConfigError, match="virtio-net: hostfwd=tcp:1-:2: expected tcp|udp"):
        parse_device("virtio-net,net=user,hostfwd=tcp::1-:2,hostfwd=tcp:1-:2")
    with pytest.raises(ConfigError, match="'net' given twice"):
        parse_device("virtio-net,net=user,net=user")
    with pytest.raises(ConfigError, match="net=tap: expected user"):
        parse_device("virtio-net,net=tap")


# --- libslirp --------------------------------------------------------------------------

def test_dhcp_arp_and_ping_the_gateway(backend):
    b = backend()
    b.send(from_guest(F.dhcp(GUEST_MAC, F.DHCP_DISCOVER), dst=F.BROADCAST))
    offer = expect(b, lambda f: f.dhcp is not None)
    assert offer.dhcp["yiaddr"] == GUEST and offer.dhcp[53] == bytes([F.DHCP_OFFER])
    assert offer.dhcp[3] == socket.inet_aton(GATEWAY) and offer.dhcp[6] == socket.inet_aton(DNS)
    assert offer.dhcp[1] == socket.inet_aton("255.255.255.0")
    b.send(from_guest(F.dhcp(GUEST_MAC, F.DHCP_REQUEST, GUEST), dst=F.BROADCAST))
    ack = expect(b, lambda f: f.dhcp is not None)
    assert ack.dhcp[53] == bytes([F.DHCP_ACK]) and ack.dhcp["yiaddr"] == GUEST

    for ip in (GATEWAY, DNS):
        b.send(from_guest(F.arp_request(GUEST_MAC, GUEST, ip), F.ETH_ARP, F.BROADCAST))
        reply = expect(b, lambda f: f.ethertype == F.ETH_ARP)
        assert reply.arp_op == 2 and reply.arp_sender == (b"\x52\x55" + socket.inet_aton(ip), ip)
        assert reply.dst == GUEST_MAC

    b.send(from_guest(F.icmp_echo(GUEST, GATEWAY, 7, 1, b"ping!")))
    echo = expect(b, lambda f: f.proto == F.IP_ICMP)
    assert (echo.icmp_type, echo.src_ip, echo.payload) == (0, GATEWAY, b"ping!")
    assert b.sent == 5 and b.received >= 5 and b.dropped == 0


def tcp_connect(b, dport, sport=40000, iss=1000):
    """A guest-side handshake to the gateway; returns the gateway's next sequence number."""
    b.send(from_guest(F.tcp(GUEST, GATEWAY, sport, dport, iss, 0, F.TCP_SYN)))
    synack = expect(b, lambda f: f.proto == F.IP_TCP and f.flags & F.TCP_SYN)
    assert synack.flags & F.TCP_ACK and synack.ack == iss + 1
    b.send(from_guest(F.tcp(GUEST, GATEWAY, sport, dport, iss + 1, synack.seq + 1, F.TCP_ACK)))
    return synack.seq + 1


def test_the_gateway_is_the_hosts_loopback(backend):
    b = backend()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    b.send(from_guest(F.arp_request(GUEST_MAC, GUEST, GATEWAY), F.ETH_ARP, F.BROADCAST))
    expect(b, lambda f: f.ethertype == F.ETH_ARP)
    seq = tcp_connect(b, port)
    b.send(from_guest(F.tcp(GUEST, GATEWAY, 40000, port, 1001, seq, F.TCP_ACK | F.TCP_PSH,
                            b"hello host\n")))
    server.settimeout(5)
    conn, peer = server.accept()
    conn.settimeout(5)
    assert peer[0] == "127.0.0.1"
    assert conn.recv(100) == b"hello host\n"
    conn.sendall(b"hello guest\n")
    data = expect(b, lambda f: f.proto == F.IP_TCP and f.payload)
    assert data.payload == b"hello guest\n" and (data.src_ip, data.sport) == (GATEWAY, port)
    conn.close()
    server.close()


RESOLVED = "192.0.2.7"              # TEST-NET-1: what the test's resolver answers


def dns_query(ident: int, name: str) -> bytes:
    """A recursive query for NAME's A record (RFC 1035 4.1)."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def dns_answer(query: bytes, address: str) -> bytes:
    """QUERY answered with one A record: the header flipped to a response, the question
    kept, the answer's name a pointer to it."""
    ident = query[:2]
    return (ident + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + query[12:]
            + struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address))


def answer_dns_in_a_namespace() -> None:
    """Run under `unshare -Urnm` (its own network, mount table and root): make
    /etc/resolv.conf say 127.0.0.1, answer queries there on port 53, and ask 10.0.2.3 for
    akvm.test from the guest's side. Prints what both ends saw, as JSON."""
    import ctypes
    import fcntl
    import json
    import tempfile
    import threading
    SIOCSIFFLAGS, IFF_UP, IFF_LOOPBACK, IFF_RUNNING, MS_BIND = 0x8914, 0x1, 0x8, 0x40, 4096
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo",
                                                  IFF_UP | IFF_LOOPBACK | IFF_RUNNING))
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
        conf.write("nameserver 127.0.0.1\n")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(conf.name.encode(), b"/etc/resolv.conf", None, MS_BIND, None):
        raise OSError(ctypes.get_errno(), "bind-mounting /etc/resolv.conf")
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind(("127.0.0.1", 53))
    seen = {}

    def serve():
        query, peer = resolver.recvfrom(512)
        seen.update(query=query.hex(), peer=peer[0])
        resolver.sendto(dns_answer(query, RESOLVED), peer)
    threading.Thread(target=serve, daemon=True).start()

    b = slirp_or_skip()()
    try:
        b.send(from_guest(F.arp_request(GUEST_MAC, GUEST, DNS), F.ETH_ARP, F.BROADCAST))
        expect(b, lambda f: f.ethertype == F.ETH_ARP)
        b.send(from_guest(F.udp(GUEST, DNS, 5353, 53, dns_query(0x4B56, "akvm.test"))))
        reply = expect(b, lambda f: f.proto == F.IP_UDP and f.sport == 53)
    finally:
        b.close()
    print(json.dumps(dict(seen, src=reply.src_ip, dport=reply.dport,
                          payload=reply.payload.hex())))


def test_dns_at_10_0_2_3_is_the_hosts_resolver():
    """The guest asks 10.0.2.3 and gets what the resolver in the host's /etc/resolv.conf
    answers. The resolver is the test's own, on 127.0.0.1:53 in a user namespace (with its
    own network and /etc/resolv.conf), so nothing leaves the machine."""
    import json
    import pathlib
    import shutil
    import subprocess
    import sys
    slirp_or_skip()
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) (util-linux) to make a namespace for the test's resolver")
    probe = subprocess.run([unshare, "-Urnm", "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"no user namespaces here for the test's resolver: {probe.stderr.strip()}")
    root = pathlib.Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [unshare, "-Urnm", sys.executable, "-c",
         "from tests.unit.test_usernet import answer_dns_in_a_namespace as f; f()"],
        cwd=root, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.splitlines()[-1])
    query = dns_query(0x4B56, "akvm.test")
    assert bytes.fromhex(seen["query"]) == query and seen["peer"] == "127.0.0.1"
    assert (seen["src"], seen["dport"]) == (DNS, 5353)
    assert bytes.fromhex(seen["payload"]) == dns_answer(query, RESOLVED)


def test_hostfwd_reaches_the_guest(backend):
    host_port = free_port()
    b = backend((parse_hostfwd(f"tcp::{host_port}-:2222"),))
    # The guest must be known to slirp's ARP table (its DHCP does that), as a real guest's is.
    b.send(from_guest(F.dhcp(GUEST_MAC, F.DHCP_DISCOVER), dst=F.BROADCAST))
    expect(b, lambda f: f.dhcp is not None)
    client = socket.socket()
    client.setblocking(False)
    client.connect_ex(("127.0.0.1", host_port))
    syn = expect(b, lambda f: f.proto == F.IP_TCP and f.flags & F.TCP_SYN)
    assert (syn.dst_ip, syn.dport, syn.src_ip) == (GUEST, 2222, GATEWAY) and syn.dst == GUEST_MAC
    client.close()
    # Bound to 127.0.0.1 only: the port is free on another local address.
    other = socket.socket()
    other.bind(("127.0.0.2", host_port))
    other.close()


def test_hostfwd_on_a_port_in_use_is_refused(backend):
    from akvm.devices.virtio.netback import NetBackendError
    slirp_or_skip()
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    with pytest.raises(NetBackendError, match=f"cannot listen on 127.0.0.1:{port}: "
                                              "Address already in use"):
        backend((parse_hostfwd(f"tcp::{port}-:22"),))
    taken.close()


def test_restrict_keeps_the_guest_off_the_host(backend):
    b = backend(restrict=True)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    b.send(from_guest(F.arp_request(GUEST_MAC, GUEST, GATEWAY), F.ETH_ARP, F.BROADCAST))
    expect(b, lambda f: f.ethertype == F.ETH_ARP)
    b.send(from_guest(F.tcp(GUEST, GATEWAY, 40000, port, 1000, 0, F.TCP_SYN)))
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


def test_a_nic_that_takes_nothing_never_blocks_the_sender(backend):
    """Nobody takes what slirp sends to the guest: the queue fills, frames are dropped and
    counted (every ping answered, then queued or dropped), and sending stays instant."""
    b = backend()
    limit = b._queue_limit
    ping = from_guest(F.icmp_echo(GUEST, GATEWAY, 7, 1))
    start = time.monotonic()
    for _ in range(3 * limit):
        b.send(ping)
    assert time.monotonic() - start < 1.0
    end = time.monotonic() + 10
    while sum(b.counts[1:]) < 3 * limit and time.monotonic() < end:
        time.sleep(0.01)
    queued = 0
    while b.recv() is not None:
        queued += 1
    to_network, _, to_python, dropped = b.counts
    assert queued == limit and to_python == limit
    assert to_network + b.dropped == 3 * limit and dropped == 2 * limit


def test_close_is_prompt_and_frees_the_forwarded_port(backend):
    port = free_port()
    b = backend((parse_hostfwd(f"tcp::{port}-:22"),))
    start = time.monotonic()
    b.close()
    assert time.monotonic() - start < 1.0
    socket.create_server(("127.0.0.1", port)).close()


def test_virtio_net_on_user_networking_gets_a_lease():
    """The device on its thread, a driver in Python: DHCP DISCOVER out through the
    transmit queue, the OFFER back in a receive buffer, woken by the backend."""
    import os
    from akvm.devices.virtio.net import HDR, VirtioNet
    from tests.unit.virtio_driver import DATA, bring_up, new_memory, wait_for
    dev = VirtioNet(slirp_or_skip()(), GUEST_MAC)
    mem = new_memory()
    rx, tx = bring_up(dev, mem)
    dev.start()
    try:
        rx.add([(DATA + 0x80000, 2048, True)])
        os.eventfd_write(dev.kick_fds[0], 1)
        discover = from_guest(F.dhcp(GUEST_MAC, F.DHCP_DISCOVER), dst=F.BROADCAST)
        mem.write(DATA, bytes(HDR.size) + discover)
        tx.add([(DATA, HDR.size + len(discover), False)])
        os.eventfd_write(dev.kick_fds[1], 1)
        assert wait_for(lambda: rx.used_idx == 1)
        (_, n), = rx.take_used()
        offer = F.parse(mem.read(DATA + 0x80000 + HDR.size, n - HDR.size))
        assert offer.dhcp["yiaddr"] == GUEST and offer.dst == F.BROADCAST
    finally:
        dev.close()


def test_without_libslirp_one_line_says_what_to_install(monkeypatch):
    import sys
    import akvm.devices.usernet as usernet
    from akvm.builders import net_backend
    monkeypatch.setattr(usernet, "_binding", None)
    monkeypatch.setitem(sys.modules, "akvm.devices._slirp", None)     # as if never built
    with pytest.raises(ConfigError, match=r"^virtio-net: net=user: akvm was built without "
                                          r"libslirp: install libslirp-dev"):
        net_backend(parse_device("virtio-net,net=user"))


@pytest.mark.parametrize("text,message", [
    ("virtio-net,loopback=on,hostfwd=tcp::1-:2", "virtio-net: hostfwd= and restrict= need net=user"),
    ("virtio-net,loopback=on,restrict=on", "virtio-net: hostfwd= and restrict= need net=user"),
    ("virtio-net,net=user,loopback=on", "virtio-net: give exactly one backend: net=user, tap=NAME"),
])
def test_backend_choice_errors(text, message):
    from akvm.builders import net_backend
    with pytest.raises(ConfigError, match=f"^{message}"):
        net_backend(parse_device(text))


class E1000OnSlirp:
    """An e1000 with direct DMA on a real UserBackend (its rings in C on the backend's
    thread), driven by hand: TDT written through the vCPU's exit handler, as KVM_RUN
    would hand it over."""

    RING, TX, RX, BUFS, TXBUF = 16, 0x1000, 0x2000, 0x10000, 0x8000

    def __init__(self):
        from akvm.base.bus import Bus
        from akvm.base.dma import DirectDma
        from akvm.base.irq import IrqLine
        from akvm.base.memory import GuestMemory
        from akvm.devices import e1000 as E
        from akvm.devices.pci import PciRoot
        from akvm.devices.pci.config import COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE
        from tests.unit.test_fastpath import RunPage
        self.E = E
        self.mem = GuestMemory.from_bytearray(1 << 20)
        self.backend = slirp_or_skip()()
        self.dev = E.E1000(self.backend, GUEST_MAC)
        root = PciRoot(None, Bus("mmio"), mmio_window=(0xC000_0000, 0xE000_0000), io_window=None,
                       irq=lambda gsi: IrqLine(gsi), dma=lambda rid: DirectDma(self.mem))
        root.add(self.dev)
        self.dev.set_command(COMMAND_BUS_MASTER | COMMAND_MEMORY_SPACE)
        for i in range(self.RING):
            self.mem.write(self.RX + 16 * i, (self.BUFS + 2048 * i).to_bytes(8, "little"))
        for reg, value in ((E.TDBAL, self.TX), (E.TDLEN, self.RING * 16), (E.TCTL, E.TCTL_EN),
                           (E.RDBAL, self.RX), (E.RDLEN, self.RING * 16),
                           (E.RCTL, E.RCTL_EN | E.RCTL_BAM | E.RCTL_SECRC),
                           (E.RDT, self.RING - 1)):
            self.dev.write(reg, 4, value)
        self.dev.start()
        end = time.monotonic() + 5
        while not self.dev.s.native and time.monotonic() < end:
            time.sleep(0.005)
        assert self.dev.s.native
        self.run_page = RunPage()
        self.tail = 0
        self.rx_next = 0

    def send(self, frame):
        """One frame in the next transmit descriptor, then the vCPU's TDT write."""
        from akvm.base.native import ffi, lib
        E = self.E
        t = self.tail
        self.mem.write(self.TXBUF + 2048 * t, frame)
        cmd = E.TXD_CMD_EOP | E.TXD_CMD_IFCS | E.TXD_CMD_RS
        self.mem.write(self.TX + 16 * t, (self.TXBUF + 2048 * t).to_bytes(8, "little") +
                       (len(frame) | cmd << 24).to_bytes(8, "little"))
        self.tail = (t + 1) % self.RING
        self.run_page.mmio(self.dev.bar_address(0) + E.TDT, 4, True, self.tail)
        assert lib.akvm_e1000_exit(self.dev.handle, ffi.cast("void *", self.run_page.address))

    def received(self):
        """The next received frame if its descriptor is done (FCS cut), else None."""
        desc = self.mem.read(self.RX + 16 * self.rx_next, 16)
        if not desc[12] & self.E.RXD_STAT_DD:
            return None
        length = int.from_bytes(desc[8:10], "little")
        frame = self.mem.read(self.BUFS + 2048 * self.rx_next, length)
        self.rx_next += 1
        return F.parse(frame)                   # (RCTL.SECRC: no FCS)

    def wait_received(self, timeout=5.0):
        end = time.monotonic() + timeout
        while (f := self.received()) is None and time.monotonic() < end:
            time.sleep(0.002)
        return f

    def close(self):
        self.dev.close()


def arp_for_the_gateway():
    return from_guest(F.arp_request(GUEST_MAC, GUEST, GATEWAY), F.ETH_ARP, F.BROADCAST)


def test_e1000_frames_reach_slirp_on_the_vcpu_and_the_answer_is_there_at_once():
    """A TDT write runs the engine's turn on the vCPU itself (no thread to wake): the
    frame reaches libslirp, and slirp's answer is in the receive ring before the exit
    handler returns. (The engine's thread may be busy at that moment: the vCPU then leaves
    the turn to it, so a few tries are allowed.)"""
    nic = E1000OnSlirp()
    try:
        for _ in range(10):
            before = nic.dev.s.direct
            nic.send(arp_for_the_gateway())
            if nic.dev.s.direct > before:
                reply = nic.received()          # no wait: placed within the exit
                assert reply is not None and reply.arp_op == 2
                assert reply.arp_sender == (b"\x52\x55" + socket.inet_aton(GATEWAY), GATEWAY)
                break
            assert nic.wait_received().arp_op == 2
            time.sleep(0.05)
        else:
            raise AssertionError("the vCPU never ran the turn itself")
        assert nic.backend.vcpu_turns[0] >= 1
        assert nic.dev.stats()["sent_by_vcpu"] == nic.dev.s.direct
    finally:
        nic.close()


def test_e1000_frame_sent_while_a_snapshot_holds_the_thread_waits_and_is_not_lost():
    """pause() holds the backend's thread and keeps vCPUs from running its turn: the frame
    a TDT write gathers stays in the NIC's queue (where a snapshot saves it), nothing
    reaches slirp, and after resume() the thread sends it."""
    nic = E1000OnSlirp()
    try:
        to_network = nic.backend.counts[0]
        direct = nic.dev.s.direct
        assert nic.dev.pause(5)
        try:
            frame = arp_for_the_gateway()
            nic.send(frame)
            time.sleep(0.05)
            assert nic.dev.s.direct == direct and nic.backend.counts[0] == to_network
            assert [q[:len(frame)] for q in nic.dev._queued_frames()] == [frame]
            assert len(nic.dev.device_snapshot()["queued"]) == 1
            assert nic.received() is None
        finally:
            nic.dev.resume()
        reply = nic.wait_received()
        assert reply is not None and reply.arp_op == 2
        assert nic.backend.counts[0] == to_network + 1 and nic.dev._queued_frames() == []
    finally:
        nic.close()


def test_e1000_after_close_the_vcpu_no_longer_enters_the_engine():
    """close() frees the engine only once the NIC is detached from it: a later TDT write
    falls back to the queue (no use of freed memory)."""
    nic = E1000OnSlirp()
    nic.close()
    direct = nic.dev.s.direct
    nic.dev.s.native = 1                # as if a vCPU raced the close: still no turn
    nic.send(arp_for_the_gateway())
    assert nic.dev.s.direct == direct


def test_virtio_net_transmit_notify_in_c_runs_slirp_on_the_vcpu():
    """With the queues in C, the transport is asked to complete the transmit queue's notify
    address in C (netq.c's handler, not its ioeventfd); a notify there runs the engine's
    turn on the vCPU: the DHCP DISCOVER reaches slirp and the OFFER is in the receive
    queue when the handler returns. A reset gives the address back to the kernel."""
    import os
    from akvm.base.native import ffi, lib
    from akvm.devices.virtio.net import HDR, TRANSMITQ, VirtioNet
    from tests.unit.test_fastpath import RunPage
    from tests.unit.virtio_driver import DATA, Recorder, bring_up, new_memory, wait_for

    class Transport(Recorder):
        def __init__(self):
            super().__init__()
            self.in_c = {}

        def notify_in_c(self, index, function, owner):
            self.in_c[index] = (function, owner)
            return True

        def notify_in_kernel(self, index):
            self.in_c.pop(index, None)

    dev = VirtioNet(slirp_or_skip()(), GUEST_MAC, tx_by_vcpu=True)
    dev.transport = transport = Transport()
    mem = new_memory()
    rx, tx = bring_up(dev, mem)
    dev.start()
    run_page = RunPage()
    try:
        assert wait_for(lambda: TRANSMITQ in transport.in_c)
        function, native = transport.in_c[TRANSMITQ]
        assert function == "akvm_vnetq_exit" and native is dev._native
        discover = from_guest(F.dhcp(GUEST_MAC, F.DHCP_DISCOVER), dst=F.BROADCAST)
        for attempt in range(10):
            rx.add([(DATA + 0x80000 + 0x1000 * attempt, 2048, True)])
            os.eventfd_write(dev.kick_fds[0], 1)
            time.sleep(0.05)                    # (the engine's thread takes the buffer)
            used = rx.used_idx
            mem.write(DATA + 0x1000 * attempt, bytes(HDR.size) + discover)
            tx.add([(DATA + 0x1000 * attempt, HDR.size + len(discover), False)])
            run_page.mmio(0xC000_3004, 2, True, TRANSMITQ)
            assert lib.akvm_vnetq_exit(native.handle, ffi.cast("void *", run_page.address))
            stats = dev.stats()
            if stats["tx_sent_by_vcpu"]:
                assert rx.used_idx == used + 1          # the OFFER, placed within the exit
                break
            assert wait_for(lambda: rx.used_idx == used + 1)
        else:
            raise AssertionError("the vCPU never ran the turn itself")
        (_, n), = rx.take_used()[-1:]
        offer = F.parse(mem.read(DATA + 0x80000 + 0x1000 * attempt + HDR.size, n - HDR.size))
        assert offer.dhcp["yiaddr"] == GUEST
        assert stats["tx_notify_exits_in_c"] == attempt + 1
        assert dev.backend.vcpu_turns[0] >= 1
        dev.reset()
        assert wait_for(lambda: TRANSMITQ not in transport.in_c)
    finally:
        dev.close()


def test_the_engine_polls_awake_only_just_after_frames_moved():
    """After an exchange the engine's thread polls without sleeping for a moment
    (slirp_build.py, AKS_SPIN_NS), then sleeps: an idle NIC costs no CPU."""
    nic = E1000OnSlirp()
    try:
        nic.send(arp_for_the_gateway())
        assert nic.wait_received() is not None          # frames moved both ways
        before = time.process_time()                    # every thread of this process
        time.sleep(2.0)                 # (the thread may sleep up to 1 s before it sees them)
        assert time.process_time() - before < 0.2
    finally:
        nic.close()
