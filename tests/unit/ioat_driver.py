"""Test support for the I/OAT tests: functions on a PciRoot and an MMIO bus as the
machine wires them, over bytearray RAM (optionally behind a VT-d unit), and a driver
that programs a channel the way Akaros's and Linux's ioatdma do: reset, CHANCTRL,
the completion address, a ring of descriptors linked by `next`, DMACOUNT."""
from __future__ import annotations

import struct
import time

from akvm.base.bus import Bus
from akvm.base.dma import DirectDma
from akvm.base.irq import IrqLine
from akvm.devices import ioat
from akvm.devices.pci import PciRoot
from akvm.devices.pci.config import COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE
from akvm.devices.pci.device import MSIX_CTRL_ENABLE
from akvm.iommu.dmaspace import TranslatedDma
from tests.unit.vtd_tables import Rig

MMIO_WINDOW = (0xC000_0000, 0xE000_0000)
ECAM = 0xE000_0000
SLOT = 4
CHANCTRL_RUN = (ioat.CHANCTRL_INT_REARM | ioat.CHANCTRL_ERR_COMPLETION_EN |
                ioat.CHANCTRL_ANY_ERR_ABORT_EN | ioat.CHANCTRL_ERR_INT_EN)      # 0x1D
COMPLETION = 0x3F_0000         # the completion writeback (64-byte aligned); 1-2 MiB: Rig pages
RING = 0x20_0000               # descriptors
DATA = 0x40_0000               # buffers from here
MSI_ADDRESS = 0xFEE0_0000


def desc(size: int, ctl: int, src: int, dst: int, next_: int) -> bytes:
    return struct.pack("<IIQQQ", size, ctl, src, dst, next_) + bytes(32)


class Pc:
    """A PciRoot with I/OAT functions at 00:04.f (and an MMIO bus); `iommu` puts a VT-d
    unit in front of them (tests.unit.vtd_tables.Rig)."""

    def __init__(self, functions=(0,), iommu: bool = False, native: bool = True,
                 size: int = 32 << 20, **vtd):
        self.rig = Rig(size=size, **vtd)
        self.mem = self.rig.mem
        self.mmio = Bus("mmio")
        self.msis: list[tuple[int, int]] = []
        self.lines: dict[int, IrqLine] = {}
        unit = self.rig.iommu if iommu else None
        dma = (lambda rid: TranslatedDma(unit, rid)) if unit else (lambda rid: DirectDma(self.mem))
        self.root = PciRoot(None, self.mmio, mmio_window=MMIO_WINDOW, io_window=None,
                            irq=lambda gsi: self.lines.setdefault(gsi, IrqLine(gsi)),
                            msi=lambda a, d: self.msis.append((a, d)), dma=dma)
        self.mmio.register(ECAM, 1 << 20, self.root.ecam, "ecam")
        self.fns = {}
        for f in functions:
            dev = ioat.IoatFunction(f, native=native)
            self.root.add(dev, slot=SLOT, function=f)
            dev.set_command(COMMAND_BUS_MASTER | COMMAND_MEMORY_SPACE)
            self.fns[f] = dev

    def close(self) -> None:
        for dev in self.fns.values():
            dev.close()

    def cfg(self, f: int, off: int, size: int = 4) -> int:
        return self.mmio.read(ECAM + (SLOT << 15 | f << 12 | off), size)

    def cfg_write(self, f: int, off: int, size: int, value: int) -> None:
        self.mmio.write(ECAM + (SLOT << 15 | f << 12 | off), size, value)

    def driver(self, f: int = 0, **kw) -> "Driver":
        return Driver(self, self.fns[f], **kw)


class Driver:
    """One channel driven through BAR0; descriptors in a ring at `ring` (RING + 1 MiB * f)."""

    def __init__(self, pc: Pc, dev: ioat.IoatFunction, ring: int | None = None,
                 entries: int = 64, completion: int | None = None):
        self.pc, self.dev, self.mem = pc, dev, pc.mem
        f = dev.address.function
        self.bar = dev.bar_address(0)
        self.ring = RING + (f << 16) if ring is None else ring
        self.entries = entries
        self.completion = COMPLETION + 64 * f if completion is None else completion
        self.head = 0                   # descriptors written
        self.count = 0                  # DMACOUNT

    # --- registers ---------------------------------------------------------------------

    def r(self, off: int, size: int = 4) -> int:
        return self.pc.mmio.read(self.bar + off, size)

    def w(self, off: int, value: int, size: int = 4) -> None:
        self.pc.mmio.write(self.bar + off, size, value)

    @property
    def chansts(self) -> int:
        return self.r(ioat.CHANSTS, 8)

    @property
    def state(self) -> int:
        return self.chansts & 7

    @property
    def chanerr(self) -> int:
        return self.r(ioat.CHANERR)

    @property
    def written_back(self) -> int:
        return self.mem.read_u64(self.completion)

    def addr(self, i: int) -> int:
        return self.ring + (i % self.entries) * ioat.DESC_SIZE

    # --- what a driver does -----------------------------------------------------------------

    def reset(self) -> None:
        self.w(ioat.CHANERR, self.chanerr)
        self.w(ioat.CHANCMD, ioat.CHANCMD_RESET, 1)
        assert not self.r(ioat.CHANCMD, 1) & ioat.CHANCMD_RESET
        self.head = self.count = 0

    def start(self, chanctrl: int = CHANCTRL_RUN) -> None:
        """Reset, CHANCTRL, CHANCMP and CHAINADDR (two dword halves each), the ring linked."""
        self.reset()
        self.w(ioat.CHANCTRL, chanctrl, 2)
        self.mem.write_u64(self.completion, 0)
        self.w(ioat.CHANCMP, self.completion & 0xFFFF_FFFF)
        self.w(ioat.CHANCMP + 4, self.completion >> 32)
        for i in range(self.entries):
            self.mem.write(self.addr(i), desc(0, 0, 0, 0, self.addr(i + 1)))
        self.w(ioat.CHAINADDR, self.ring & 0xFFFF_FFFF)
        self.w(ioat.CHAINADDR + 4, self.ring >> 32)

    def put(self, size: int, ctl: int, src: int = 0, dst: int = 0, next_: int | None = None) -> int:
        """Write the next ring entry (keeping its link unless `next_`); its address."""
        a = self.addr(self.head)
        self.mem.write(a, desc(size, ctl, src, dst, self.addr(self.head + 1) if next_ is None
                               else next_))
        self.head += 1
        return a

    def memcpy(self, src: int, dst: int, size: int, ctl: int = ioat.CTL_COMPL_WRITE
               | ioat.CTL_INT_EN, xfercap: int = 1 << ioat.DEFAULT_XFERCAP) -> int:
        """Chunks of at most xfercap, control bits on the last one; its address."""
        last = 0
        for off in range(0, size, xfercap):
            n = min(xfercap, size - off)
            last = self.put(n, ctl if off + n >= size else 0, src + off, dst + off)
        return last

    def issue(self) -> None:
        self.count = self.head
        self.w(ioat.DMACOUNT, self.count & 0xFFFF, 2)

    def enable_msix(self, data: int = 0x31) -> None:
        dev = self.dev
        self.w(ioat.MSIX_TABLE, MSI_ADDRESS)
        self.w(ioat.MSIX_TABLE + 4, 0)
        self.w(ioat.MSIX_TABLE + 8, data)
        self.w(ioat.MSIX_TABLE + 12, 0)
        dev.config_write(dev.msix.offset + 2, 2, MSIX_CTRL_ENABLE)
        self.w(ioat.INTRCTRL, ioat.INTRCTRL_MASTER_INT_EN | ioat.INTRCTRL_MSIX_VECTOR_CONTROL, 1)

    def wait(self, timeout: float = 10.0) -> int:
        """Poll CHANSTS until the channel is not ACTIVE, then until the channel's thread
        is done with it (its interrupt, which follows CHANSTS, sent); the state."""
        end = time.monotonic() + timeout
        while self.state == ioat.ACTIVE:
            assert time.monotonic() < end, f"still ACTIVE after {timeout} s"
            time.sleep(0.0005)
        assert self.dev.wait_idle(timeout)
        return self.state
