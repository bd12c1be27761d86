"""DMA-remapping translation in legacy mode (VT-d 3.x chapter 3 and 9).

    RTADDR -> root table (256 x 128-bit entries, by bus)
           -> context table (256 x 128-bit entries, by devfn)
           -> TT 0/1: second-level page table (3 or 4 levels, 2 MiB / 1 GiB pages)
              TT 2:   pass-through (device address = host address)

Everything here reads tables the guest wrote, so everything is checked:
present bits, reserved bits, address widths, and that each table is in
guest RAM. Failures raise TranslationFault with the spec's fault reason;
these functions neither cache nor record anything (akvm.iommu.vtd does that),
so the coherence checker can call them too.

Second-level entries in EPT format (what Akaros hands the IOMMU) are
accepted: R 0, W 1, X 2, memory type 5:3, ignore-PAT 6, PS 7, A 8, D 9
and the ignored bits are not checked; X, EMT, IPAT, A, D, SNP and TM are
ignored.
"""
from __future__ import annotations

from dataclasses import dataclass

from akvm.base.memory import GuestMemory, GuestMemoryError
from akvm.base.native import ffi, lib, native_slots

# --- Fault reasons (VT-d 3.x 7.1.3, table "Unrecoverable fault conditions") --------
# (those a second-level walk gives are shared with slwalk.c: iommu/vtdspec.h)
FR_ROOT_NOT_PRESENT = 0x1
FR_CONTEXT_NOT_PRESENT = 0x2
FR_CONTEXT_INVALID = 0x3
FR_ADDRESS_BEYOND_MGAW = lib.VTD_FR_ADDRESS_BEYOND_MGAW
FR_WRITE = lib.VTD_FR_WRITE
FR_READ = lib.VTD_FR_READ
FR_PAGING_ACCESS = lib.VTD_FR_PAGING_ACCESS
FR_ROOT_ACCESS = 0x8
FR_CONTEXT_ACCESS = 0x9
FR_ROOT_RESERVED = 0xA
FR_CONTEXT_RESERVED = 0xB
FR_PAGING_RESERVED = lib.VTD_FR_PAGING_RESERVED

FAULT_REASONS = {
    FR_ROOT_NOT_PRESENT: "root entry not present",
    FR_CONTEXT_NOT_PRESENT: "context entry not present",
    FR_CONTEXT_INVALID: "invalid context entry",
    FR_ADDRESS_BEYOND_MGAW: "address beyond the guest address width",
    FR_WRITE: "write not permitted",
    FR_READ: "read not permitted",
    FR_PAGING_ACCESS: "paging entry not in memory",
    FR_ROOT_ACCESS: "root table not in memory",
    FR_CONTEXT_ACCESS: "context table not in memory",
    FR_ROOT_RESERVED: "reserved bits set in root entry",
    FR_CONTEXT_RESERVED: "reserved bits set in context entry",
    FR_PAGING_RESERVED: "reserved bits set in paging entry",
}

# --- Root and context entries (VT-d 9.1, 9.3) --------------------------------------
ENTRY_P = 1 << 0
CTX_FPD = 1 << 1
CTX_TT_SHIFT = 2
CTX_TT_MASK = 0x3
CTX_AW_MASK = 0x7
CTX_DID_SHIFT = 8
CTX_DID_MASK = 0xFFFF

TT_UNTRANSLATED = 0          # second-level translation, untranslated requests only
TT_DEVICE_TLB = 1            # ... and translated requests / translation requests (ATS)
TT_PASS_THROUGH = 2

ROOT_LO_RESERVED = 0xFFE               # 11:1 (the high word is reserved in legacy mode)
CTX_LO_RESERVED = 0xFF0                # 11:4
CTX_HI_RESERVED = ~((1 << 24) - 1) & 0xFFFF_FFFF_FFFF_FFFF | 1 << 7   # 63:24, 7

# --- Second-level paging entries (VT-d 9.8) ----------------------------------------
SL_R = lib.VTD_SL_R
SL_W = lib.VTD_SL_W
SL_PS = lib.VTD_SL_PS
SL_ADDR_LIMIT = 52                     # address bits end at 51

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
LEVEL_STRIDE = 9

# AW field of a context entry -> (levels, address width)
AW_LEVELS = {1: (3, 39), 2: (4, 48), 3: (5, 57)}
SAGAW_BIT = {1: 1 << 1, 2: 1 << 2, 3: 1 << 3}


def format_sid(sid: int) -> str:
    """A source id (requester id) as bus:device.function."""
    return f"{sid >> 8:02x}:{(sid >> 3) & 0x1F:02x}.{sid & 7:x}"


class TranslationFault(Exception):
    """A request the remapping hardware blocks; `reason` is the fault reason code.

    `fpd` says the context entry asked for this fault not to be recorded
    (Fault Processing Disable); `did` is the domain, when one was found.
    """

    def __init__(self, reason: int, address: int, *, fpd: bool = False, did: int | None = None,
                 detail: str = ""):
        text = FAULT_REASONS.get(reason, f"fault {reason:#x}")
        super().__init__(f"{text} ({reason:#x})" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.address = address
        self.fpd = fpd
        self.did = did


@dataclass(frozen=True)
class WalkParams:
    """What the unit supports, from CAP/ECAP: the limits a walk checks against."""
    haw: int = 48                # host address width: table and page addresses below 2^haw
    mgaw: int = 48               # maximum guest address width
    sagaw: int = 1 << 2          # CAP.SAGAW bits
    large_pages: int = 0b11      # CAP.SLLPS: bit 0 2 MiB, bit 1 1 GiB
    pass_through: bool = True    # ECAP.PT
    device_tlb: bool = False     # ECAP.DT

    @property
    def address_reserved(self) -> int:
        """Address bits 51:HAW, reserved in every entry that holds an address."""
        return ((1 << SL_ADDR_LIMIT) - 1) & ~((1 << self.haw) - 1)


@dataclass(frozen=True)
class ContextEntry:
    """A present, valid context entry, decoded (what the context cache holds)."""
    sid: int
    did: int
    tt: int
    fpd: bool
    slptptr: int                 # second-level page table (TT 0/1)
    levels: int                  # 3 or 4 (5) for TT 0/1; 0 for pass-through
    width: int                   # input address width for this context
    lo: int = 0
    hi: int = 0

    @property
    def pass_through(self) -> bool:
        return self.tt == TT_PASS_THROUGH


@dataclass(frozen=True)
class Leaf:
    """The result of a second-level walk: a page and what may be done with it."""
    iova: int                    # first byte of the page (device address)
    frame: int                   # first byte of the page (host address)
    shift: int                   # 12, 21 or 30
    read: bool
    write: bool
    pte_address: int             # where the leaf entry lives (for the checker's report)

    @property
    def size(self) -> int:
        return 1 << self.shift


def _read_u64(memory: GuestMemory, gpa: int) -> int:
    return int.from_bytes(memory.view(gpa, 8), "little")


def root_entry(memory: GuestMemory, rtaddr: int, bus: int, address: int,
               params: WalkParams) -> int:
    """The context-table address of `bus`'s root entry (faults 1, 8, 0xA)."""
    gpa = rtaddr + (bus & 0xFF) * 16
    try:
        lo = _read_u64(memory, gpa)
        hi = _read_u64(memory, gpa + 8)
    except GuestMemoryError:
        raise TranslationFault(FR_ROOT_ACCESS, address, detail=f"root entry at {gpa:#x}") from None
    if not lo & ENTRY_P:
        raise TranslationFault(FR_ROOT_NOT_PRESENT, address, detail=f"bus {bus:#04x}")
    if lo & (ROOT_LO_RESERVED | params.address_reserved) or hi:
        raise TranslationFault(FR_ROOT_RESERVED, address,
                               detail=f"root entry {hi:#018x}_{lo:016x}")
    return lo & ~0xFFF & 0xFFFF_FFFF_FFFF_FFFF


def context_entry(memory: GuestMemory, rtaddr: int, sid: int, address: int,
                  params: WalkParams) -> ContextEntry:
    """Root entry then context entry for source id `sid` (faults 1-3, 8, 9, 0xA, 0xB).

    A fault found in the context entry carries its FPD bit, present or not:
    a context entry with P clear and FPD set silences its own fault.
    """
    ctp = root_entry(memory, rtaddr, sid >> 8, address, params)
    gpa = ctp + (sid & 0xFF) * 16
    try:
        lo = _read_u64(memory, gpa)
        hi = _read_u64(memory, gpa + 8)
    except GuestMemoryError:
        raise TranslationFault(FR_CONTEXT_ACCESS, address,
                               detail=f"context entry at {gpa:#x}") from None
    fpd = bool(lo & CTX_FPD)
    did = (hi >> CTX_DID_SHIFT) & CTX_DID_MASK
    if not lo & ENTRY_P:
        raise TranslationFault(FR_CONTEXT_NOT_PRESENT, address, fpd=fpd)
    tt = (lo >> CTX_TT_SHIFT) & CTX_TT_MASK
    if lo & CTX_LO_RESERVED or hi & CTX_HI_RESERVED:
        raise TranslationFault(FR_CONTEXT_RESERVED, address, fpd=fpd, did=did,
                               detail=f"context entry {hi:#018x}_{lo:016x}")
    if tt == TT_PASS_THROUGH:
        if not params.pass_through:
            raise TranslationFault(FR_CONTEXT_INVALID, address, fpd=fpd, did=did,
                                   detail="pass-through not supported")
        return ContextEntry(sid, did, tt, fpd, 0, 0, min(params.haw, params.mgaw), lo, hi)
    if tt == 3 or (tt == TT_DEVICE_TLB and not params.device_tlb):
        raise TranslationFault(FR_CONTEXT_INVALID, address, fpd=fpd, did=did,
                               detail=f"translation type {tt}")
    aw = hi & CTX_AW_MASK
    if aw not in AW_LEVELS or not params.sagaw & SAGAW_BIT[aw]:
        raise TranslationFault(FR_CONTEXT_INVALID, address, fpd=fpd, did=did,
                               detail=f"address width {aw} not in SAGAW {params.sagaw:#x}")
    slptptr = lo & ~0xFFF & 0xFFFF_FFFF_FFFF_FFFF
    if slptptr & params.address_reserved:
        raise TranslationFault(FR_CONTEXT_RESERVED, address, fpd=fpd, did=did,
                               detail=f"SLPTPTR {slptptr:#x} beyond the host address width")
    levels, width = AW_LEVELS[aw]
    return ContextEntry(sid, did, tt, fpd, slptptr, levels, min(width, params.mgaw), lo, hi)


def walk_python(memory: GuestMemory, ctx: ContextEntry, address: int, write: bool,
                params: WalkParams) -> Leaf:
    """The second-level walk for `address` (faults 4, 5, 6, 7, 0xC); the twin of
    akvm_sl_walk (iommu/slwalk.c), which walk() uses when it is built.

    Permissions are the AND of R and W over every level. A not-present
    entry (R and W clear) faults as a read or write without permission,
    whichever the request was. The returned leaf may still lack the
    permission the request needs: the caller checks (and may cache it).
    """
    fault = dict(fpd=ctx.fpd, did=ctx.did)
    if not 0 <= address < 1 << ctx.width:
        raise TranslationFault(FR_ADDRESS_BEYOND_MGAW, address, **fault,
                               detail=f"{address:#x} needs more than {ctx.width} bits")
    table = ctx.slptptr
    readable = writable = True
    reserved_addr = params.address_reserved
    for level in range(ctx.levels, 0, -1):
        shift = PAGE_SHIFT + LEVEL_STRIDE * (level - 1)
        gpa = table + ((address >> shift) & 0x1FF) * 8
        try:
            entry = _read_u64(memory, gpa)
        except GuestMemoryError:
            raise TranslationFault(FR_PAGING_ACCESS, address, **fault,
                                   detail=f"level {level} entry at {gpa:#x}") from None
        if not entry & (SL_R | SL_W):
            raise TranslationFault(FR_WRITE if write else FR_READ, address, **fault,
                                   detail=f"level {level} entry at {gpa:#x} not present")
        reserved = reserved_addr
        leaf = level == 1
        if entry & SL_PS and level > 1:
            if level == 2 and params.large_pages & 1 or level == 3 and params.large_pages & 2:
                leaf = True
                reserved |= ((1 << shift) - 1) & ~0xFFF       # address bits below the page
            else:
                reserved |= SL_PS                            # PS where no large page exists
        if entry & reserved:
            raise TranslationFault(FR_PAGING_RESERVED, address, **fault,
                                   detail=f"level {level} entry {entry:#018x} at {gpa:#x}")
        readable = readable and bool(entry & SL_R)
        writable = writable and bool(entry & SL_W)
        next_address = entry & ((1 << SL_ADDR_LIMIT) - 1) & ~0xFFF
        if leaf:
            base = address & ~((1 << shift) - 1)
            return Leaf(base, next_address, shift, readable, writable, gpa)
        table = next_address
    raise AssertionError("unreachable: level 1 is always a leaf")


# --- The walk in C (iommu/slwalk.c) ---------------------------------------------
_U64 = 1 << 64


def walk_native(memory: GuestMemory, ctx: ContextEntry, address: int, write: bool,
                params: WalkParams) -> Leaf | None:
    """walk_python() done by akvm_sl_walk: the same Leaf or TranslationFault, or None
    when C cannot take these arguments (odd values, RAM C cannot reach)."""
    if not (0 <= address < _U64 and 0 <= ctx.slptptr < _U64
                            and 0 <= params.haw and 0 <= ctx.width):
        return None
    slots = native_slots(memory)
    if slots is None:
        return None
    out = ffi.new("struct akvm_sl_leaf *")
    reason = lib.akvm_sl_walk(slots, len(slots), ctx.slptptr, ctx.levels,
                               min(ctx.width, 64), min(params.haw, 64),
                               params.large_pages & 3, address, bool(write), out)
    if reason == 0:
        return Leaf(out.iova, out.frame, out.shift, bool(out.read), bool(out.write), out.pte)
    if reason < 0:
        return None
    if reason == FR_ADDRESS_BEYOND_MGAW:
        detail = f"{address:#x} needs more than {ctx.width} bits"
    elif reason == FR_PAGING_RESERVED:
        detail = f"level {out.level} entry {out.entry:#018x} at {out.pte:#x}"
    elif reason == FR_PAGING_ACCESS:
        pte = out.pte
        if out.level == ctx.levels and pte < ctx.slptptr:
            pte += _U64                # a root table at the top of the address space wrapped
        detail = f"level {out.level} entry at {pte:#x}"
    else:
        detail = f"level {out.level} entry at {out.pte:#x} not present"
    raise TranslationFault(reason, address, fpd=ctx.fpd, did=ctx.did, detail=detail)


def walk(memory: GuestMemory, ctx: ContextEntry, address: int, write: bool,
         params: WalkParams) -> Leaf:
    """The second-level walk for `address`: in C, or walk_python() for arguments
    C does not take."""
    leaf = walk_native(memory, ctx, address, write, params)
    return walk_python(memory, ctx, address, write, params) if leaf is None else leaf
