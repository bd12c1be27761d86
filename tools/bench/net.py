"""User networking, guest-measured: UDP round trips and TCP MB/s both ways, per NIC.

The bundled guest's `net bench` (guest/user/net.c: its ring-3 driver and
IPv4 stack, polled) talks through its NIC and user networking (libslirp on
both sides: akvm `--device KIND,net=user`, QEMU `-nic user,model=e1000` and
`-netdev user` with `virtio-net-pci`) to servers this process runs on
127.0.0.1, reached through the gateway 10.0.2.2:

- UDP: ROUNDS round trips of a 64-byte datagram with an echo server; the
  figure is frames per second, two frames a round trip (request, reply);
- TCP guest->host: BYTES to a sink that reads and discards;
- TCP host->guest: BYTES from a source that writes and closes.

One boot per VMM and run serves both NICs (e1000 and virtio-net); runs
alternate between the VMMs, figures are medians. The guest's ring 3 is
native on this host, so these measure the VMMs' device models and backends
(and the exits each driver makes), not ring-0 emulation.

Then virtio-net with `tx=vcpu` (the vCPU that notifies sends, instead of the
backend's thread), and the e1000 behind VT-d, the guest's driver DMAing
through a translated context: akvm `--iommu vtd`, QEMU's intel-iommu, which
wants its q35 machine with the IOAPIC in QEMU (kernel-irqchip=split).
"""
from __future__ import annotations

import re
import socket
import statistics
import threading

from akvm.testing import Guest
from tools.bench.common import Row, have_qemu

RUNS = 5
ROUNDS = 2000
BYTES = 16 << 20
NICS = (("virtio-net", "virtio-pci"), ("e1000", "e1000"))
_BENCH = re.compile(r"^BENCH (net-\S+) iterations=\d+ ns_per_op=\d+ (.*)$", re.M)


class Servers:
    """The host side: a UDP echo server, a TCP sink and a TCP source on 127.0.0.1."""

    def __init__(self):
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.sink = socket.create_server(("127.0.0.1", 0))
        self.source = socket.create_server(("127.0.0.1", 0))
        for target in (self._echo, self._drain, self._feed):
            threading.Thread(target=target, daemon=True).start()

    @property
    def ports(self) -> tuple[int, int, int]:
        return tuple(s.getsockname()[1] for s in (self.udp, self.sink, self.source))

    def _echo(self):
        while True:
            data, peer = self.udp.recvfrom(2048)
            self.udp.sendto(data, peer)

    def _drain(self):
        while True:
            conn, _ = self.sink.accept()
            with conn:
                while conn.recv(1 << 16):
                    pass

    def _feed(self):
        chunk = bytes(1 << 16)
        while True:
            conn, _ = self.source.accept()
            with conn:
                left = BYTES
                while left:
                    left -= conn.send(chunk[:min(left, len(chunk))])


# (what the rows say of the machine, its NICs, akvm's arguments, QEMU's)
SETUPS = (
    ("user networking", NICS,
     ["--device", "e1000,net=user", "--device", "virtio-net,net=user"],
     ["-nic", "user,model=e1000",
      "-netdev", "user,id=n1", "-device", "virtio-net-pci,netdev=n1,disable-legacy=on"]),
    ("user networking, tx=vcpu", NICS[:1], ["--device", "virtio-net,net=user,tx=vcpu"],
     ["-netdev", "user,id=n1", "-device", "virtio-net-pci,netdev=n1,disable-legacy=on"]),
    ("behind VT-d, user networking", NICS[1:],
     ["--device", "e1000,net=user", "--iommu", "vtd"],
     ["-machine", "q35,kernel-irqchip=split",
      "-device", "intel-iommu,aw-bits=48,caching-mode=off", "-nic", "user,model=e1000"]),
)


def guest_bench(vmm: str, servers: Servers, nics, akvm_args: list[str],
                qemu_args: list[str]) -> dict[str, dict[str, float]]:
    """{nic: {"frames": UDP frames/s, "tx": MB/s, "rx": MB/s}} from one boot."""
    udp, sink, source = servers.ports
    found = {}
    with Guest(cpus=1, vmm=vmm, args=qemu_args if vmm == "qemu" else akvm_args,
               timeout=600) as guest:
        for nic, kind in nics:
            out = guest.command(f"run net -d {kind} bench {udp} {sink} {source} {BYTES} {ROUNDS}",
                                timeout=600)
            fields = {name: dict(kv.split("=") for kv in rest.split())
                      for name, rest in _BENCH.findall(out)}
            if set(fields) != {"net-udp-rr", "net-tcp-tx", "net-tcp-rx"}:
                raise RuntimeError(f"{vmm} {nic}: the guest's net bench did not run:\n{out}")
            found[nic] = {"frames": float(fields["net-udp-rr"]["frames_per_s"]),
                          "tx": float(fields["net-tcp-tx"]["MBps"]),
                          "rx": float(fields["net-tcp-rx"]["MBps"])}
    return found


def run() -> list[Row]:
    servers = Servers()
    vmms = ["akvm"] + (["qemu"] if have_qemu() else [])
    rows = []
    for setup, nics, akvm_args, qemu_args in SETUPS:
        runs: dict[str, list] = {"akvm": [], "qemu": []}
        for _ in range(RUNS):
            for vmm in vmms:
                runs[vmm].append(guest_bench(vmm, servers, nics, akvm_args, qemu_args))
        for nic, _ in nics:
            for field, unit, what in (
                    ("frames", "frames/s", f"{ROUNDS} UDP round trips of 64 bytes (2 frames each)"),
                    ("tx", "MB/s", f"TCP guest -> host, {BYTES >> 20} MiB"),
                    ("rx", "MB/s", f"TCP host -> guest, {BYTES >> 20} MiB")):
                akvm = statistics.median(r[nic][field] for r in runs["akvm"])
                qemu = (statistics.median(r[nic][field] for r in runs["qemu"]) if runs["qemu"]
                        else None)
                rows.append(Row(f"{nic}, {setup}: {what}", unit, akvm, "QEMU", qemu,
                                f"guest-measured (ring 3, polled), host servers on 127.0.0.1 via "
                                f"10.0.2.2; median of {RUNS} alternating boots"))
    return rows
