"""Invalidation of the context cache and the IOTLB (VT-d 6.5).

Two interfaces:

- register-based (6.5.1): CCMD and the IOTLB register (with IVA for
  page-selective requests). The write that sets ICC / IVT performs the
  invalidation at once; ICC / IVT read back clear and CAIG / IAIG report
  the granularity actually used (0: the request was invalid and ignored).
  While queued invalidation is enabled these commands are refused (the
  spec forbids mixing the interfaces): nothing is invalidated, the command
  bit clears, and CAIG / IAIG read 0.
- queued (6.5.2): 128-bit descriptors in the ring IQA describes, consumed
  from IQH up to IQT whenever software writes IQT. A descriptor that cannot
  be fetched, has an unknown type, reserved bits set or a reserved value
  stops the queue with FSTS.IQE set and IQH left pointing at it; clearing
  IQE resumes from IQH.

Everything is synchronous: when the MMIO write returns, the work is done.
"""
from __future__ import annotations

import logging
from collections import Counter

from akvm.iommu.cache import Iotlb
from akvm.iommu.faults import FSTS_IQE
from akvm.base.memory import GuestMemoryError
from akvm.base.native import ffi, lib, native_slots

log = logging.getLogger("akvm.iommu")

# CCMD (10.4.7)
CCMD_ICC = 1 << 63
CCMD_CIRG_SHIFT = 61
CCMD_CAIG_SHIFT = 59
CCMD_FM_SHIFT = 32
CCMD_SID_SHIFT = 16
CCMD_CAIG_MASK = 0x3 << CCMD_CAIG_SHIFT
CCMD_WRITABLE = CCMD_ICC | 0x3 << CCMD_CIRG_SHIFT | 0x3 << CCMD_FM_SHIFT | 0xFFFF_FFFF

# IOTLB register (10.4.8.1) and IVA (10.4.8.2): shared with C (iommu/vtdspec.h)
IOTLB_IVT = lib.VTD_IOTLB_IVT
IOTLB_IIRG_SHIFT = lib.VTD_IOTLB_IIRG_SHIFT
IOTLB_IAIG_SHIFT = lib.VTD_IOTLB_IAIG_SHIFT
IOTLB_IAIG_MASK = lib.VTD_IOTLB_IAIG_MASK
IOTLB_DR = lib.VTD_IOTLB_DR
IOTLB_DW = lib.VTD_IOTLB_DW
IOTLB_DID_SHIFT = lib.VTD_IOTLB_DID_SHIFT
IOTLB_WRITABLE = lib.VTD_IOTLB_WRITABLE
IVA_AM_MASK = lib.VTD_IVA_AM_MASK
IVA_IH = lib.VTD_IVA_IH
IVA_WRITABLE = lib.VTD_IVA_WRITABLE

# Granularities (register CIRG/IIRG, descriptor G); the IOTLB's are iotlb.c's too
G_GLOBAL, G_DOMAIN, G_PAGE = lib.AKVM_IOTLB_GLOBAL, lib.AKVM_IOTLB_DOMAIN, lib.AKVM_IOTLB_PAGE
G_DEVICE = 3                                        # context cache: device-selective
GRANULARITY = {"context": {G_GLOBAL: "global", G_DOMAIN: "domain", G_DEVICE: "device"},
               "iotlb": {G_GLOBAL: "global", G_DOMAIN: "domain", G_PAGE: "page"}}

# IQA, IQH, IQT (10.4.22-10.4.24)
IQA_QS_MASK = lib.VTD_IQA_QS_MASK
IQA_WRITABLE = ~0xFFF & 0xFFFF_FFFF_FFFF_FFFF | IQA_QS_MASK      # DW (bit 11) unsupported: 0
IQ_INDEX_MASK = lib.VTD_IQ_INDEX_MASK                              # 18:4
DESCRIPTOR_SIZE = 16

# ICS (10.4.25)
ICS_IWC = 1 << 0

# Descriptor types (6.5.2.x), low qword bits 3:0 (bits 11:9 extend the type: 0 here)
DESC_CONTEXT = 0x1
DESC_IOTLB = lib.VTD_DESC_IOTLB
DESC_DEVICE_TLB = 0x3
DESC_IEC = 0x4
DESC_WAIT = lib.VTD_DESC_WAIT
DESC_NAMES = {DESC_CONTEXT: "context-cache", DESC_IOTLB: "iotlb", DESC_DEVICE_TLB: "device-tlb",
              DESC_IEC: "interrupt-entry-cache", DESC_WAIT: "wait", 0x6: "pasid-iotlb",
              0x7: "pasid-cache", 0x8: "pasid-device-tlb"}


def _bits(hi: int, lo: int) -> int:
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


# Reserved bits of each legacy-mode (128-bit) descriptor: (low qword, high qword)
RESERVED = {
    DESC_CONTEXT: (_bits(15, 6) | _bits(63, 50), _bits(63, 0)),
    DESC_IOTLB: (_bits(15, 8) | _bits(63, 32), _bits(11, 7)),
    DESC_DEVICE_TLB: (_bits(11, 4) | _bits(31, 21) | _bits(51, 48), _bits(11, 1)),
    DESC_IEC: (_bits(26, 5) | _bits(63, 48), _bits(63, 0)),
    DESC_WAIT: (_bits(31, 7), _bits(1, 0)),       # bit 7 (PD) too: no page requests here
}
WAIT_IF = lib.VTD_WAIT_IF
WAIT_SW = lib.VTD_WAIT_SW
WAIT_FN = 1 << 6


class InvalidDescriptor(Exception):
    """A descriptor the unit refuses: it sets FSTS.IQE."""


class Invalidator:
    """The invalidation logic of a VtdIommu; it works on the unit's caches and registers.

    `counts[(interface, kind, granularity)]` counts requests, e.g.
    ("register", "iotlb", "domain") or ("queued", "wait", "status+interrupt").
    """

    def __init__(self, iommu):
        self.iommu = iommu
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.refused = 0                 # register commands while QI was enabled
        self.queue_errors = 0
        self.wait_write_errors = 0
        self.descriptors = 0
        self._logged: set[str] = set()
        # IOTLB and plain wait descriptors in C when the IOTLB is the C table;
        # False makes this class its twin (tests).
        self.native = isinstance(iommu.iotlb, Iotlb)
        self._native_result = ffi.new("struct akvm_qi_result *")

    def _log_once(self, key: str, message: str, *args) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning("iommu: " + message, *args)

    # --- the operations both interfaces share ------------------------------------

    def context(self, interface: str, granularity: int, did: int = 0, sid: int = 0,
                fm: int = 0) -> int:
        """Invalidate the context cache; returns the granularity done (0: invalid)."""
        cache = self.iommu.context_cache
        if granularity == G_GLOBAL:
            cache.invalidate_all()
        elif granularity == G_DOMAIN:
            cache.invalidate_domain(did)
        elif granularity == G_DEVICE:
            cache.invalidate_device(did, sid, fm)
        else:
            return 0
        self.counts[(interface, "context", GRANULARITY["context"][granularity])] += 1
        return granularity

    def iotlb(self, interface: str, granularity: int, did: int = 0, address: int = 0,
              am: int = 0) -> int:
        """Invalidate the IOTLB; returns the granularity done (0: invalid).

        Without PSI a page-selective request is done domain-selectively; an
        address mask above MAMV is invalid.
        """
        iommu = self.iommu
        tlb = iommu.iotlb
        if granularity == G_PAGE and not iommu.config.psi:
            granularity = G_DOMAIN
        if granularity == G_GLOBAL:
            tlb.invalidate_all()
        elif granularity == G_DOMAIN:
            tlb.invalidate_domain(did)
        elif granularity == G_PAGE:
            if am > iommu.config.mamv:
                return 0
            tlb.invalidate_pages(did, address, am)
        else:
            return 0
        self.counts[(interface, "iotlb", GRANULARITY["iotlb"][granularity])] += 1
        return granularity

    # --- register-based -------------------------------------------------------

    def _refuse(self, register: str) -> None:
        self.refused += 1
        self._log_once(f"refused-{register}", "%s command while queued invalidation is "
                       "enabled: refused (use invalidation descriptors)", register)

    def ccmd(self, value: int) -> int:
        """A CCMD write with ICC set; returns the register's new value."""
        value &= ~CCMD_CAIG_MASK
        if self.iommu.qi_enabled:
            self._refuse("CCMD")
            return value & ~CCMD_ICC
        done = self.context("register", (value >> CCMD_CIRG_SHIFT) & 3, value & 0xFFFF,
                            (value >> CCMD_SID_SHIFT) & 0xFFFF, (value >> CCMD_FM_SHIFT) & 3)
        return (value & ~CCMD_ICC) | done << CCMD_CAIG_SHIFT

    def iotlb_register(self, value: int, iva: int) -> int:
        """An IOTLB register write with IVT set; returns the register's new value."""
        value &= ~IOTLB_IAIG_MASK
        if self.iommu.qi_enabled:
            self._refuse("IOTLB")
            return value & ~IOTLB_IVT
        done = self.iotlb("register", (value >> IOTLB_IIRG_SHIFT) & 3,
                          (value >> IOTLB_DID_SHIFT) & 0xFFFF, iva & ~0xFFF, iva & IVA_AM_MASK)
        return (value & ~IOTLB_IVT) | done << IOTLB_IAIG_SHIFT

    # --- queued -----------------------------------------------------------------

    def process_queue(self) -> None:
        """Consume descriptors from IQH to IQT (called when IQT is written, QI is
        enabled, or IQE is cleared)."""
        iommu = self.iommu
        if not iommu.qi_enabled or iommu.faults.status & FSTS_IQE:
            return
        entries = 256 << (iommu.iqa & IQA_QS_MASK)
        base = iommu.iqa & ~0xFFF
        head = iommu.iqh >> 4
        tail = iommu.iqt >> 4
        if tail >= entries or head >= entries:
            self._queue_error(f"IQT index {tail} is beyond the {entries}-entry queue")
            return
        memory = iommu.memory
        while head != tail:
            if self.native:
                head = self._process_native(head, tail, entries, base)
                if head == tail:
                    return
            address = base + head * DESCRIPTOR_SIZE
            try:
                raw = memory.read(address, DESCRIPTOR_SIZE)
            except GuestMemoryError:
                self._queue_error(f"descriptor {head} at {address:#x} is outside guest RAM")
                return
            lo = int.from_bytes(raw[:8], "little")
            hi = int.from_bytes(raw[8:], "little")
            try:
                self.descriptor(lo, hi)
            except InvalidDescriptor as e:
                self._queue_error(f"descriptor {head} at {address:#x} "
                                  f"({hi:#018x}_{lo:016x}): {e}")
                return
            head = (head + 1) % entries
            iommu.iqh = head << 4

    def _process_native(self, head: int, tail: int, entries: int, base: int) -> int:
        """Let iommu/qi.c do IOTLB and plain wait descriptors from `head`;
        returns where it stopped (the next descriptor is Python's)."""
        iommu = self.iommu
        slots = native_slots(iommu.memory)
        if slots is None:
            return head
        table, removed = iommu.iotlb.native
        out = self._native_result
        lib.akvm_qi_process(slots, len(slots), table, base, entries, head, tail,
                            int(iommu.config.psi), iommu.config.mamv, removed,
                            iommu.iotlb.capacity, out)
        self.count_native(out)
        if out.descriptors:
            iommu.iqh = out.head << 4
        return out.head

    def count_native(self, out, register_iotlb=None) -> None:
        """Count what C did (`out`: a struct akvm_qi_result; `register_iotlb`:
        IOTLB register invalidations by granularity) and forget the IOTLB
        slots it emptied."""
        self.iommu.iotlb.drop_slots(out.removed)
        if register_iotlb is not None:
            self._count_iotlb("register", register_iotlb)
        if not out.descriptors:
            return
        self.descriptors += out.descriptors
        self._count_iotlb("queued", out.iotlb)
        if out.waits_status:
            self.counts[("queued", "wait", "status")] += out.waits_status
        if out.waits_none:
            self.counts[("queued", "wait", "none")] += out.waits_none

    def _count_iotlb(self, interface: str, by_granularity) -> None:
        for g in (G_GLOBAL, G_DOMAIN, G_PAGE):
            if by_granularity[g]:
                self.counts[(interface, "iotlb", GRANULARITY["iotlb"][g])] += by_granularity[g]

    def _queue_error(self, message: str) -> None:
        self.queue_errors += 1
        self._log_once("iqe", "invalidation queue error (FSTS.IQE; later ones not logged): %s",
                       message)
        self.iommu.faults.set_status(FSTS_IQE)

    def descriptor(self, lo: int, hi: int) -> None:
        """Carry out one 128-bit descriptor, or raise InvalidDescriptor."""
        kind = lo & 0xF
        if kind not in RESERVED or lo & _bits(11, 9):
            name = DESC_NAMES.get(kind, "unknown")
            raise InvalidDescriptor(f"type {kind} ({name}) is not supported")
        rsv_lo, rsv_hi = RESERVED[kind]
        if lo & rsv_lo or hi & rsv_hi:
            raise InvalidDescriptor(f"reserved bits set in a {DESC_NAMES[kind]} descriptor")
        self.descriptors += 1
        if kind == DESC_CONTEXT:
            g = (lo >> 4) & 3
            if not self.context("queued", g, (lo >> 16) & 0xFFFF, (lo >> 32) & 0xFFFF,
                                (lo >> 48) & 3):
                raise InvalidDescriptor(f"context-cache granularity {g} is reserved")
        elif kind == DESC_IOTLB:
            g = (lo >> 4) & 3
            if not self.iotlb("queued", g, (lo >> 16) & 0xFFFF, hi & ~0xFFF, hi & IVA_AM_MASK):
                raise InvalidDescriptor(f"iotlb granularity {g} or address mask "
                                        f"{hi & IVA_AM_MASK} is invalid")
        elif kind == DESC_DEVICE_TLB:
            # No emulated function has a device-TLB (ATS): nothing cached to drop.
            self.counts[("queued", "device-tlb", "range" if hi & 1 else "page")] += 1
        elif kind == DESC_IEC:
            # No interrupt remapping (ECAP.IR = 0): no interrupt entry cache.
            granularity = "index" if lo & 0x10 else "global"
            self.counts[("queued", "interrupt-entry-cache", granularity)] += 1
        else:
            self._wait(lo, hi)

    def _wait(self, lo: int, hi: int) -> None:
        """Invalidation wait: every earlier descriptor is done (they are done
        synchronously), so write the status and/or signal completion now."""
        iommu = self.iommu
        what = []
        if lo & WAIT_SW:
            what.append("status")
            address = hi & ~0x3
            try:
                iommu.memory.write_u32(address, lo >> 32)
            except GuestMemoryError:
                self.wait_write_errors += 1
                self._log_once("wait-write", "invalidation wait status write to %#x is outside "
                               "guest RAM (dropped)", address)
        if lo & WAIT_IF:
            what.append("interrupt")
            if not iommu.ics & ICS_IWC:
                iommu.ics |= ICS_IWC
                iommu.inv_event.raise_condition()
        self.counts[("queued", "wait", "+".join(what) or "none")] += 1
