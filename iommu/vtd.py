"""An Intel VT-d DMA-remapping unit: its register page and the translation it performs.

The register page (VT-d 3.x chapter 10) sits on the MMIO bus at
layout.VTD_BASE; the DMAR table (vmm/tables/dmar.py) tells the guest so.
Register names are the spec's. Semantics per field: read-only (VER, CAP,
ECAP, GSTS, IQH, FSTS.PPF/FRI, ...), read-write, write-1-to-clear
(FSTS.PFO/IQE/ICE/ITE, ICS.IWC, FRCD.F) and reserved (reads 0, writes
ignored). Accesses of 1, 2, 4 or 8 bytes at any offset are split over the
registers they touch, so a 64-bit register written as two dwords works.

Every command completes inside the MMIO write that issues it: GSTS,
CCMD.ICC, IOTLB.IVT and IQH are already final when the guest reads them
back (Akaros polls GSTS before it has an IDT).

Defaults (what upstream Akaros accepts, with QEMU's register layout):
48-bit MGAW with 3- and 4-level tables, 2 MiB and 1 GiB pages, CM = 0,
RWBF = 0, PSI with MAMV 18, read/write draining, 8 fault recording
registers at 0x220, ECAP: coherent walks, QI, pass-through, IVA/IOTLB at
0xF0/0xF8. No interrupt remapping, no device-TLB, no scalable mode.

Nothing the guest writes raises out of read()/write(): an internal error
is logged once and the access is dropped.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from akvm.iommu.cache import ContextCache, Iotlb, IotlbEntry, Negative
from akvm.iommu.checker import CoherenceChecker
from akvm.iommu.doorbell import QueueDoorbell
from akvm.iommu.faults import (CTL_IM, EventInterrupt, FaultLog, FSTS_IQE, FSTS_RW1C, MsiSink)
from akvm.iommu.invalidation import (
    CCMD_CAIG_MASK, CCMD_ICC, CCMD_WRITABLE, ICS_IWC, IOTLB_IAIG_MASK, IOTLB_IVT,
    IOTLB_WRITABLE, IQA_WRITABLE, IQ_INDEX_MASK, IVA_WRITABLE, Invalidator,
)
from akvm.iommu.translate import (
    FAULT_REASONS, FR_ADDRESS_BEYOND_MGAW, FR_READ, FR_WRITE, SAGAW_BIT, ContextEntry,
    TranslationFault, WalkParams, context_entry, walk,
)
from akvm.base.memory import GuestMemory
from akvm.base.native import native_slots

log = logging.getLogger("akvm.iommu")

# --- Register offsets (10.4) -----------------------------------------------------
VER = 0x00
CAP = 0x08
ECAP = 0x10
GCMD = 0x18
GSTS = 0x1C
RTADDR = 0x20
CCMD = 0x28
FSTS = 0x34
FECTL = 0x38
FEDATA = 0x3C
FEADDR = 0x40
FEUADDR = 0x44
IQH = 0x80
IQT = 0x88
IQA = 0x90
ICS = 0x9C
IECTL = 0xA0
IEDATA = 0xA4
IEADDR = 0xA8
IEUADDR = 0xAC
IRO = 0xF                      # ECAP.IRO: IVA at IRO * 16, IOTLB at IRO * 16 + 8
IVA = IRO * 16
IOTLB = IVA + 8
FRO = 0x22                     # CAP.FRO: fault recording registers from FRO * 16
FRCD = FRO * 16
REGISTER_PAGE = 0x1000

VERSION = 0x10                 # 1.0

# GCMD / GSTS bits (10.4.4, 10.4.5)
GCMD_TE = 1 << 31
GCMD_SRTP = 1 << 30
GCMD_SFL = 1 << 29
GCMD_EAFL = 1 << 28
GCMD_WBF = 1 << 27
GCMD_QIE = 1 << 26
GCMD_IRE = 1 << 25
GCMD_SIRTP = 1 << 24
GCMD_CFI = 1 << 23
GSTS_TES = GCMD_TE
GSTS_RTPS = GCMD_SRTP
GSTS_QIES = GCMD_QIE

# CAP fields (10.4.2)
CAP_ND_SHIFT = 0
CAP_RWBF = 1 << 4
CAP_CM = 1 << 7
CAP_SAGAW_SHIFT = 8
CAP_MGAW_SHIFT = 16
CAP_FRO_SHIFT = 24
CAP_SLLPS_SHIFT = 34
CAP_PSI = 1 << 39
CAP_NFR_SHIFT = 40
CAP_MAMV_SHIFT = 48
CAP_DWD = 1 << 54
CAP_DRD = 1 << 55
ND_16_BIT_DOMAINS = 6

# ECAP fields (10.4.3)
ECAP_C = 1 << 0
ECAP_QI = 1 << 1
ECAP_DT = 1 << 2
ECAP_IR = 1 << 3
ECAP_PT = 1 << 6
ECAP_IRO_SHIFT = 8

RTADDR_WRITABLE = ~0xFFF & 0xFFFF_FFFF_FFFF_FFFF       # TTM (11:10) is 0: legacy mode only
EVENT_DATA_WRITABLE = 0xFFFF           # 31:16 (extended data) only with ECAP.EIM
EVENT_ADDR_WRITABLE = 0xFFFF_FFFC      # 1:0 reserved
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
NO_LIMIT = 1 << 64


@dataclass(frozen=True)
class VtdConfig:
    """The options of `--iommu vtd[,aw=39|48][,cm=on][,qi=off][,pt=off][,psi=off][,frcd=N]
    [,iotlb=N][,check=on|stop]`, and the CAP/ECAP they make."""
    aw: int = 48                 # MGAW and host address width; 48: 3- and 4-level, 39: 3-level
    cm: bool = False             # caching mode: not-present entries may be cached too
    qi: bool = True              # queued invalidation
    pt: bool = True              # pass-through context entries
    psi: bool = True             # page-selective IOTLB invalidation
    mamv: int = 18               # largest address mask (2^18 pages = 1 GiB)
    fault_records: int = 8
    iotlb_entries: int = 512
    context_entries: int = 256
    check: str = "off"           # the coherence checker: off, on, stop

    @property
    def sagaw(self) -> int:
        return SAGAW_BIT[1] | (SAGAW_BIT[2] if self.aw == 48 else 0)

    @property
    def cap(self) -> int:
        return (ND_16_BIT_DOMAINS << CAP_ND_SHIFT | (CAP_CM if self.cm else 0) |
                self.sagaw << CAP_SAGAW_SHIFT | (self.aw - 1) << CAP_MGAW_SHIFT |
                FRO << CAP_FRO_SHIFT | 0b11 << CAP_SLLPS_SHIFT | (CAP_PSI if self.psi else 0) |
                (self.fault_records - 1) << CAP_NFR_SHIFT |
                (self.mamv if self.psi else 0) << CAP_MAMV_SHIFT | CAP_DWD | CAP_DRD)

    @property
    def ecap(self) -> int:
        return (ECAP_C | (ECAP_QI if self.qi else 0) | (ECAP_PT if self.pt else 0) |
                IRO << ECAP_IRO_SHIFT)

    @property
    def params(self) -> WalkParams:
        return WalkParams(haw=self.aw, mgaw=self.aw, sagaw=self.sagaw, large_pages=0b11,
                          pass_through=self.pt, device_tlb=False)


class VtdIommu:
    """One remapping unit: registers (read/write, a bus device) and translate()."""

    def __init__(self, memory: GuestMemory, msi: MsiSink, config: VtdConfig = VtdConfig(), *,
                 on_stale: Callable[[str], None] | None = None, base: int | None = None):
        """`base`: the register page's guest-physical address, when an exit loop
        may complete IOTLB invalidations in C (self.doorbell)."""
        self.memory = memory
        self.config = config
        self.params = config.params
        self.cap = config.cap
        self.ecap = config.ecap
        self.lock = threading.RLock()
        self.gsts = 0
        self.rtaddr = 0
        self.root = 0                    # the root table latched by the last SRTP
        self.ccmd = 0
        self.iotlb_reg = 0
        self.iva = 0
        self.iqa = self.iqh = self.iqt = 0
        self.ics = 0
        self.fault_event = EventInterrupt("fault event", msi)
        self.faults = FaultLog(config.fault_records, self.fault_event)
        self.inv_event = EventInterrupt("invalidation completion", msi)
        self.context_cache = ContextCache(config.context_entries)
        self.iotlb = Iotlb(config.iotlb_entries)
        self.invalidator = Invalidator(self)
        self.checker = (CoherenceChecker(self, stop=config.check == "stop", on_stale=on_stale)
                        if config.check != "off" else None)
        self.translations = 0
        self.passthrough = 0             # requests while translation was off, or TT = 2
        self.fast_translators: list = []  # akvm.iommu.fastdma: devices' translators in C
        self.internal_errors = 0
        self._logged_errors: set[str] = set()
        self._regs = self._register_table()
        # Invalidation in C (the queue's doorbell, IVA/IOTLB), then also the unit's lock.
        self.doorbell = None
        if (base is not None and self.invalidator.native
                and native_slots(memory) is not None):
            self.doorbell = self.lock = QueueDoorbell(self, base + IQT, base + IRO * 16)

    # --- state ----------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return bool(self.gsts & GSTS_TES)

    @property
    def qi_enabled(self) -> bool:
        return bool(self.gsts & GSTS_QIES)

    # --- snapshots (akvm.devices.state's protocol) ------------------------------------
    # Registers, the invalidation queue's registers and the fault records are saved;
    # the context cache and the IOTLB come back empty, as after a global invalidation:
    # every translation is walked again from the guest's tables.

    _REGISTERS = ("gsts", "rtaddr", "root", "ccmd", "iotlb_reg", "iva", "iqa", "iqh", "iqt", "ics",
                  "translations", "passthrough", "internal_errors")

    def snapshot(self) -> dict:
        with self.lock:                 # caught up with what C did
            inv = self.invalidator
            return {**{name: getattr(self, name) for name in self._REGISTERS},
                    "fault_event": self.fault_event.snapshot(),
                    "inv_event": self.inv_event.snapshot(), "faults": self.faults.snapshot(),
                    "invalidations": [[*key, n] for key, n in sorted(inv.counts.items())],
                    "refused": inv.refused, "queue_errors": inv.queue_errors}

    def restore(self, state: dict) -> None:
        with self.lock:                 # C gets the queue's state when it is let go
            for name in self._REGISTERS:
                setattr(self, name, int(state[name]))
            self.fault_event.restore(state["fault_event"])
            self.inv_event.restore(state["inv_event"])
            self.faults.restore(state["faults"])
            inv = self.invalidator
            inv.counts.clear()
            inv.counts.update({tuple(entry[:3]): int(entry[3]) for entry in state["invalidations"]})
            inv.refused, inv.queue_errors = int(state["refused"]), int(state["queue_errors"])

    # --- translation ------------------------------------------------------------

    def translate(self, sid: int, address: int, write: bool) -> tuple[int, int]:
        """Translate one device access: (guest-physical address, bytes valid from there).

        Raises TranslationFault after recording it (unless FPD); raises nothing else.
        """
        with self.lock:
            if not self.gsts & GSTS_TES:
                self.passthrough += 1
                return address, NO_LIMIT - address
            try:
                return self._translate(sid, address, write)
            except TranslationFault as f:
                self.faults.record(sid, f.reason, address, write, fpd=f.fpd)
                raise
            except Exception as e:      # a bug here must not become a VMM crash
                self._internal_error("translate", e)
                fault = TranslationFault(FR_WRITE if write else FR_READ, address,
                                         detail="internal error")
                self.faults.record(sid, fault.reason, address, write)
                raise fault from None

    def _translate(self, sid: int, address: int, write: bool) -> tuple[int, int]:
        self.translations += 1
        ctx = self._context(sid, address)
        if not 0 <= address < 1 << ctx.width:
            raise TranslationFault(FR_ADDRESS_BEYOND_MGAW, address, fpd=ctx.fpd, did=ctx.did,
                                   detail=f"{address:#x} needs more than {ctx.width} bits")
        if ctx.pass_through:
            self.passthrough += 1
            return address, (1 << ctx.width) - address
        entry = self.iotlb.lookup(ctx.did, address)
        if entry is None:
            try:
                leaf = walk(self.memory, ctx, address, write, self.params)
            except TranslationFault as f:
                if self.config.cm:
                    self.iotlb.insert(ctx.did, address, 12, Negative(f, ctx.did))
                raise
            entry = IotlbEntry(ctx.did, leaf, sid)
            self.iotlb.insert(ctx.did, leaf.iova, leaf.shift, entry)
        elif isinstance(entry, Negative):
            raise _cached(entry.fault, address)
        elif self.checker is not None:
            self.checker.iotlb_hit(ctx, address, entry)
        leaf = entry.leaf
        if not (leaf.write if write else leaf.read):
            raise TranslationFault(FR_WRITE if write else FR_READ, address, fpd=ctx.fpd,
                                   did=ctx.did, detail=f"page {leaf.iova:#x} maps "
                                   f"{leaf.frame:#x} {'read-only' if leaf.read else 'write-only'}")
        offset = address - leaf.iova
        return leaf.frame + offset, leaf.size - offset

    def untranslated(self, sid: int) -> bool:
        """Whether sid's DMA is passed through unchanged now: translation is off, or
        its context (looked up as a DMA would, without recording a fault) is
        pass-through with an address width that covers guest RAM."""
        with self.lock:
            return isinstance(self._dma_target(sid, "untranslated"), int)

    def _dma_target(self, sid: int, where: str) -> ContextEntry | int | None:
        """With the lock held, what sid's DMA goes through now: the bound below which
        it passes unchanged (untranslated()), its translated context, or None (no
        context, or a pass-through one short of RAM)."""
        if not self.gsts & GSTS_TES:
            return 1 << 64
        try:
            ctx = self._context(sid, 0)
        except TranslationFault:
            return None
        except Exception as e:          # as in translate(): never a VMM crash
            self._internal_error(where, e)
            return None
        if not ctx.pass_through:
            return ctx
        top = max(slot.end for slot in self.memory.slots)
        return 1 << ctx.width if top <= 1 << ctx.width else None

    def fast_context(self, sid: int) -> ContextEntry | int | None:
        """With the lock held, what a translator in C may serve sid's DMA from
        (akvm.iommu.fastdma): its translated context, or the bound below which the
        DMA passes unchanged (as _dma_target()); None without the C IOTLB and lock,
        or with the coherence checker on (which must see every access)."""
        if self.doorbell is None or self.checker is not None:
            return None
        return self._dma_target(sid, "fast_context")

    def _context(self, sid: int, address: int) -> ContextEntry:
        cached = self.context_cache.lookup(sid)
        if cached is None:
            try:
                ctx = context_entry(self.memory, self.root, sid, address, self.params)
            except TranslationFault as f:
                if self.config.cm:
                    self.context_cache.insert(sid, Negative(f, 0))
                raise
            self.context_cache.insert(sid, ctx)
            return ctx
        if isinstance(cached, Negative):
            raise _cached(cached.fault, address)
        if self.checker is not None:
            self.checker.context_hit(sid, cached)
        return cached

    # --- the register page (a bus device) ---------------------------------------

    def _register_table(self) -> dict[int, "Register"]:
        """offset -> Register: the page as the spec lays it out (10.4), for this configuration."""
        regs = [
            Register("VER_REG", VER, 4, lambda: VERSION),
            Register("CAP_REG", CAP, 8, lambda: self.cap),
            Register("ECAP_REG", ECAP, 8, lambda: self.ecap),
            Register("GCMD_REG", GCMD, 4, lambda: 0, self._write_gcmd),     # write-only: reads 0
            Register("GSTS_REG", GSTS, 4, lambda: self.gsts),
            Register("RTADDR_REG", RTADDR, 8, lambda: self.rtaddr, self._write_rtaddr),
            Register("CCMD_REG", CCMD, 8, lambda: self.ccmd, self._write_ccmd),
            Register("FSTS_REG", FSTS, 4, lambda: self.faults.fsts, self._write_fsts),
            *_event_registers("FE", self.fault_event, FECTL, FEDATA, FEADDR, FEUADDR),
            Register("IVA_REG", IVA, 8, lambda: self.iva, self._write_iva),
            Register("IOTLB_REG", IOTLB, 8, lambda: self.iotlb_reg, self._write_iotlb),
        ]
        if self.config.qi:
            regs += [
                Register("IQH_REG", IQH, 8, lambda: self.iqh),
                Register("IQT_REG", IQT, 8, lambda: self.iqt, self._write_iqt),
                Register("IQA_REG", IQA, 8, lambda: self.iqa, self._write_iqa),
                Register("ICS_REG", ICS, 4, lambda: self.ics, self._write_ics),
                *_event_registers("IE", self.inv_event, IECTL, IEDATA, IEADDR, IEUADDR),
            ]
        for i in range(self.config.fault_records):
            regs += [
                Register(f"FRCD{i}_LO", FRCD + 16 * i, 8, lambda i=i: self.faults.read_record(i, 0)),
                Register(f"FRCD{i}_HI", FRCD + 16 * i + 8, 8, lambda i=i: self.faults.read_record(i, 1),
                         lambda value, mask, i=i: self._write_frcd(i, value, mask)),
            ]
        return {r.offset: r for r in regs}

    def _find(self, offset: int) -> "Register | None":
        for start in (offset & ~7, offset & ~3):
            reg = self._regs.get(start)
            if reg is not None and offset < start + reg.width:
                return reg
        return None

    def _pieces(self, offset: int, size: int):
        """(register, byte-lane mask, shift into the access) for each register touched."""
        out = []
        pos, end = offset, offset + size
        while pos < end:
            reg = self._find(pos)
            if reg is None:
                pos += 1
                continue
            start = reg.offset
            lo = max(pos, start)
            hi = min(end, start + reg.width)
            mask = ((1 << (8 * (hi - lo))) - 1) << (8 * (lo - start))
            out.append((reg, mask, 8 * (lo - offset) - 8 * (lo - start)))
            pos = hi
        return out

    def read(self, offset: int, size: int) -> int:
        with self.lock:
            try:
                reg = self._regs.get(offset)
                if reg is not None and reg.width == size:
                    return reg.read() & ((1 << (8 * size)) - 1)
                value = 0
                for reg, mask, shift in self._pieces(offset, size):
                    part = reg.read() & mask
                    value |= part << shift if shift >= 0 else part >> -shift
                return value & ((1 << (8 * size)) - 1)
            except Exception as e:
                self._internal_error(f"read {offset:#x}", e)
                return 0

    def write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            try:
                value &= (1 << (8 * size)) - 1
                reg = self._regs.get(offset)
                if reg is not None and reg.width == size:
                    reg.write(value, (1 << (8 * size)) - 1)
                    return
                for reg, mask, shift in self._pieces(offset, size):
                    part = value << -shift if shift < 0 else value >> shift
                    reg.write((reg.read() & ~mask) | (part & mask), mask)
            except Exception as e:
                self._internal_error(f"write {offset:#x}", e)

    def _internal_error(self, where: str, e: Exception) -> None:
        self.internal_errors += 1
        if where not in self._logged_errors:
            self._logged_errors.add(where)
            log.error("iommu: internal error in %s (logged once, the VM keeps running): %r",
                      where, e, exc_info=True)

    # --- register writes ----------------------------------------------------------

    def _write_gcmd(self, value: int, mask: int) -> None:
        """One write: the persistent enables wanted (TE, QIE) plus one-shot commands."""
        if value & GCMD_SRTP or bool(value & GCMD_TE) != bool(self.gsts & GSTS_TES):
            self.context_cache.epoch[0] += 1          # translators in C stop serving
        if value & GCMD_SRTP:
            self.root = self.rtaddr
            self.gsts |= GSTS_RTPS
            log.debug("iommu: root table %#x", self.root)
        if value & GCMD_TE and not self.gsts & GSTS_TES:
            self.gsts |= GSTS_TES
            log.info("iommu: DMA remapping enabled (root table %#x)", self.root)
        elif not value & GCMD_TE and self.gsts & GSTS_TES:
            self.gsts &= ~GSTS_TES
            log.info("iommu: DMA remapping disabled")
        if self.config.qi:
            if value & GCMD_QIE and not self.gsts & GSTS_QIES:
                self.gsts |= GSTS_QIES
                self.invalidator.process_queue()
            elif not value & GCMD_QIE and self.gsts & GSTS_QIES:
                self.gsts &= ~GSTS_QIES
                self.iqh = 0
        # SFL/EAFL (no advanced fault logging), WBF (RWBF = 0), IRE/SIRTP/CFI (no
        # interrupt remapping): nothing to do, and their status bits stay clear.

    def _write_rtaddr(self, value: int, mask: int) -> None:
        self.rtaddr = value & RTADDR_WRITABLE

    def _write_ccmd(self, value: int, mask: int) -> None:
        value = (value & CCMD_WRITABLE) | (self.ccmd & CCMD_CAIG_MASK)
        if mask >> 56 & 0xFF and value & CCMD_ICC:       # the upper byte carries the command
            value = self.invalidator.ccmd(value)
        self.ccmd = value

    def _write_iva(self, value: int, mask: int) -> None:
        self.iva = value & IVA_WRITABLE

    def _write_iotlb(self, value: int, mask: int) -> None:
        value = (value & IOTLB_WRITABLE) | (self.iotlb_reg & IOTLB_IAIG_MASK)
        if mask >> 56 & 0xFF and value & IOTLB_IVT:
            value = self.invalidator.iotlb_register(value, self.iva)
        self.iotlb_reg = value

    def _write_fsts(self, value: int, mask: int) -> None:
        iqe_was = self.faults.status & FSTS_IQE
        self.faults.write_fsts(value & mask & FSTS_RW1C)
        if iqe_was and not self.faults.status & FSTS_IQE:
            self.invalidator.process_queue()         # resume at the descriptor IQH names

    def _write_frcd(self, index: int, value: int, mask: int) -> None:
        if mask >> 56 & 0xFF:
            self.faults.write_record(index, 1, value)

    def _write_iqa(self, value: int, mask: int) -> None:
        self.iqa = value & IQA_WRITABLE
        if not self.qi_enabled:
            self.iqh = self.iqt = 0

    def _write_iqt(self, value: int, mask: int) -> None:
        self.iqt = value & IQ_INDEX_MASK
        if mask & IQ_INDEX_MASK:
            self.invalidator.process_queue()

    def _write_ics(self, value: int, mask: int) -> None:
        if value & mask & ICS_IWC and self.ics & ICS_IWC:
            self.ics &= ~ICS_IWC
            self.inv_event.clear_pending()

    # --- reporting ---------------------------------------------------------------

    def stats(self) -> dict:
        """Counters for --stats and tests."""
        with self.lock:                 # caught up with what C did
            return self._stats()

    def _stats(self) -> dict:
        for fast in self.fast_translators:
            fast.collect()
        inv = self.invalidator
        domains = {did: vars(s).copy() for did, s in sorted(self.iotlb.domains.items())}
        out = {
            "translations": self.translations,
            "passthrough": self.passthrough,
            "context_cache": dict(hits=self.context_cache.hits, misses=self.context_cache.misses,
                                  evictions=self.context_cache.evictions,
                                  invalidated=self.context_cache.invalidated),
            "iotlb": domains,
            "invalidations": [[*key, n] for key, n in sorted(inv.counts.items())],
            "refused_register_commands": inv.refused,
            "queue_errors": inv.queue_errors,
            "faults": dict(recorded=self.faults.recorded, overflowed=self.faults.overflowed,
                           suppressed=self.faults.suppressed,
                           by_reason=dict(self.faults.by_reason)),
            "fault_events": self.fault_event.sent,
            "completion_events": self.inv_event.sent,
            "internal_errors": self.internal_errors,
        }
        if self.checker is not None:
            out["checker"] = dict(checks=self.checker.checks, reports=self.checker.reported,
                                  stale_iotlb_hits=self.checker.stale_iotlb_hits,
                                  stale_context_hits=self.checker.stale_context_hits)
        return out

    def format_stats(self, s: dict | None = None) -> list[str]:
        """The lines --stats prints, from stats() (or a dict it returned)."""
        s = s or self.stats()
        cc = s["context_cache"]
        lines = [f"iommu: {'enabled' if self.enabled else 'disabled'}, "
                 f"{s['translations']} translations, {s['passthrough']} untranslated",
                 f"  context cache: {cc['hits']} hits, {cc['misses']} misses, "
                 f"{cc['evictions']} evictions, {cc['invalidated']} invalidated"]
        for did, d in s["iotlb"].items():
            lines.append(f"  iotlb domain {did}: {d['hits']} hits, {d['misses']} misses, "
                         f"{d['evictions']} evictions, {d['invalidated']} invalidated")
        if s["invalidations"]:
            lines.append("  invalidations: " + ", ".join(
                f"{iface} {kind} {gran} {n}" for iface, kind, gran, n in s["invalidations"]))
        if s["refused_register_commands"] or s["queue_errors"]:
            lines.append(f"  refused register commands {s['refused_register_commands']}, "
                         f"invalidation queue errors {s['queue_errors']}")
        f = s["faults"]
        reasons = ", ".join(f"{FAULT_REASONS.get(r, hex(r))} {n}"
                            for r, n in sorted(f["by_reason"].items())) or "none"
        lines.append(f"  faults: {reasons}; {f['recorded']} recorded, {f['overflowed']} lost "
                     f"to overflow, {f['suppressed']} suppressed (FPD); {s['fault_events']} "
                     f"fault events, {s['completion_events']} completion events")
        if "checker" in s:
            c = s["checker"]
            lines.append(f"  checker: {c['checks']} checks, {c['reports']} stale entries reported "
                         f"({c['stale_iotlb_hits']} stale IOTLB hits, "
                         f"{c['stale_context_hits']} stale context hits)")
        if s["internal_errors"]:
            lines.append(f"  internal errors: {s['internal_errors']}")
        return lines


def _read_only(value: int, mask: int) -> None:
    """A read-only register's write: ignored, as the spec says."""


@dataclass(frozen=True)
class Register:
    """One register of the page: its spec name, offset and width, how it reads, and
    what a write does with the value and the mask of the byte lanes written."""
    name: str
    offset: int
    width: int
    read: Callable[[], int]
    write: Callable[[int, int], None] = _read_only


def _event_registers(prefix: str, event: EventInterrupt, control: int, data: int, address: int,
                     upper_address: int) -> list[Register]:
    """An event interrupt's four registers (FECTL/FEDATA/FEADDR/FEUADDR, or IE*)."""
    def field(name: str, offset: int, attribute: str, writable: int) -> Register:
        return Register(name, offset, 4, lambda: getattr(event, attribute),
                        lambda value, mask: setattr(event, attribute, value & writable))
    return [Register(f"{prefix}CTL_REG", control, 4, lambda: event.control,
                     lambda value, mask: event.write_control(value & CTL_IM)),
            field(f"{prefix}DATA_REG", data, "data", EVENT_DATA_WRITABLE),
            field(f"{prefix}ADDR_REG", address, "address", EVENT_ADDR_WRITABLE),
            field(f"{prefix}UADDR_REG", upper_address, "upper_address", 0xFFFF_FFFF)]


def _cached(fault: TranslationFault, address: int) -> TranslationFault:
    """A fault served from a negative cache entry (caching mode), for this address."""
    return TranslationFault(fault.reason, address, fpd=fault.fpd, did=fault.did,
                            detail="cached not-present entry (caching mode)")
