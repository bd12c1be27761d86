"""Test support for the VT-d tests: a remapping unit on bytearray RAM, and the tables a
guest driver would build for it (root, context, second-level), written byte by byte
into that RAM the way the guest would write them."""
from __future__ import annotations

from akvm.iommu.dmaspace import TranslatedDma
from akvm.iommu.vtd import (CCMD, GCMD, GCMD_QIE, GCMD_SRTP, GCMD_TE, IOTLB, IQA, IQT, IVA, RTADDR,
                       VtdConfig, VtdIommu)
from tests.unit.test_fastpath import RunPage
from akvm.base.bus import Bus
from akvm.base.runloop import MMIO, FastPath
from akvm.base.memory import GuestMemory

PAGE = 0x1000
MiB = 1 << 20
GiB = 1 << 30

R, W, X = 1, 2, 4
PS = 1 << 7
EPT_WB = 6 << 3           # EPT memory type write-back
EPT_IPAT = 1 << 6
EPT_A, EPT_D = 1 << 8, 1 << 9

SID = 0x18                # 00:03.0
SID2 = 0x20               # 00:04.0


def sid_of(bus: int, dev: int, fn: int) -> int:
    return bus << 8 | dev << 3 | fn


class Rig:
    """A VtdIommu on `size` bytes of RAM, a page allocator from 1 MiB, and table builders."""

    def __init__(self, size: int = 16 * MiB, base: int | None = None, **config):
        self.mem = GuestMemory.from_bytearray(size)
        self.msis: list[tuple[int, int]] = []
        self.stale: list[str] = []
        self.iommu = VtdIommu(self.mem, lambda a, d: self.msis.append((a, d)),
                              VtdConfig(**config), on_stale=self.stale.append, base=base)
        self._next = 1 * MiB
        self.root = self.page()
        self.context_tables: dict[int, int] = {}
        self.queue: int | None = None
        self.tail = 0

    # --- memory ------------------------------------------------------------------

    def page(self, count: int = 1, align: int = PAGE) -> int:
        addr = (self._next + align - 1) & ~(align - 1)
        self._next = addr + count * PAGE
        return addr

    def data_page(self, fill: int) -> int:
        addr = self.page()
        self.mem.write(addr, bytes([fill]) * PAGE)
        return addr

    # --- registers ---------------------------------------------------------------

    def r32(self, off: int) -> int:
        return self.iommu.read(off, 4)

    def r64(self, off: int) -> int:
        return self.iommu.read(off, 8)

    def w32(self, off: int, value: int) -> None:
        self.iommu.write(off, 4, value)

    def w64(self, off: int, value: int) -> None:
        self.iommu.write(off, 8, value)

    def enable(self, qi: bool = False) -> None:
        """What a driver does: root table, SRTP, global invalidations, TE (and QIE)."""
        self.w64(RTADDR, self.root)
        self.w32(GCMD, GCMD_SRTP)
        self.w64(CCMD, 1 << 63 | 1 << 61)
        self.w64(IOTLB, 1 << 63 | 1 << 60)
        gcmd = GCMD_TE
        if qi:
            self.queue = self.page()
            self.w64(IQT, 0)
            self.w64(IQA, self.queue)
            gcmd |= GCMD_QIE
        self.w32(GCMD, gcmd)

    # --- tables --------------------------------------------------------------------

    def set_context(self, sid: int, *, did: int = 1, table: int = 0, tt: int = 0, aw: int = 2,
                    fpd: bool = False, present: bool = True, lo_extra: int = 0,
                    hi_extra: int = 0) -> int:
        bus = sid >> 8
        if bus not in self.context_tables:
            ct = self.context_tables[bus] = self.page()
            self.mem.write_u64(self.root + bus * 16, ct | 1)
        entry = self.context_tables[bus] + (sid & 0xFF) * 16
        lo = table | tt << 2 | (2 if fpd else 0) | (1 if present else 0) | lo_extra
        hi = did << 8 | aw | hi_extra
        self.mem.write_u64(entry, lo)
        self.mem.write_u64(entry + 8, hi)
        return entry

    def map(self, table: int, iova: int, frame: int, *, levels: int = 4, size: int = PAGE,
            perms: int = R | W, leaf_extra: int = 0, dir_perms: int = R | W | X) -> int:
        """Map `iova` -> `frame` (a page of `size`) in the second-level table at `table`;
        returns the address of the leaf entry."""
        leaf_level = {PAGE: 1, 2 * MiB: 2, GiB: 3}[size]
        for level in range(levels, leaf_level, -1):
            shift = 12 + 9 * (level - 1)
            slot = table + ((iova >> shift) & 0x1FF) * 8
            entry = self.mem.read_u64(slot)
            if not entry & (R | W):
                entry = self.page() | dir_perms
                self.mem.write_u64(slot, entry)
            table = entry & ~0xFFF & ((1 << 52) - 1)
        shift = 12 + 9 * (leaf_level - 1)
        slot = table + ((iova >> shift) & 0x1FF) * 8
        self.mem.write_u64(slot, frame | perms | (PS if leaf_level > 1 else 0) | leaf_extra)
        return slot

    def dma(self, sid: int = SID) -> TranslatedDma:
        return TranslatedDma(self.iommu, sid)

    # --- queued invalidation ---------------------------------------------------------

    def submit(self, *descriptors: tuple[int, int]) -> None:
        """Write descriptors at the tail and move IQT past them."""
        entries = 256 << (self.iommu.iqa & 7)
        for lo, hi in descriptors:
            addr = self.queue + self.tail * 16
            self.mem.write_u64(addr, lo)
            self.mem.write_u64(addr + 8, hi)
            self.tail = (self.tail + 1) % entries
        self.w64(IQT, self.tail << 4)

    def flush_page(self, did: int, iova: int, am: int = 0) -> None:
        """Register-based page-selective IOTLB invalidation."""
        self.w64(IVA, iova | am)
        self.w64(IOTLB, 1 << 63 | 3 << 60 | did << 32)

    def flush_domain(self, did: int) -> None:
        self.w64(IOTLB, 1 << 63 | 2 << 60 | did << 32)


VTD_BASE = 0xFED9_0000


class DoorbellRig(Rig):
    """64-bit register accesses as a vCPU's exit loop makes them: C first (IQT,
    IVA and IOTLB, by iommu/vtddoor.c), then the bus."""

    def __init__(self, **kw):
        super().__init__(base=VTD_BASE, **kw)
        self.bus = Bus("mmio")
        self.bus.register(VTD_BASE, 0x1000, self.iommu, "vtd")
        self.fast = FastPath(Bus("pio"), self.bus)
        self.fast.add(MMIO, VTD_BASE, 0x1000, "akvm_vtd_door_complete", self.iommu.doorbell)
        self.run_page = RunPage()
        self.in_c = 0                   # accesses C completed

    def w64(self, off: int, value: int) -> None:
        self.run_page.mmio(VTD_BASE + off, 8, True, value)
        if self.fast.complete(self.run_page.address):
            self.in_c += 1
        else:
            self.bus.write(VTD_BASE + off, 8, value)

    def sync(self) -> None:
        """Python's view of the unit caught up with what C did."""
        with self.iommu.lock:
            pass

    def r64(self, off: int) -> int:
        self.run_page.mmio(VTD_BASE + off, 8, False)
        if self.fast.complete(self.run_page.address):
            self.in_c += 1
            return int.from_bytes(bytes(self.run_page.run.exit.mmio.data), "little")
        return self.bus.read(VTD_BASE + off, 8)
