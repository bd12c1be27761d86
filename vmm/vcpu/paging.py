"""Guest linear -> guest physical translation: the x86 page walk, done in software.

Used when akvm must touch guest memory on the guest's behalf through a
linear address: fetching the bytes of an instruction KVM could not complete,
its memory operand, the IDT. Every mode the SDM (vol. 3, chapter 4)
describes for a 64-bit capable CPU is handled: paging off; 32-bit paging
with and without CR4.PSE (4 MiB pages, PSE-36 high bits); PAE; 4-level
and (CR4.LA57) 5-level long-mode paging with 2 MiB and 1 GiB pages.

Permission checks follow the SDM: R/W and U/S are combined over all levels,
CR0.WP governs supervisor writes to read-only pages, EFER.NXE enables the XD
bit, CR4.SMEP and CR4.SMAP guard supervisor accesses to user pages, and
reserved bits (above MAXPHYADDR, XD without NXE, PS where it is not allowed,
the holes of large-page entries) fault with PFEC.RSVD. Protection keys
(CR4.PKE/PKS) are not checked. Accessed bits are set on every entry used,
and the dirty bit on the final entry of a write, as the CPU does.

A translation that fails the way it would on hardware raises GuestFault
(a #PF with its error code and CR2, or #GP for a non-canonical address);
a page-table entry that points outside guest RAM raises
GuestMemoryError (the VMM cannot follow it: there is nothing to fault).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from akvm.base.memory import GuestMemory, GuestMemoryError

# Exception vectors used by the completion code.
DE, DB, BP, OF, UD, NM, NP, SS, GP, PF, MF = 0, 1, 3, 4, 6, 7, 11, 12, 13, 14, 16
VECTOR_NAMES = {0: "#DE", 1: "#DB", 3: "#BP", 4: "#OF", 6: "#UD", 7: "#NM", 11: "#NP",
                12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF"}

# Control-register and EFER bits.
CR0_PE, CR0_MP, CR0_TS, CR0_NE, CR0_WP, CR0_PG = 1 << 0, 1 << 1, 1 << 3, 1 << 5, 1 << 16, 1 << 31
CR4_TSD, CR4_PSE, CR4_PAE = 1 << 2, 1 << 4, 1 << 5
CR4_LA57, CR4_OSXSAVE, CR4_SMEP, CR4_SMAP = 1 << 12, 1 << 18, 1 << 20, 1 << 21
EFER_LME, EFER_LMA, EFER_NXE = 1 << 8, 1 << 10, 1 << 11

# Page-table entry bits.
PTE_P, PTE_RW, PTE_US, PTE_A, PTE_D, PTE_PS = 1 << 0, 1 << 1, 1 << 2, 1 << 5, 1 << 6, 1 << 7
PTE_XD = 1 << 63

# Page-fault error code bits.
PFEC_P, PFEC_W, PFEC_U, PFEC_RSVD, PFEC_I = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4

PAGE_SIZE = 0x1000
_ADDR_52 = ((1 << 52) - 1) & ~0xFFF       # bits 51:12 of a PAE/long-mode entry


class GuestFault(Exception):
    """An exception the guest must see, as hardware would raise it."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None,
                 why: str = ""):
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.why = why
        super().__init__(str(self))

    def __str__(self) -> str:
        s = VECTOR_NAMES.get(self.vector, f"vector {self.vector}")
        if self.error_code is not None:
            s += f"({self.error_code:#x})"
        if self.cr2 is not None:
            s += f" at {self.cr2:#x}"
        return s + (f": {self.why}" if self.why else "")


@dataclass(frozen=True)
class Access:
    """What kind of access a translation is for."""
    write: bool = False
    user: bool = False        # a CPL-3 access (implicit supervisor accesses pass False)
    fetch: bool = False
    implicit: bool = False    # a supervisor-mode implicit access (IDT, GDT): SMAP always applies
    ac: bool = False          # RFLAGS.AC, which lifts SMAP for explicit supervisor accesses


READ = Access()
# A debugger's look at memory: any present mapping, whatever its U/S and R/W
# bits (a supervisor read with SMAP lifted; write permission is not checked
# for a read). Used with set_accessed=False, it leaves the guest's page
# tables exactly as they were.
INSPECT = Access(ac=True)


@dataclass(frozen=True)
class PagingState:
    """The control registers that decide how a linear address is translated."""
    cr0: int
    cr3: int
    cr4: int
    efer: int
    maxphyaddr: int = 52

    @classmethod
    def from_sregs(cls, sregs, maxphyaddr: int = 52) -> "PagingState":
        return cls(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, maxphyaddr)

    @property
    def long_mode(self) -> bool:
        return bool(self.efer & EFER_LMA)

    @property
    def mode(self) -> str:
        """'off', '32-bit', 'pae', '4-level' or '5-level'."""
        if not self.cr0 & CR0_PG:
            return "off"
        if self.long_mode:
            return "5-level" if self.cr4 & CR4_LA57 else "4-level"
        return "pae" if self.cr4 & CR4_PAE else "32-bit"

    @property
    def linear_bits(self) -> int:
        return {"off": 32, "32-bit": 32, "pae": 32, "4-level": 48, "5-level": 57}[self.mode]


def canonical(address: int, bits: int) -> bool:
    """Whether a 64-bit address is canonical for `bits` implemented linear-address bits."""
    top = address >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def translate(memory: GuestMemory, ps: PagingState, linear: int, access: Access = READ,
              *, set_accessed: bool = True) -> int:
    """The guest-physical address of `linear`, or GuestFault as the CPU would raise."""
    mode = ps.mode
    if mode == "off":
        return linear & 0xFFFF_FFFF
    if mode in ("4-level", "5-level"):
        bits = ps.linear_bits
        linear &= (1 << 64) - 1
        if not canonical(linear, bits):
            raise GuestFault(GP, 0, why=f"non-canonical address {linear:#x}")
    else:
        linear &= 0xFFFF_FFFF

    rsvd_high = _ADDR_52 & ~((1 << ps.maxphyaddr) - 1)    # address bits above MAXPHYADDR
    nxe = bool(ps.efer & EFER_NXE)
    rw = us = True
    xd = False
    used: list[int] = []          # guest-physical addresses of the entries walked

    def fault(present: bool, rsvd: bool = False) -> GuestFault:
        code = (PFEC_P if present else 0) | (PFEC_W if access.write else 0) \
            | (PFEC_U if access.user else 0) | (PFEC_RSVD if rsvd else 0)
        if access.fetch and ((nxe and mode != "32-bit") or ps.cr4 & CR4_SMEP):
            code |= PFEC_I
        return GuestFault(PF, code, cr2=linear)

    def read_entry(addr: int, size: int) -> int:
        return int.from_bytes(memory.view(addr, size), "little")

    if mode == "32-bit":
        pde_addr = (ps.cr3 & 0xFFFF_F000) + ((linear >> 22) & 0x3FF) * 4
        pde = read_entry(pde_addr, 4)
        if not pde & PTE_P:
            raise fault(False)
        used.append(pde_addr)
        rw, us = bool(pde & PTE_RW), bool(pde & PTE_US)
        if pde & PTE_PS and ps.cr4 & CR4_PSE:
            # 4 MiB page; bits 20:13 carry physical-address bits 39:32 (PSE-36).
            high_bits = min(max(ps.maxphyaddr, 32), 40) - 32
            if pde & (1 << 21) or (pde >> 13) & 0xFF & ~((1 << high_bits) - 1):
                raise fault(True, rsvd=True)
            leaf = pde_addr
            gpa = (pde & 0xFFC0_0000) | (((pde >> 13) & 0xFF) << 32) | (linear & 0x3F_FFFF)
        else:
            pte_addr = (pde & 0xFFFF_F000) + ((linear >> 12) & 0x3FF) * 4
            pte = read_entry(pte_addr, 4)
            if not pte & PTE_P:
                raise fault(False)
            used.append(pte_addr)
            rw, us = rw and bool(pte & PTE_RW), us and bool(pte & PTE_US)
            leaf = pte_addr
            gpa = (pte & 0xFFFF_F000) | (linear & 0xFFF)
    else:
        if mode == "pae":
            # The four PDPTEs: no R/W, U/S, A or XD bits; bits 2:1, 8:5 and 63 reserved.
            pdpte_addr = (ps.cr3 & 0xFFFF_FFE0) + ((linear >> 30) & 3) * 8
            pdpte = read_entry(pdpte_addr, 8)
            if not pdpte & PTE_P:
                raise fault(False)
            if pdpte & (0x1E6 | PTE_XD | rsvd_high):
                raise fault(True, rsvd=True)
            table = pdpte & _ADDR_52
            levels = (21, 12)
        else:
            table = ps.cr3 & _ADDR_52 & ~rsvd_high
            levels = (48, 39, 30, 21, 12) if mode == "5-level" else (39, 30, 21, 12)
        for shift in levels:
            entry_addr = table + ((linear >> shift) & 0x1FF) * 8
            entry = read_entry(entry_addr, 8)
            if not entry & PTE_P:
                raise fault(False)
            rsvd = entry & rsvd_high or (entry & PTE_XD and not nxe)
            large = bool(entry & PTE_PS) and shift in (30, 21)
            if entry & PTE_PS and shift >= 39:
                rsvd = True                      # no PS in PML5E/PML4E
            if large and entry & (((1 << shift) - 1) & ~0x1FFF):
                rsvd = True                      # bits 29:13 / 20:13 of a large-page entry
            if rsvd:
                raise fault(True, rsvd=True)
            used.append(entry_addr)
            rw, us = rw and bool(entry & PTE_RW), us and bool(entry & PTE_US)
            xd = xd or (nxe and bool(entry & PTE_XD))
            if large or shift == 12:
                leaf = entry_addr
                frame = entry & _ADDR_52 & ~((1 << shift) - 1)
                gpa = frame | (linear & ((1 << shift) - 1))
                break
            table = entry & _ADDR_52

    # Permissions (SDM 4.6).
    if access.user:
        if not us:
            raise fault(True)
        if access.write and not rw:
            raise fault(True)
    else:
        if access.write and not rw and ps.cr0 & CR0_WP:
            raise fault(True)
        if us and access.fetch and ps.cr4 & CR4_SMEP:
            raise fault(True)
        if us and not access.fetch and ps.cr4 & CR4_SMAP and (access.implicit or not access.ac):
            raise fault(True)
    if access.fetch and xd:
        raise fault(True)

    if set_accessed:
        for addr in used:
            _set_bits(memory, addr, PTE_A)
        if access.write:
            _set_bits(memory, leaf, PTE_D)
    return gpa


def table_pages(memory: GuestMemory, ps: PagingState, limit: int = 4096) -> set[int]:
    """The guest-physical pages holding the paging structures reachable from CR3 (what a
    walk may read), at most about `limit` of them: a guest's tables can be arbitrarily
    large. Tables outside guest RAM are not read."""
    mode = ps.mode
    if mode == "off":
        return set()
    if mode == "32-bit":
        root, width, depth, address = ps.cr3 & 0xFFFF_F000, 4, 2, 0xFFFF_F000
    elif mode == "pae":
        root, width, depth, address = ps.cr3 & 0xFFFF_FFE0, 8, 3, _ADDR_52
    else:
        root, width, address = ps.cr3 & _ADDR_52, 8, _ADDR_52
        depth = 5 if mode == "5-level" else 4
    large_ok = mode != "32-bit" or ps.cr4 & CR4_PSE
    pages: set[int] = set()
    todo = [(root, depth)]
    while todo and len(pages) < limit:
        table, depth = todo.pop()
        if (table & ~0xFFF) in pages:
            continue                             # a table reached twice (a self-map, say)
        pages.add(table & ~0xFFF)
        if depth == 1:
            continue                             # a page table: its entries map data
        count = 4 if table == root and mode == "pae" else PAGE_SIZE // width
        try:
            entries = struct.unpack(f"<{count}{'I' if width == 4 else 'Q'}",
                                    memory.read(table, count * width))
        except GuestMemoryError:
            continue
        for entry in entries:
            if entry & PTE_P and not (entry & PTE_PS and depth in (2, 3) and large_ok) \
                    and len(todo) < limit:
                todo.append((entry & address, depth - 1))
    return pages


def _set_bits(memory: GuestMemory, entry_addr: int, bits: int) -> None:
    """Set A/D in the low byte of an entry (one byte, like the CPU's locked update)."""
    view = memory.view(entry_addr, 1)
    if view[0] & bits != bits:
        view[0] |= bits


def translate_range(memory: GuestMemory, ps: PagingState, linear: int, length: int,
                    access: Access = READ, *, set_accessed: bool = True) -> list[tuple[int, int]]:
    """(gpa, length) pieces covering [linear, linear + length), each within one page.

    Every page is translated (and checked to be RAM) before anything is
    returned, so a caller that writes afterwards never leaves a partial write.
    """
    pieces = []
    wrap = (1 << 64) if ps.long_mode and ps.cr0 & CR0_PG else (1 << 32)
    while length > 0:
        n = min(length, PAGE_SIZE - (linear & 0xFFF))
        gpa = translate(memory, ps, linear, access, set_accessed=set_accessed)
        if not memory.contains(gpa, n):
            raise GuestMemoryError(f"linear {linear:#x} -> {gpa:#x}+{n:#x} is outside guest RAM")
        pieces.append((gpa, n))
        linear = (linear + n) % wrap
        length -= n
    return pieces


def read_linear(memory: GuestMemory, ps: PagingState, linear: int, length: int,
                access: Access = READ) -> bytes:
    return b"".join(memory.read(gpa, n)
                    for gpa, n in translate_range(memory, ps, linear, length, access))


def write_linear(memory: GuestMemory, ps: PagingState, linear: int, data: bytes,
                 access: Access = Access(write=True)) -> None:
    pieces = translate_range(memory, ps, linear, len(data), access)
    off = 0
    for gpa, n in pieces:
        memory.write(gpa, data[off:off + n])
        off += n
