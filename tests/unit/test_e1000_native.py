"""The e1000's C data path (devices/e1000.c) against its Python twin (devices/e1000.py).

Two devices get the same random programming: transmit descriptors (plain packets C
serves, and those it leaves to Python: offloads, VLAN, contexts, chains not yet ended,
runts, buffers outside RAM), frames from the network (unicast, broadcast, multicast,
strangers, runts, long frames) under random RCTL settings (buffer sizes, LPE, SECRC,
filters), tail moves and interrupt masks. One serves its rings in C, as the backend's
thread does (C first, Python for what C gives back), the other in Python only. Both
must send the same frames and leave the same guest memory, registers, statistics and
interrupt line.
"""
import os
import struct
import weakref

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from akvm.base.bus import Bus
from akvm.base.dma import DirectDma
from akvm.base.irq import IrqLine
from akvm.base.memory import GuestMemory
from akvm.base.native import ffi, lib, native_slots
from akvm.devices import e1000 as E
from akvm.devices.pci import PciRoot
from akvm.devices.pci.config import COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE
from akvm.iommu.vtd import FRCD
from tests import netframes as F
from tests.unit.test_e1000 import MAC, InlineWorker, Wire
from tests.unit.test_fastpath import RunPage
from tests.unit.vtd_tables import Rig

RAM = 1 << 20
TX, RX, BUFS = 0x1000, 0x2000, 0x10000
RING = 16
MMIO_WINDOW = (0xC000_0000, 0xE000_0000)


class Side:
    """One e1000 on [0, RAM) of guest memory, or behind VT-d (`iommu`: {"perms", "order",
    "passthrough"}): then the same addresses are bus addresses, page p mapped to the
    rig's frame order[p] with permissions perms[p] (0: not mapped), or passed through."""

    def __init__(self, native: bool, iommu: dict | None = None):
        self.iommu = iommu
        if iommu is None:
            self.mem = GuestMemory.from_bytearray(RAM)
        else:
            self.rig = Rig(size=4 << 20, base=0xFED9_0000)
            self.mem = self.rig.mem
        self.wire = Wire()
        self.dev = E.E1000(self.wire, MAC)
        self.dev.worker = InlineWorker()
        self.lines = {}
        root = PciRoot(None, Bus("mmio"), mmio_window=MMIO_WINDOW, io_window=None,
                       irq=lambda gsi: self.lines.setdefault(gsi, IrqLine(gsi)),
                       dma=self._dma)
        root.add(self.dev)
        self.dev.set_command(COMMAND_BUS_MASTER | COMMAND_MEMORY_SPACE)
        self.native = native
        self.held = []                       # frames C had no room for (the engine's queue)
        if native:
            self.slots = native_slots(self.mem)
            lib.akvm_e1000_use_ram(self.dev.handle, self.slots, len(self.slots))
            self.kick = os.eventfd(0, os.EFD_NONBLOCK)
            weakref.finalize(self, os.close, self.kick)     # hypothesis makes hundreds
            self.dev.s.kick_fd = self.kick
            self.dev.s.native = 1
            with self.dev._locked():
                self.dev._use_translator()
            self.out = ffi.callback("akvm_nic_out_fn", self._out)
            self.run_page = RunPage()
        for reg, value in ((E.TDBAL, TX), (E.TDLEN, RING * 16), (E.TCTL, E.TCTL_EN | E.TCTL_PSP),
                           (E.RDBAL, RX), (E.RDLEN, RING * 16)):
            self.write(reg, value)

    def _dma(self, rid):
        if self.iommu is None:
            return DirectDma(self.mem)
        rig = self.rig
        rig.enable()
        if self.iommu["passthrough"]:
            rig.set_context(rid, tt=2, did=3)
            self.frames = list(range(0, RAM, 0x1000))
        else:
            table, base = rig.page(), rig.page(RAM >> 12)
            rig.set_context(rid, table=table, did=5)
            self.frames = [base + 0x1000 * o for o in self.iommu["order"]]
            for page, perm in enumerate(self.iommu["perms"]):
                if perm:
                    rig.map(table, page << 12, self.frames[page], perms=perm)
        return rig.dma(rid)

    def poke(self, addr, data):
        """Write guest memory at a device address, whatever the IOMMU lets the device do."""
        while data:
            n = min(len(data), 0x1000 - (addr & 0xFFF))
            gpa = addr if self.iommu is None else self.frames[addr >> 12] + (addr & 0xFFF)
            self.mem.write(gpa, data[:n])
            addr, data = addr + n, data[n:]

    def _out(self, ctx, frame, length):
        self.wire.sent.append(bytes(ffi.buffer(frame, length)))

    def write(self, reg, value):
        if self.native and reg in (E.TDT, E.RDT):       # the vCPU's exit handler, then the thread
            self.run_page.mmio(self.dev.bar_address(0) + reg, 4, True, value)
            assert lib.akvm_e1000_exit(self.dev.handle, ffi.cast("void *", self.run_page.address))
            self.turn()
        elif self.native and reg in (E.TCTL, E.RCTL):
            with self.dev._locked():        # what the vCPU's exit handler does
                setattr(self.dev.s, {E.TDT: "tdt", E.RDT: "rdt", E.TCTL: "tctl",
                                     E.RCTL: "rctl"}[reg],
                        value & (0xFFFF if reg in (E.TDT, E.RDT) else 0xFFFF_FFFF))
                if reg == E.RCTL:
                    self.dev.s.rctl &= 0x07FF_FFFE
                if reg == E.TCTL:
                    self.dev.s.tctl &= 0x03FF_FFFA
            self.turn()
        else:
            self.dev.write(reg, 4, value)

    def _code(self, code):
        if code & lib.AKVM_NIC_IRQ:
            self.dev._native_interrupt()
        return code & ~lib.AKVM_NIC_IRQ

    def turn(self):
        """The engine's turn: held frames, then the transmit ring (Python's if C says so)."""
        while self.held:
            code = self._code(lib.akvm_e1000_rx(self.dev.handle, self.held[0], len(self.held[0])))
            if code == lib.AKVM_NIC_FULL:
                break
            frame = self.held.pop(0)
            if code == lib.AKVM_NIC_PYTHON:
                self._python_rx(frame)
        if self._code(lib.akvm_e1000_tx(self.dev.handle, self.out, ffi.NULL, 0)) == lib.AKVM_NIC_PYTHON:
            self.dev._python_turn()

    def _python_rx(self, frame):
        self.wire.incoming.append(frame)
        self.dev.receive()

    def receive(self, frame):
        if not self.native:
            self._python_rx(frame)
            return
        if self.held:
            self.held.append(frame)
            return
        code = self._code(lib.akvm_e1000_rx(self.dev.handle, frame, len(frame)))
        if code == lib.AKVM_NIC_FULL:
            self.held.append(frame)
        elif code == lib.AKVM_NIC_PYTHON:
            self._python_rx(frame)

    def snapshot(self):
        s = self.dev.s
        faults = () if self.iommu is None else (
            self.rig.iommu.faults.status, self.rig.iommu.read(FRCD, 8),
            self.rig.iommu.read(FRCD + 8, 8))
        return (self.mem.read(0, len(self.mem.slots[0].buf)), self.wire.sent,
                (s.tdh, s.rdh, s.icr, s.ims), list(s.stats), self.dev.intx_asserted, faults)


def legacy(length, cmd, at):
    return struct.pack("<QQ", at, length | cmd << 24)


def extended(length, dcmd, popts, at):
    return struct.pack("<QQ", at, length | E.TXD_DTYP_DATA << 20 |
                       (dcmd | E.TXD_CMD_DEXT) << 24 | popts << 40)


EOP, RS = E.TXD_CMD_EOP, E.TXD_CMD_RS
descriptor = st.one_of(
    st.builds(lambda n, eop, rs, extra, at: legacy(n, (EOP if eop else 0) | (RS if rs else 0) | extra, at),
              st.integers(0, 1600) | st.sampled_from([0, 1, 13, 14, 60, 1514]), st.booleans(),
              st.booleans(), st.sampled_from([0] * 6 + [E.TXD_CMD_IC, E.TXD_CMD_VLE, E.TXD_CMD_IFCS]),
              st.sampled_from([BUFS, BUFS + 0x800, BUFS + 0xF00, RAM - 100, RAM + 0x1000])),
    st.builds(lambda n, eop, popts, at: extended(n, (EOP if eop else 0) | RS, popts, at),
              st.integers(0, 1600), st.booleans(), st.sampled_from([0] * 4 + [1, 2]),
              st.sampled_from([BUFS, BUFS + 0x1000])),
    st.just(struct.pack("<QQ", 14 | 24 << 8 | 33 << 16, 0x0020_0000_0000_0000 |
                        (E.TXD_CMD_DEXT << 24))))                      # a context descriptor
frame = st.one_of(
    st.builds(lambda dst, n: F.eth(dst, b"\x02" * 6, F.ETH_IP, bytes(range(256)) * (n // 256) +
                                   bytes(n % 256)),
              st.sampled_from([MAC, F.BROADCAST, b"\x01\x00\x5e\x00\x00\x01", b"\x02" * 6]),
              st.integers(0, 3000)),
    st.binary(max_size=20))
rctl = st.builds(lambda bits, bsize, bsex, mo: E.RCTL_EN | bits | bsize << E.RCTL_BSIZE_SHIFT |
                 (E.RCTL_BSEX if bsex else 0) | mo << E.RCTL_MO_SHIFT,
                 st.sampled_from([0, E.RCTL_BAM, E.RCTL_SECRC | E.RCTL_BAM, E.RCTL_LPE | E.RCTL_BAM,
                                  E.RCTL_UPE, E.RCTL_MPE, E.RCTL_VFE | E.RCTL_BAM]),
                 st.integers(0, 3), st.booleans(), st.integers(0, 3))
ops = st.lists(st.one_of(
    st.tuples(st.just("desc"), st.integers(0, RING - 1), descriptor),
    st.tuples(st.just("tdt"), st.integers(0, RING - 1)),
    st.tuples(st.just("rdt"), st.integers(0, RING - 1)),
    st.tuples(st.just("rctl"), rctl),
    st.tuples(st.just("ims"), st.sampled_from([0, E.ICR_RXT0, E.ICR_TXDW | E.ICR_TXQE])),
    st.tuples(st.just("icr"), st.just(0)),
    st.tuples(st.just("rx"), frame),
    st.tuples(st.just("mta"), st.integers(0, 127), st.integers(0, 0xFFFF_FFFF)),
), max_size=40)


def run_twins(program, iommu=None):
    sides = [Side(native=False, iommu=iommu), Side(native=True, iommu=iommu)]
    for side in sides:
        side.poke(BUFS, bytes((i * 7) & 0xFF for i in range(0x4000)))
        for i in range(RING):       # receive buffers 16 KiB apart, every other across a page
            side.poke(RX + 16 * i, struct.pack("<QQ", 0x20000 + 0x4000 * i + 0xC00 * (i & 1), 0))
    for op in program:
        for side in sides:
            kind = op[0]
            if kind == "desc":
                side.poke(TX + 16 * op[1], op[2])
            elif kind == "tdt":
                side.write(E.TDT, op[1])
            elif kind == "rdt":
                side.write(E.RDT, op[1])
            elif kind == "rctl":
                side.write(E.RCTL, op[1])
            elif kind == "ims":
                side.write(E.IMS, op[1])
            elif kind == "icr":
                side.dev.read(E.ICR, 4)
            elif kind == "mta":
                side.write(E.MTA + 4 * op[1], op[2])
            else:
                side.receive(op[1])
        python, native = (s.snapshot() for s in sides)
        assert native[1] == python[1], op                   # frames sent
        assert native[2:] == python[2:], op                 # registers, statistics, INTA#,
        assert native[0] == python[0], op                   # VT-d faults; guest memory
    return sides


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_c_and_python_agree(program):
    run_twins(program)


PAGES = RAM >> 12
iommu_setups = st.one_of(
    st.fixed_dictionaries({
        "passthrough": st.just(False),
        # mostly read-write; some pages read- or write-only, some not mapped (a fault)
        "perms": st.lists(st.sampled_from([3] * 12 + [1, 2, 0]), min_size=PAGES,
                          max_size=PAGES),
        # frames out of order: a buffer across pages is two pieces of guest RAM
        "order": st.permutations(range(PAGES))}),
    st.just({"passthrough": True}))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, iommu_setups)
def test_c_and_python_agree_behind_vtd(program, iommu):
    """Translated through the unit's C translator (IOTLB hits, misses walked in C) or
    passed through by it, C and Python leave the same frames, memory, registers and
    recorded DMA faults: what C cannot translate (a fault to record, a buffer across
    pages that are not neighbours in RAM, a page without the permission) is Python's."""
    run_twins(program, iommu)


def test_buffers_across_pages_apart_in_ram_are_pythons():
    """Behind VT-d, a transmit and a receive buffer across two pages whose frames are not
    neighbours in RAM: C must not read or write past the first page."""
    order = list(range(PAGES))
    order[0x10], order[0x11], order[0x24], order[0x25] = 0x40, 0x80, 0x60, 0x20
    order[0x40], order[0x80], order[0x60], order[0x20] = 0x10, 0x11, 0x24, 0x25
    to_us = F.eth(MAC, b"\x02" * 6, F.ETH_IP, bytes(range(256)) * 5 + bytes(100))
    sides = run_twins([("desc", 0, legacy(600, EOP | RS, BUFS + 0xF00)), ("tdt", 1),
                       ("rctl", E.RCTL_EN), ("rdt", 3), ("rx", to_us), ("rx", to_us)],
                      {"passthrough": False, "perms": [3] * PAGES, "order": order})
    assert len(sides[1].wire.sent) == 1 and sides[1].dev.s.rdh == 2


def test_c_serves_translated_and_pass_through_rings():
    """The C path is taken behind VT-d: plain packets leave through C's TDT handler,
    with no turn of Python's."""
    for iommu in ({"passthrough": False, "perms": [3] * PAGES, "order": list(range(PAGES))},
                  {"passthrough": True}):
        side = Side(native=True, iommu=iommu)
        side.dev._python_turn = lambda: pytest.fail("Python's turn")
        side.poke(BUFS, bytes(range(60)))
        side.poke(TX, legacy(60, EOP | RS, BUFS))
        side.write(E.TDT, 1)
        assert side.wire.sent == [bytes(range(60))]
        assert side.dev.s.tdh == 1 and side.dev.s.tx_frames == 1


def test_crc32_is_the_ethernet_fcs():
    import zlib
    for data in (b"", b"a", bytes(range(256)) * 7):
        assert lib.akvm_e1000_crc32(data, len(data)) == zlib.crc32(data)
