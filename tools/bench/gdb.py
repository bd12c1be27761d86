"""GDB stubs side by side: akvm's (--gdb) and QEMU's (-enable-kvm -gdb, what -s does on a
port of our choosing), the same bundled guest, the same gdb, in one run.

gdb attaches at the guest's prompt and puts a breakpoint on the OUT in the loop of the
guest's `bench pio` (three ring-0 instructions and one port write per iteration), then
`bench pio` is typed on the console:

- breakpoint round trip: `ignore` N, then one `continue` that hits N + 1 times; each hit
  is a stop reported to gdb, which steps over the breakpoint and continues (z, vCont;s,
  Z, vCont;c), and one turn of the guest's loop.
- single-steps: `stepi N` from there, each a step reported to gdb.

Both are what a gdb user waits for, stub and gdb together. The same two are then
measured with a bare protocol client instead of gdb (the packets gdb sends, nothing
else: vCont;s:1 per step; z1, vCont;s:1, Z1, vCont;c per hit), which is the stubs'
own cost. Ring 0 is emulated (kvm_pvm) on both sides. QEMU's software breakpoints end
in a KVM internal error on this host (its int3 is an emulation failure QEMU does not
handle: gdb sees SIGABRT), so its round trip is measured with `hbreak`, and akvm's with
both.
"""
from __future__ import annotations

import re
import socket
import sys
import time

from akvm import guest_kernel
from akvm.gdb.packets import Packet, PacketReader, frame
from akvm.testing import Guest
from akvm.testing.gdb import Gdb
from tools.bench.common import Row, have_qemu

HITS = 200          # breakpoint round trips per measurement
STEPS = 1000        # single-steps per measurement
RUNS = 5


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def out_address(gdb: Gdb) -> int:
    """The OUT in bench_pio's loop."""
    listing = gdb.cmd("x/30i bench_pio")
    m = re.search(r"^\s*(?:=> )?(0x[0-9a-f]+) <bench_pio\+\d+>:\s+out\s", listing, re.M)
    if not m:
        raise RuntimeError(f"no OUT in bench_pio:\n{listing}")
    return int(m.group(1), 16)


def session(vmm: str, breakpoint: str) -> dict[str, float]:
    """Seconds per breakpoint round trip and per single-step, under one VMM."""
    kernel = guest_kernel.build()
    port = free_port()
    args = ["--gdb", f"tcp::{port}"] if vmm == "akvm" else ["-gdb", f"tcp:127.0.0.1:{port}"]
    with Guest(kernel, vmm=vmm, cpus=1, args=args, timeout=120) as guest:
        gdb = Gdb(kernel.with_name("kernel.elf64"), timeout=300)
        try:
            gdb.cmd(f"target remote 127.0.0.1:{port}")
            gdb.cmd(f"{breakpoint} *{out_address(gdb):#x}")
            gdb.start("continue")
            gdb.child.expect("Continuing.")
            guest.send("bench pio\r")
            out = gdb.wait_stop()
            if "Breakpoint 1," not in out:
                raise RuntimeError(f"{vmm}: {breakpoint} did not stop:\n{out}")
            gdb.cmd(f"ignore 1 {HITS - 1}")
            t0 = time.perf_counter()
            out = gdb.cmd("continue")
            hits = time.perf_counter() - t0
            if "Breakpoint 1," not in out:
                raise RuntimeError(f"{vmm}: the round trips did not end on the breakpoint:\n{out}")
            gdb.cmd("delete")
            t0 = time.perf_counter()
            gdb.cmd(f"stepi {STEPS}")
            steps = time.perf_counter() - t0
            gdb.cmd("kill" if vmm == "qemu" else "detach")
        finally:
            gdb.close()
    return {"hit": hits / HITS, "step": steps / STEPS}


class Raw:
    """A bare GDB protocol client: packets out, replies in; no acks once the stub agrees."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = PacketReader(max_size=1 << 20)
        self.pending: list[bytes] = []
        self.ack = True
        self.sock.settimeout(0.3)        # QEMU greets with an empty packet: drop it
        try:
            self.reply()
        except TimeoutError:
            pass
        self.pending.clear()
        self.sock.settimeout(60)
        if b"QStartNoAckMode+" in self.ask(b"qSupported:swbreak+;hwbreak+").split(b";"):
            self.ask(b"QStartNoAckMode")
            self.ack = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(frame(data))

    def reply(self) -> bytes:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the stub closed the connection")
            for event in self.reader.feed(data):
                if isinstance(event, Packet):
                    self.pending.append(event.data)
                    if self.ack:
                        self.sock.sendall(b"+")
        return self.pending.pop(0)

    def ask(self, data: bytes) -> bytes:
        self.send(data)
        return self.reply()


def raw_session(vmm: str, address: int) -> dict[str, float]:
    """The same two figures with Raw instead of gdb."""
    kernel = guest_kernel.build()
    port = free_port()
    args = ["--gdb", f"tcp::{port}"] if vmm == "akvm" else ["-gdb", f"tcp:127.0.0.1:{port}"]
    with Guest(kernel, vmm=vmm, cpus=1, args=args, timeout=120) as guest:
        raw = Raw(port)
        raw.ask(b"?")
        z = b"1,%x,1" % address
        assert raw.ask(b"Z" + z) == b"OK"
        raw.send(b"vCont;c")
        guest.send("bench pio\r")
        stop = raw.reply()
        assert stop.startswith(b"T05"), stop
        t0 = time.perf_counter()
        for _ in range(HITS):
            assert raw.ask(b"z" + z) == b"OK"
            assert raw.ask(b"vCont;s:1").startswith(b"T05")
            assert raw.ask(b"Z" + z) == b"OK"
            assert raw.ask(b"vCont;c").startswith(b"T05")
        hits = time.perf_counter() - t0
        assert raw.ask(b"z" + z) == b"OK"
        t0 = time.perf_counter()
        for _ in range(STEPS):
            assert raw.ask(b"vCont;s:1").startswith(b"T05")
        steps = time.perf_counter() - t0
        raw.send(b"k" if vmm == "qemu" else b"D")
        raw.sock.close()
    return {"hit": hits / HITS, "step": steps / STEPS}


def _address() -> int:
    kernel = guest_kernel.build()
    gdb = Gdb(kernel.with_name("kernel.elf64"))
    try:
        return out_address(gdb)
    finally:
        gdb.close()


def run() -> list[Row]:
    address = _address()
    samplers = {"akvm break": lambda: session("akvm", "break"),
                "akvm hbreak": lambda: session("akvm", "hbreak"),
                "akvm raw": lambda: raw_session("akvm", address)}
    if have_qemu():
        samplers["qemu hbreak"] = lambda: session("qemu", "hbreak")
        samplers["qemu raw"] = lambda: raw_session("qemu", address)
    else:
        print("gdb: QEMU is not installed, akvm only", file=sys.stderr)
    results = {name: [] for name in samplers}
    for _ in range(RUNS):
        for name, fn in samplers.items():
            results[name].append(fn())
    med = {name: {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in ("hit", "step")}
           for name, runs in results.items()}
    note = f"ring-0 port-write loop of the bundled guest, 1 vCPU; median of {RUNS}"
    with_gdb = f"gdb 'continue' over {HITS} hits with an ignore count; {note}"
    rows = []
    for name, label in (("akvm break", "break"), ("akvm hbreak", "hbreak")):
        rows.append(_row(f"gdb breakpoint hit-and-continue round trip ({label})", med, name,
                         "qemu hbreak", "hit", with_gdb + ("; QEMU's break aborts here"
                                                           if label == "break" else "")))
    rows.append(_row("gdb single-steps per second (stepi)", med, "akvm hbreak", "qemu hbreak",
                     "step", f"gdb 'stepi {STEPS}'; {note}; higher is better"))
    rows.append(_row("stub breakpoint round trip (z1, vCont;s, Z1, vCont;c)", med, "akvm raw",
                     "qemu raw", "hit", f"a bare protocol client, no gdb; {note}"))
    rows.append(_row("stub single-steps per second (vCont;s)", med, "akvm raw", "qemu raw",
                     "step", f"a bare protocol client, no gdb; {note}; higher is better"))
    return rows


def _row(name: str, med: dict, mine: str, theirs: str, figure: str, note: str) -> Row:
    """Round trips in ms, steps as a rate."""
    scale = (lambda s: s * 1e3) if figure == "hit" else (lambda s: 1 / s)
    other = med.get(theirs)
    return Row(name, "ms" if figure == "hit" else "steps/s", scale(med[mine][figure]), "QEMU",
               scale(other[figure]) if other else None, note)
