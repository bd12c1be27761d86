"""Finish in userspace the instructions KVM gave up on.

On kvm_pvm hosts (docs/HOST.md) some guest
instructions end KVM_RUN with KVM_EXIT_INTERNAL_ERROR, suberror 1
(emulation failure): the XSAVE family, INT3, INT n, INTO, INT1, FWAIT and
RDTSCP. The vCPU can be resumed once the instruction has been carried out.
VcpuThread calls a Completer only on such an exit, so on VMX/SVM hosts,
where KVM runs these instructions itself, none of this is ever entered.

A completion: read RIP and the control registers, translate CS:RIP through
the guest's page tables (akvm.vcpu.paging), read up to 15 bytes, decode them with
iced-x86 in the current bitness, and dispatch on the mnemonic:

- xsave/xsaveopt/xsavec/xsaves (and the *64 forms): state from KVM_GET_XSAVE
  stored at the operand in the standard or compacted format;
  xrstor/xrstors: state loaded from guest memory into KVM_SET_XSAVE.
  Faults are those of the SDM (vol. 1, 13.7-13.12): #UD without
  CR4.OSXSAVE, #NM with CR0.TS, #GP on a misaligned area, on reserved
  header bits and on a bad MXCSR, #PF from the page walk.
- int3 / int n / into: the IDT gate's DPL is checked against CPL (#GP with
  error code vector*8+2 if the gate is out of the IDT or too privileged),
  then RIP is advanced and the event injected with KVM_SET_VCPU_EVENTS
  (exception 3 or 4; interrupt n, soft). int1 (ICEBP) injects #DB.
- fwait: #NM if CR0.MP and CR0.TS; #MF if an unmasked x87 exception is
  pending; else nothing.
- rdtscp: EDX:EAX = the guest TSC, ECX = IA32_TSC_AUX, via KVM_GET_MSRS.

A fault found on the way is injected instead (RIP stays on the instruction,
as for any fault) and the guest resumes. An instruction with no completer,
or one whose operand is not guest RAM, is not completed: the completer logs
one report (the instruction, its bytes, the top of the guest stack) and
returns False, and the vCPU thread stops the VM with a register dump
(exit status 5, ExitCode.GUEST_ERROR).

Known simplifications: segment limits and the null-selector check are not
applied to operands (flat segments are assumed outside 64-bit mode; bases
are honoured); RFLAGS.TF single-step is not emulated after a completed
instruction; protection keys are not checked in the page walk. The 32-bit
(no REX.W) XSAVE forms store FIP/FDP as 32-bit offsets with FCS = FDS = 0
(KVM keeps the x87 pointers in the 64-bit format, without selectors, as
CPUs that deprecate FCS/FDS do) and XRSTOR of that format loads the 32-bit
offsets zero-extended. Outside 64-bit mode XMM8-15, YMM8-15_H, ZMM8-15_H and
ZMM16-31 are neither saved nor restored, as the SDM (13.13) specifies.
"""
from __future__ import annotations

import functools
import logging
import os
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import iced_x86
from iced_x86 import Decoder, DecoderError, Formatter, FormatterSyntax, InstructionInfoFactory, \
    Mnemonic, Register, RegisterInfo

from akvm.base.memory import GuestMemory, GuestMemoryError
from akvm.vcpu.cpu import format_completions
from akvm.vcpu.paging import (BP, CR0_MP, CR0_NE, CR0_PE, CR0_TS, CR4_OSXSAVE, CR4_TSD, DB, GP, MF,
                        NM, NP, OF, SS, UD, VECTOR_NAMES, Access, GuestFault, PagingState,
                        canonical, read_linear, translate_range)

log = logging.getLogger("akvm.complete")

MSR_IA32_TSC = 0x10
MSR_IA32_XSS = 0xDA0
MSR_TSC_AUX = 0xC000_0103

RFLAGS_TF, RFLAGS_IF, RFLAGS_OF, RFLAGS_RF, RFLAGS_VM, RFLAGS_AC = \
    1 << 8, 1 << 9, 1 << 11, 1 << 16, 1 << 17, 1 << 18

# XSAVE state components and the fixed parts of the XSAVE area (SDM vol. 1, 13.4).
X87, SSE, AVX = 1 << 0, 1 << 1, 1 << 2
XCOMP_BV_COMPACTED = 1 << 63
LEGACY_SIZE, HEADER_SIZE = 512, 64
XSTATE_BV_OFF, XCOMP_BV_OFF = 512, 520
EXTENDED_START = LEGACY_SIZE + HEADER_SIZE          # 576
MXCSR_OFF, MXCSR_MASK_OFF = 24, 28
X87_HEAD = (0, 24)        # FCW FSW FTW FOP FIP FDP
X87_REGS = (32, 160)      # ST0-ST7
XMM_REGS = (160, 416)     # XMM0-XMM15
MXCSR_INIT = 0x1F80
MXCSR_MASK_DEFAULT = 0xFFBF
FCW_INIT = 0x037F

# Components with registers that exist only in 64-bit mode: the fraction of the
# component (from its start) where those registers begin (SDM vol. 1, 13.13).
_HIGH_REGS_FROM = {1: 0.5, 2: 0.5, 6: 0.5, 7: 0.0}

_u32 = struct.Struct("<I")
_u64 = struct.Struct("<Q")


def _bits(mask: int) -> Iterable[int]:
    i = 0
    while mask:
        if mask & 1:
            yield i
        mask >>= 1
        i += 1


class CannotComplete(Exception):
    """The instruction cannot be completed; the VM stops with this reason."""


# --- the XSAVE layout (CPUID leaf 0xD) --------------------------------------

@dataclass(frozen=True)
class XsaveComponent:
    size: int
    offset: int               # in the standard format
    align64: bool = False     # CPUID.(0xD, i).ECX[1]: 64-byte aligned in the compacted format
    supervisor: bool = False  # CPUID.(0xD, i).ECX[0]: an IA32_XSS component


@dataclass(frozen=True)
class XsaveLayout:
    """What CPUID leaf 0xD says about the XSAVE area, as the guest sees it."""
    components: dict[int, XsaveComponent] = field(default_factory=dict)   # i >= 2
    xcr0_supported: int = X87 | SSE
    xss_supported: int = 0
    xsaveopt: bool = False
    xsavec: bool = False
    xsaves: bool = False

    @classmethod
    def from_cpuid(cls, cpuid: Callable[[int, int], tuple[int, int, int, int]]) -> "XsaveLayout":
        """Build from a cpuid(leaf, subleaf) -> (eax, ebx, ecx, edx) function."""
        eax0, _, _, edx0 = cpuid(0xD, 0)
        eax1, _, ecx1, edx1 = cpuid(0xD, 1)
        xcr0 = eax0 | (edx0 << 32)
        xss = ecx1 | (edx1 << 32)
        comps = {}
        for i in range(2, 63):
            if not (xcr0 | xss) >> i & 1:
                continue
            eax, ebx, ecx, _ = cpuid(0xD, i)
            if eax:
                comps[i] = XsaveComponent(size=eax, offset=ebx, align64=bool(ecx & 2),
                                          supervisor=bool(ecx & 1))
        return cls(comps, xcr0, xss, xsaveopt=bool(eax1 & 1), xsavec=bool(eax1 & 2),
                   xsaves=bool(eax1 & 8))

    @classmethod
    def from_entries(cls, entries) -> "XsaveLayout":
        """Build from kvm_cpuid_entry2 records (e.g. KVM_GET_SUPPORTED_CPUID)."""
        table = {(e.function, e.index): (e.eax, e.ebx, e.ecx, e.edx) for e in entries}
        return cls.from_cpuid(lambda leaf, sub: table.get((leaf, sub), (0, 0, 0, 0)))

    @classmethod
    def host(cls, supported_entries=None) -> "XsaveLayout":
        """The layout the guest sees: the host CPU's leaf 0xD.

        On kvm_pvm the guest executes CPUID natively, so the host's own leaf
        (read through /dev/cpu/0/cpuid) is the truth; it can offer more than
        KVM_GET_SUPPORTED_CPUID reports (XSAVEC, XSAVES in sub-leaf 1). Without
        the cpuid driver the KVM list is used.
        """
        cpuid = host_cpuid_reader()
        if cpuid is not None:
            try:
                return cls.from_cpuid(cpuid)
            except OSError:
                pass
        if supported_entries is not None:
            return cls.from_entries(supported_entries)
        return cls()

    def compacted_offsets(self, xcomp_bv: int) -> tuple[dict[int, int], int]:
        """Offsets of components i >= 2 in the compacted format, and the area's size."""
        offsets = {}
        end = EXTENDED_START
        for i in _bits(xcomp_bv & ~(XCOMP_BV_COMPACTED | X87 | SSE)):
            comp = self.components.get(i)
            if comp is None:
                raise CannotComplete(f"XSAVE component {i} is not described by CPUID leaf 0xD")
            if comp.align64:
                end = (end + 63) & ~63
            offsets[i] = end
            end += comp.size
        return offsets, end

    def standard_size(self, rfbm: int) -> int:
        """Bytes of a standard-format area that hold the components of rfbm."""
        end = EXTENDED_START
        for i in _bits(rfbm & ~(X87 | SSE)):
            comp = self.components.get(i)
            if comp is None:
                raise CannotComplete(f"XSAVE component {i} is not described by CPUID leaf 0xD")
            end = max(end, comp.offset + comp.size)
        return end


@functools.lru_cache(maxsize=1)
def host_cpuid_reader() -> Callable[[int, int], tuple[int, int, int, int]] | None:
    """cpuid(leaf, subleaf) on the host through /dev/cpu/0/cpuid, or None."""
    try:
        fd = os.open("/dev/cpu/0/cpuid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None

    def cpuid(leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
        return struct.unpack("<4I", os.pread(fd, 16, (sub << 32) | leaf))
    try:
        cpuid(0, 0)
    except OSError:
        os.close(fd)
        return None
    return cpuid


def host_maxphyaddr(default: int = 52) -> int:
    cpuid = host_cpuid_reader()
    try:
        if cpuid is not None and cpuid(0x8000_0000, 0)[0] >= 0x8000_0008:
            return cpuid(0x8000_0008, 0)[0] & 0xFF or default
    except OSError:
        pass
    return default


# --- XSAVE state conversions (pure: KVM's buffer <-> an XSAVE area) ----------
#
# KVM's buffer (KVM_GET_XSAVE) is a standard-format XSAVE area as the host
# saved it with XSAVE64: x87 pointers in the 64-bit format, XCOMP_BV = 0.

def x87_init_head() -> bytes:
    return struct.pack("<HHBBHQQ", FCW_INIT, 0, 0, 0, 0, 0, 0)


def xinuse(kvm: bytes) -> int:
    """The XINUSE bitmap a CPU would have for this state: KVM's XSTATE_BV, plus
    SSE if MXCSR is not at its initial value (the init optimization never
    drops a non-default MXCSR)."""
    bv = _u64.unpack_from(kvm, XSTATE_BV_OFF)[0]
    if _u32.unpack_from(kvm, MXCSR_OFF)[0] != MXCSR_INIT:
        bv |= SSE
    return bv


def normalize_kvm_state(kvm: bytearray, layout: XsaveLayout) -> None:
    """Give every component KVM marks as not in use its initial value, so that
    the buffer holds explicit values for all components."""
    bv = _u64.unpack_from(kvm, XSTATE_BV_OFF)[0]
    if not bv & X87:
        kvm[X87_HEAD[0]:X87_HEAD[1]] = x87_init_head()
        kvm[X87_REGS[0]:X87_REGS[1]] = bytes(X87_REGS[1] - X87_REGS[0])
    if not bv & SSE:
        kvm[XMM_REGS[0]:XMM_REGS[1]] = bytes(XMM_REGS[1] - XMM_REGS[0])
    for i, comp in layout.components.items():
        if not bv >> i & 1 and not comp.supervisor and comp.offset + comp.size <= len(kvm):
            kvm[comp.offset:comp.offset + comp.size] = bytes(comp.size)


def _x87_head_to_area(kvm: bytes, rex_w: bool) -> bytes:
    head = bytearray(kvm[0:24])
    if not rex_w:
        fip, fdp = _u64.unpack_from(kvm, 8)[0], _u64.unpack_from(kvm, 16)[0]
        head[8:24] = struct.pack("<IHHIHH", fip & 0xFFFF_FFFF, 0, 0, fdp & 0xFFFF_FFFF, 0, 0)
    return bytes(head)


def _x87_head_from_area(area_head: bytes, rex_w: bool) -> bytes:
    if rex_w:
        return bytes(area_head)
    fip = _u32.unpack_from(area_head, 8)[0]
    fdp = _u32.unpack_from(area_head, 16)[0]
    return bytes(area_head[0:8]) + _u64.pack(fip) + _u64.pack(fdp)


def _component_span(i: int, size: int, mode64: bool) -> tuple[int, int]:
    """The bytes of component i an instruction touches in this mode."""
    if mode64 or i not in _HIGH_REGS_FROM:
        return 0, size
    return 0, int(size * _HIGH_REGS_FROM[i])


def area_size(layout: XsaveLayout, rfbm: int, compacted: bool) -> int:
    if compacted:
        return layout.compacted_offsets(rfbm)[1]
    return layout.standard_size(rfbm)


def save_area(kvm: bytes, layout: XsaveLayout, rfbm: int, *, compacted: bool, rex_w: bool,
              mode64: bool, old_xstate_bv: int = 0) -> list[tuple[int, bytes]]:
    """The writes (area offset, bytes) that XSAVE/XSAVEOPT (standard) or
    XSAVEC/XSAVES (compacted) make for the state in KVM's buffer `kvm`
    (normalized: see normalize_kvm_state). `old_xstate_bv` is the XSTATE_BV
    read from the area, which the standard form preserves outside RFBM."""
    inuse = xinuse(kvm)
    writes: list[tuple[int, bytes]] = []
    offsets = layout.compacted_offsets(rfbm)[0] if compacted else {}
    for i in _bits(rfbm):
        if compacted and not inuse >> i & 1:
            continue                                  # the init optimization
        if i == 0:
            writes.append((0, _x87_head_to_area(kvm, rex_w)))
            writes.append((X87_REGS[0], bytes(kvm[X87_REGS[0]:X87_REGS[1]])))
        elif i == 1:
            lo, hi = _component_span(1, XMM_REGS[1] - XMM_REGS[0], mode64)
            writes.append((XMM_REGS[0] + lo, bytes(kvm[XMM_REGS[0] + lo:XMM_REGS[0] + hi])))
        else:
            comp = layout.components[i]
            if comp.supervisor:
                raise CannotComplete(f"supervisor XSAVE component {i} is not in KVM's XSAVE buffer")
            if comp.offset + comp.size > len(kvm):
                raise CannotComplete(f"XSAVE component {i} is beyond KVM's XSAVE buffer")
            lo, hi = _component_span(i, comp.size, mode64)
            dest = offsets[i] if compacted else comp.offset
            writes.append((dest + lo, bytes(kvm[comp.offset + lo:comp.offset + hi])))
    # MXCSR and MXCSR_MASK: the standard form saves them for SSE or AVX, the
    # compacted form with the SSE component.
    if (compacted and rfbm & inuse & SSE) or (not compacted and rfbm & (SSE | AVX)):
        writes.append((MXCSR_OFF, bytes(kvm[MXCSR_OFF:MXCSR_OFF + 8])))
    if compacted:
        writes.append((XSTATE_BV_OFF, _u64.pack(rfbm & inuse)
                       + _u64.pack(XCOMP_BV_COMPACTED | rfbm)))
    else:
        writes.append((XSTATE_BV_OFF, _u64.pack((old_xstate_bv & ~rfbm) | (inuse & rfbm))))
    return writes


def restore_area(kvm: bytearray, layout: XsaveLayout, rfbm: int, read: Callable[[int, int], bytes],
                 *, allowed: int, rex_w: bool, mode64: bool, compacted_only: bool = False) -> None:
    """XRSTOR/XRSTORS: load the state of rfbm from an area (read(offset, n) ->
    bytes) into KVM's buffer `kvm` (normalized). `allowed` is XCR0 (| IA32_XSS
    for XRSTORS). Raises GuestFault(#GP) as the SDM says; `kvm` is only
    modified once every check has passed."""
    header = read(XSTATE_BV_OFF, HEADER_SIZE)
    xstate_bv, xcomp_bv = _u64.unpack_from(header, 0)[0], _u64.unpack_from(header, 8)[0]
    compacted = bool(xcomp_bv & XCOMP_BV_COMPACTED)
    if compacted_only and not compacted:
        raise GuestFault(GP, 0, why="XRSTORS of a standard-format area")
    if compacted:
        if not (layout.xsavec or layout.xsaves):
            raise GuestFault(GP, 0, why="compacted XRSTOR without XSAVEC support")
        if xcomp_bv & ~XCOMP_BV_COMPACTED & ~allowed:
            raise GuestFault(GP, 0, why=f"XCOMP_BV {xcomp_bv:#x} has bits not enabled")
        if xstate_bv & ~(xcomp_bv & ~XCOMP_BV_COMPACTED):
            raise GuestFault(GP, 0, why=f"XSTATE_BV {xstate_bv:#x} not within XCOMP_BV")
        if any(header[16:64]):
            raise GuestFault(GP, 0, why="reserved bytes 63:16 of the XSAVE header are not zero")
        offsets = layout.compacted_offsets(xcomp_bv)[0]
    else:
        if xstate_bv & ~allowed:
            raise GuestFault(GP, 0, why=f"XSTATE_BV {xstate_bv:#x} has bits not in XCR0")
        if any(header[8:24]):
            raise GuestFault(GP, 0, why="bytes 23:8 of the XSAVE header are not zero")
        offsets = {}

    mxcsr = None
    if compacted:
        if rfbm & SSE:
            mxcsr = _u32.unpack(read(MXCSR_OFF, 4))[0] if xstate_bv & SSE else MXCSR_INIT
    elif rfbm & (SSE | AVX):
        mxcsr = _u32.unpack(read(MXCSR_OFF, 4))[0]
    if mxcsr is not None:
        mask = _u32.unpack_from(kvm, MXCSR_MASK_OFF)[0] or MXCSR_MASK_DEFAULT
        if mxcsr & ~mask:
            raise GuestFault(GP, 0, why=f"MXCSR {mxcsr:#x} sets reserved bits")

    updates: list[tuple[int, bytes]] = []
    for i in _bits(rfbm):
        load = bool(xstate_bv >> i & 1)
        if i == 0:
            head = _x87_head_from_area(read(0, 24), rex_w) if load else x87_init_head()
            regs = read(X87_REGS[0], X87_REGS[1] - X87_REGS[0]) if load \
                else bytes(X87_REGS[1] - X87_REGS[0])
            updates += [(0, head), (X87_REGS[0], regs)]
        elif i == 1:
            lo, hi = _component_span(1, XMM_REGS[1] - XMM_REGS[0], mode64)
            data = read(XMM_REGS[0] + lo, hi - lo) if load else bytes(hi - lo)
            updates.append((XMM_REGS[0] + lo, data))
        else:
            comp = layout.components.get(i)
            if comp is None:
                raise CannotComplete(f"XSAVE component {i} is not described by CPUID leaf 0xD")
            if comp.supervisor or comp.offset + comp.size > len(kvm):
                raise CannotComplete(f"XSAVE component {i} is not in KVM's XSAVE buffer")
            lo, hi = _component_span(i, comp.size, mode64)
            src = offsets[i] if compacted else comp.offset
            data = read(src + lo, hi - lo) if load else bytes(hi - lo)
            updates.append((comp.offset + lo, data))
    for off, data in updates:
        kvm[off:off + len(data)] = data
    if mxcsr is not None:
        _u32.pack_into(kvm, MXCSR_OFF, mxcsr)
    # XSTATE_BV of KVM's buffer is the new XINUSE. The legacy region always
    # holds explicit values (normalize_kvm_state), so x87 and SSE stay marked:
    # then Linux's KVM_SET_XSAVE takes MXCSR whatever else is in use.
    old = _u64.unpack_from(kvm, XSTATE_BV_OFF)[0]
    _u64.pack_into(kvm, XSTATE_BV_OFF, (old & ~rfbm) | (xstate_bv & rfbm) | X87 | SSE)


# --- one completion ----------------------------------------------------------

_GPR_NAMES = {getattr(Register, n.upper()): n for n in (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")}
_SEG_NAMES = {Register.ES: "es", Register.CS: "cs", Register.SS: "ss", Register.DS: "ds",
              Register.FS: "fs", Register.GS: "gs"}
_MNEMONIC_NAMES = {v: k.lower() for k, v in vars(Mnemonic).items()
                   if k.isupper() and isinstance(v, int)}


def mnemonic_name(mnemonic: int) -> str:
    """'xrstor64', 'int3', 'wait', ...: the iced-x86 mnemonic in lower case."""
    return _MNEMONIC_NAMES.get(mnemonic, str(mnemonic))


class _Area:
    """An XSAVE area in guest memory at a linear address, through the page tables."""

    def __init__(self, memory: GuestMemory, ps: PagingState, base: int, wrap: int, access: Access):
        self.memory, self.ps, self.base, self.wrap, self.access = memory, ps, base, wrap, access

    def read(self, off: int, n: int) -> bytes:
        return read_linear(self.memory, self.ps, (self.base + off) % self.wrap, n, self.access)

    def prepare_write(self, size: int) -> None:
        """Check (and mark dirty) the whole area as writable before anything is
        read or written: a fault is reported as a write and no save is partial."""
        access = Access(write=True, user=self.access.user, ac=self.access.ac)
        self.pieces = translate_range(self.memory, self.ps, self.base, size, access)

    def write_all(self, writes: list[tuple[int, bytes]]) -> None:
        for off, data in writes:
            self._write(self.pieces, off, data)

    def _write(self, pieces, off: int, data: bytes) -> None:
        pos = 0
        for gpa, n in pieces:
            if off < pos + n and off + len(data) > pos:
                a = max(off, pos)
                b = min(off + len(data), pos + n)
                self.memory.write(gpa + (a - pos), data[a - off:b - off])
            pos += n


class Insn:
    """The vCPU state and the decoded instruction a completer function works on."""

    def __init__(self, completer: "Completer", vcpu, regs, sregs):
        self.completer = completer
        self.vcpu = vcpu
        self.regs = regs
        self.sregs = sregs
        self.ps = PagingState.from_sregs(sregs, completer.maxphyaddr)
        efer_lma = bool(sregs.efer & (1 << 10))
        self.v86 = bool(sregs.cr0 & CR0_PE and regs.rflags & RFLAGS_VM)
        if efer_lma and sregs.cs.l:
            self.bitness = 64
        elif self.v86 or not sregs.cs.db:
            self.bitness = 16
        else:
            self.bitness = 32
        if not sregs.cr0 & CR0_PE:
            self.cpl = 0
        elif self.v86:
            self.cpl = 3
        else:
            self.cpl = sregs.ss.dpl
        self.wrap = 1 << 64 if self.bitness == 64 else 1 << 32
        ip = regs.rip & (self.wrap - 1)
        self.rip = ip
        self.linear_rip = ip if self.bitness == 64 else (sregs.cs.base + ip) & 0xFFFF_FFFF
        self.raw = b""
        self.instr = None
        self.mnemonic = "?"
        self.events = None       # (kind, nr, error_code or soft) to inject after the update
        self.regs_dirty = False

    # --- guest memory
    def data_access(self, write: bool = False) -> Access:
        return Access(write=write, user=self.cpl == 3, ac=bool(self.regs.rflags & RFLAGS_AC))

    def fetch(self) -> None:
        """Read up to 15 bytes at CS:RIP (possibly across a page) and decode them."""
        mem, access = self.completer.memory, Access(fetch=True, user=self.cpl == 3)
        data = b""
        pending = None
        while len(data) < 15:
            la = (self.linear_rip + len(data)) % self.wrap
            n = min(15 - len(data), 0x1000 - (la & 0xFFF))
            try:
                data += read_linear(mem, self.ps, la, n, access)
            except (GuestFault, GuestMemoryError) as e:
                if not data:
                    raise
                pending = e
                break
        decoder = Decoder(self.bitness, data, ip=self.rip)
        instr = decoder.decode()
        if instr.code == iced_x86.Code.INVALID and decoder.last_error == DecoderError.NO_MORE_BYTES \
                and pending is not None:
            raise pending
        self.instr = instr
        self.raw = data[:instr.len] if instr.code != iced_x86.Code.INVALID else data
        self.mnemonic = mnemonic_name(instr.mnemonic) if instr.code != iced_x86.Code.INVALID \
            else "(bad)"

    def reg(self, register: int) -> int:
        info = RegisterInfo(register)
        name = _GPR_NAMES.get(info.full_register)
        if name is None:
            raise CannotComplete(f"register {register} in an address")
        value = getattr(self.regs, name)
        if info.size < 8:
            value &= (1 << (8 * info.size)) - 1
        return value

    def operand_address(self) -> tuple[int, int]:
        """The linear address of the memory operand, and its segment register."""
        used = InstructionInfoFactory().info(self.instr).used_memory()
        if not used:
            raise CannotComplete("no memory operand")
        m = used[0]
        asize = {iced_x86.CodeSize.CODE16: 16, iced_x86.CodeSize.CODE32: 32}.get(m.address_size, 64)
        ea = m.displacement
        if m.base != Register.NONE:
            ea += self.reg(m.base)
        if m.index != Register.NONE:
            ea += self.reg(m.index) * m.scale
        ea &= (1 << asize) - 1
        seg = m.segment
        if self.bitness == 64:
            base = getattr(self.sregs, _SEG_NAMES[seg]).base if seg in (Register.FS, Register.GS) else 0
            la = (base + ea) & ((1 << 64) - 1)
            if not canonical(la, self.ps.linear_bits):
                raise GuestFault(SS if seg == Register.SS else GP, 0,
                                 why=f"non-canonical operand {la:#x}")
        else:
            base = getattr(self.sregs, _SEG_NAMES.get(seg, "ds")).base
            la = (base + ea) & 0xFFFF_FFFF
        return la, seg

    def read_stack(self, count: int = 8) -> list[int | None]:
        """The top `count` stack slots (qwords in 64-bit mode, dwords else); None where unmapped."""
        width = 8 if self.bitness == 64 else 4 if self.bitness == 32 else 2
        sp = self.regs.rsp if self.bitness == 64 else (self.sregs.ss.base + (
            self.regs.rsp & (0xFFFF_FFFF if self.sregs.ss.db else 0xFFFF))) & 0xFFFF_FFFF
        out = []
        for k in range(count):
            try:
                raw = read_linear(self.completer.memory, self.ps, (sp + k * width) % self.wrap, width,
                                  Access(user=self.cpl == 3))
                out.append(int.from_bytes(raw, "little"))
            except (GuestFault, GuestMemoryError):
                out.append(None)
        return out

    # --- results
    def advance(self) -> None:
        """Move RIP past the instruction (wrapping at the operand size of IP)."""
        mask = (1 << self.bitness) - 1
        self.regs.rip = (self.rip + self.instr.len) & mask
        self.regs.rflags &= ~RFLAGS_RF
        self.regs_dirty = True

    def set_gpr(self, name: str, value: int) -> None:
        setattr(self.regs, name, value & ((1 << 64) - 1))
        self.regs_dirty = True


class Completer:
    """Completes, for a VcpuThread, instructions KVM reported as emulation failures.

    Call it with the thread (anything with `.vcpu`); True means the guest may
    resume. One Completer serves all vCPUs of a machine; `counts` counts
    completions by mnemonic and `faults` the faults injected instead.
    """

    def __init__(self, memory: GuestMemory, layout: XsaveLayout | None = None, *,
                 maxphyaddr: int = 52):
        self.memory = memory
        self.layout = layout if layout is not None else XsaveLayout()
        self.maxphyaddr = maxphyaddr
        self.counts: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.failures = 0
        self._lock = threading.Lock()
        self._handlers: dict[int, Callable[[Insn], None]] = {
            Mnemonic.XSAVE: self._xsave, Mnemonic.XSAVE64: self._xsave,
            Mnemonic.XSAVEOPT: self._xsave, Mnemonic.XSAVEOPT64: self._xsave,
            Mnemonic.XSAVEC: self._xsave, Mnemonic.XSAVEC64: self._xsave,
            Mnemonic.XRSTOR: self._xrstor, Mnemonic.XRSTOR64: self._xrstor,
            Mnemonic.INT3: self._int3, Mnemonic.INT: self._int_n, Mnemonic.INTO: self._into,
            Mnemonic.INT1: self._int1, Mnemonic.WAIT: self._fwait, Mnemonic.RDTSCP: self._rdtscp,
            Mnemonic.XGETBV: self._xgetbv,
        }
        if self.layout.xsaves:
            self._handlers.update({Mnemonic.XSAVES: self._xsave, Mnemonic.XSAVES64: self._xsave,
                                   Mnemonic.XRSTORS: self._xrstor, Mnemonic.XRSTORS64: self._xrstor})

    @classmethod
    def for_host(cls, memory: GuestMemory, supported_cpuid=None) -> "Completer":
        """A completer with the host's XSAVE layout and MAXPHYADDR (what the guest sees here)."""
        return cls(memory, XsaveLayout.host(supported_cpuid), maxphyaddr=host_maxphyaddr())

    # --- entry point
    def __call__(self, thread) -> bool:
        vcpu = thread.vcpu
        try:
            return self._complete(thread, vcpu)
        except Exception as e:           # never let a completer bug escape into the vCPU loop
            log.exception("vcpu%s: completion failed", getattr(vcpu, "index", "?"))
            self._fail(thread, f"akvm internal error while completing: {e}")
            return False

    def _complete(self, thread, vcpu) -> bool:
        insn = Insn(self, vcpu, vcpu.get_regs(), vcpu.get_sregs())
        where = f"vcpu{getattr(vcpu, 'index', '?')}"
        try:
            insn.fetch()
        except GuestFault as f:
            self._inject_fault(insn, f, where)
            return True
        except GuestMemoryError as e:
            self._fail(thread, f"{where}: instruction at rip {insn.rip:#x} is not in guest RAM ({e})")
            return False
        handler = None
        if insn.instr.code != iced_x86.Code.INVALID:
            handler = self._handlers.get(insn.instr.mnemonic)
        if handler is None:
            self._fail(thread, self.report(insn, f"{where}: cannot complete"))
            return False
        try:
            handler(insn)
        except GuestFault as f:
            self._inject_fault(insn, f, where)
            return True
        except (CannotComplete, GuestMemoryError) as e:
            self._fail(thread, self.report(insn, f"{where}: cannot complete ({e})"))
            return False
        self._commit(insn)
        with self._lock:
            self.counts[insn.mnemonic] += 1
        log.info("%s: completed %s at rip %#x", where, insn.mnemonic, insn.rip)
        return True

    # --- outcome
    def _commit(self, insn: Insn) -> None:
        vcpu = insn.vcpu
        if insn.regs_dirty:
            vcpu.set_regs(insn.regs)
        if insn.events is not None:
            kind, nr, extra = insn.events
            ev = vcpu.get_vcpu_events()
            ev.exception.injected = ev.exception.pending = 0
            ev.exception.has_error_code = 0
            ev.exception.error_code = 0
            ev.interrupt.injected = ev.interrupt.soft = 0
            if kind == "exception":
                ev.exception.injected, ev.exception.nr = 1, nr
                if extra is not None:
                    ev.exception.has_error_code, ev.exception.error_code = 1, extra
            else:
                ev.interrupt.injected, ev.interrupt.nr, ev.interrupt.soft = 1, nr, int(bool(extra))
            ev.interrupt.shadow = 0
            vcpu.set_vcpu_events(ev)

    def _inject_fault(self, insn: Insn, f: GuestFault, where: str) -> None:
        if f.cr2 is not None:
            insn.sregs.cr2 = f.cr2
            insn.vcpu.set_sregs(insn.sregs)
        insn.regs_dirty = False                    # a fault leaves RIP on the instruction
        insn.events = ("exception", f.vector, f.error_code)
        self._commit(insn)
        with self._lock:
            self.faults[f"{insn.mnemonic} {VECTOR_NAMES.get(f.vector, f.vector)}"] += 1
        log.info("%s: %s at rip %#x: injected %s", where, insn.mnemonic, insn.rip, f)

    def _fail(self, thread, report: str) -> None:
        """Record a failure. A VcpuThread prints the report in the message that
        stops the VM (with the registers), so it is only logged at INFO then;
        any other caller gets it at ERROR."""
        with self._lock:
            self.failures += 1
        if hasattr(thread, "completion_report"):
            thread.completion_report = report
            log.info("%s", report)
        else:
            log.error("%s", report)

    def report(self, insn: Insn, headline: str) -> str:
        """One readable account of an instruction that could not be completed."""
        if insn.instr is not None and insn.instr.code != iced_x86.Code.INVALID:
            text = Formatter(FormatterSyntax.GAS).format(insn.instr)
        else:
            text = "(undecodable)"
        lines = [f"{headline}: `{text}` at rip {insn.rip:#x} "
                 f"({insn.bitness}-bit, CPL {insn.cpl}, linear {insn.linear_rip:#x})",
                 f"  bytes: {insn.raw.hex(' ') or '(unreadable)'}"]
        width = 16 if insn.bitness == 64 else 8
        stack = insn.read_stack(8)
        slots = " ".join("?" * width if v is None else f"{v:0{width}x}" for v in stack)
        lines.append(f"  stack (rsp={insn.regs.rsp:#x}): {slots}")
        return "\n".join(lines)

    def stats(self) -> dict:
        with self._lock:
            return {"counts": dict(self.counts), "faults": dict(self.faults)}

    def format_stats(self, s: dict | None = None) -> str:
        return format_completions(s or self.stats())

    # --- XSAVE family
    def _xsave_prologue(self, insn: Insn, supervisor: bool) -> tuple[int, int, int, int]:
        """Common checks; returns (linear address, RFBM, XCR0, allowed bitmap)."""
        cr0, cr4 = insn.sregs.cr0, insn.sregs.cr4
        if not cr4 & CR4_OSXSAVE:
            raise GuestFault(UD, why="CR4.OSXSAVE is clear")
        if cr0 & CR0_TS:
            raise GuestFault(NM, why="CR0.TS is set")
        if supervisor and insn.cpl > 0:
            raise GuestFault(GP, 0, why="XSAVES/XRSTORS at CPL > 0")
        la, _ = insn.operand_address()
        if la & 63:
            raise GuestFault(GP, 0, why=f"XSAVE area {la:#x} is not 64-byte aligned")
        xcr0 = self._xcr0(insn.vcpu)
        allowed = xcr0
        if supervisor:
            allowed |= self._xss(insn.vcpu)
        mask = ((insn.regs.rdx & 0xFFFF_FFFF) << 32) | (insn.regs.rax & 0xFFFF_FFFF)
        return la, mask & allowed, xcr0, allowed

    @staticmethod
    def _xcr0(vcpu) -> int:
        xcrs = vcpu.get_xcrs()
        for i in range(xcrs.nr_xcrs):
            if xcrs.xcrs[i].xcr == 0:
                return xcrs.xcrs[i].value
        return X87

    @staticmethod
    def _xss(vcpu) -> int:
        try:
            return vcpu.get_msrs([MSR_IA32_XSS]).get(MSR_IA32_XSS, 0)
        except OSError:
            return 0

    def _kvm_state(self, vcpu) -> bytearray:
        kvm = bytearray(vcpu.get_xsave())
        normalize_kvm_state(kvm, self.layout)
        return kvm

    def _xsave(self, insn: Insn) -> None:
        m = insn.instr.mnemonic
        compacted = m in (Mnemonic.XSAVEC, Mnemonic.XSAVEC64, Mnemonic.XSAVES, Mnemonic.XSAVES64)
        supervisor = m in (Mnemonic.XSAVES, Mnemonic.XSAVES64)
        rex_w = m in (Mnemonic.XSAVE64, Mnemonic.XSAVEOPT64, Mnemonic.XSAVEC64, Mnemonic.XSAVES64)
        if m in (Mnemonic.XSAVEOPT, Mnemonic.XSAVEOPT64) and not self.layout.xsaveopt \
                or m in (Mnemonic.XSAVEC, Mnemonic.XSAVEC64) and not self.layout.xsavec:
            raise GuestFault(UD, why=f"{insn.mnemonic} is not offered by CPUID")
        la, rfbm, _, _ = self._xsave_prologue(insn, supervisor)
        area = _Area(self.memory, insn.ps, la, insn.wrap, insn.data_access())
        size = area_size(self.layout, rfbm, compacted)
        area.prepare_write(size)
        kvm = self._kvm_state(insn.vcpu)
        old_bv = 0 if compacted else _u64.unpack(area.read(XSTATE_BV_OFF, 8))[0]
        writes = save_area(kvm, self.layout, rfbm, compacted=compacted, rex_w=rex_w,
                           mode64=insn.bitness == 64, old_xstate_bv=old_bv)
        area.write_all(writes)
        insn.advance()

    def _xrstor(self, insn: Insn) -> None:
        m = insn.instr.mnemonic
        supervisor = m in (Mnemonic.XRSTORS, Mnemonic.XRSTORS64)
        rex_w = m in (Mnemonic.XRSTOR64, Mnemonic.XRSTORS64)
        la, rfbm, _, allowed = self._xsave_prologue(insn, supervisor)
        area = _Area(self.memory, insn.ps, la, insn.wrap, insn.data_access())
        kvm = self._kvm_state(insn.vcpu)
        restore_area(kvm, self.layout, rfbm, area.read, allowed=allowed, rex_w=rex_w,
                     mode64=insn.bitness == 64, compacted_only=supervisor)
        insn.vcpu.set_xsave(kvm)
        insn.advance()

    # --- software interrupts
    def _check_gate(self, insn: Insn, vector: int) -> None:
        """The IDT checks of a software interrupt (SDM vol. 2, INT n): the gate
        must lie within the IDT limit, be a gate type valid in this mode,
        and have DPL >= CPL; else #GP(vector*8+2). A gate that is not
        present gives #NP(vector*8+2)."""
        if not insn.sregs.cr0 & CR0_PE:
            return                                     # real mode: the IVT, no checks
        code = vector * 8 + 2
        size = 16 if insn.ps.long_mode else 8
        idt = insn.sregs.idt
        if vector * size + size - 1 > idt.limit:
            raise GuestFault(GP, code, why=f"vector {vector:#x} beyond the IDT limit")
        wrap = 1 << 64 if insn.ps.long_mode else 1 << 32
        gate = int.from_bytes(read_linear(self.memory, insn.ps, (idt.base + vector * size) % wrap,
                                          8, Access(implicit=True)), "little")
        gate_type, dpl, present = (gate >> 40) & 0xF, (gate >> 45) & 3, (gate >> 47) & 1
        valid = (0xE, 0xF) if insn.ps.long_mode else (0x5, 0x6, 0x7, 0xE, 0xF)
        if gate_type not in valid:
            raise GuestFault(GP, code, why=f"IDT entry {vector:#x} is not a gate (type {gate_type:#x})")
        if dpl < insn.cpl:
            raise GuestFault(GP, code, why=f"gate {vector:#x} DPL {dpl} < CPL {insn.cpl}")
        if not present:
            raise GuestFault(NP, code, why=f"gate {vector:#x} is not present")

    def _deliver(self, insn: Insn, kind: str, vector: int, extra=None) -> None:
        insn.advance()
        if not insn.sregs.cr0 & CR0_PE:
            # Real mode: KVM re-adds the instruction length to a soft event, so
            # inject a plain interrupt with RIP already past the instruction.
            kind, extra = "interrupt", False
        insn.events = (kind, vector, extra)

    def _int3(self, insn: Insn) -> None:
        self._check_gate(insn, BP)
        self._deliver(insn, "exception", BP)

    def _into(self, insn: Insn) -> None:
        if insn.regs.rflags & RFLAGS_OF:
            self._check_gate(insn, OF)
            self._deliver(insn, "exception", OF)
        else:
            insn.advance()

    def _int1(self, insn: Insn) -> None:
        self._deliver(insn, "exception", DB)

    def _int_n(self, insn: Insn) -> None:
        vector = insn.instr.immediate8
        if insn.v86 and (insn.regs.rflags >> 12) & 3 < 3:
            raise GuestFault(GP, 0, why="INT n in virtual-8086 mode with IOPL < 3")
        self._check_gate(insn, vector)
        self._deliver(insn, "interrupt", vector, True)

    # --- FWAIT, RDTSCP
    def _fwait(self, insn: Insn) -> None:
        cr0 = insn.sregs.cr0
        if cr0 & CR0_MP and cr0 & CR0_TS:
            raise GuestFault(NM, why="FWAIT with CR0.MP and CR0.TS set")
        fpu = insn.vcpu.get_fpu()
        if fpu.fsw & 0x80 and fpu.fsw & ~fpu.fcw & 0x3F:
            if not cr0 & CR0_NE:
                raise CannotComplete("pending x87 exception with CR0.NE clear (FERR#/IRQ 13)")
            raise GuestFault(MF, why=f"pending x87 exception (FSW {fpu.fsw:#x}, FCW {fpu.fcw:#x})")
        insn.advance()

    def _xgetbv(self, insn: Insn) -> None:
        """XGETBV: EDX:EAX = XCR[ECX]. KVM's emulator has XSETBV but not XGETBV."""
        if not insn.sregs.cr4 & CR4_OSXSAVE:
            raise GuestFault(UD, why="XGETBV with CR4.OSXSAVE clear")
        index = insn.regs.rcx & 0xFFFF_FFFF
        if index != 0:          # XCR0 is the only XCR KVM exposes (no XINUSE, ECX=1)
            raise GuestFault(GP, 0, why=f"XGETBV of XCR{index}")
        xcr0 = self._xcr0(insn.vcpu)
        insn.set_gpr("rax", xcr0 & 0xFFFF_FFFF)
        insn.set_gpr("rdx", xcr0 >> 32)
        insn.advance()

    def _rdtscp(self, insn: Insn) -> None:
        if insn.sregs.cr4 & CR4_TSD and insn.cpl > 0:
            raise GuestFault(GP, 0, why="RDTSCP at CPL > 0 with CR4.TSD")
        msrs = insn.vcpu.get_msrs([MSR_IA32_TSC, MSR_TSC_AUX])
        if MSR_IA32_TSC not in msrs:
            raise CannotComplete("KVM_GET_MSRS could not read IA32_TSC")
        tsc = msrs[MSR_IA32_TSC]
        insn.set_gpr("rax", tsc & 0xFFFF_FFFF)
        insn.set_gpr("rdx", (tsc >> 32) & 0xFFFF_FFFF)
        insn.set_gpr("rcx", msrs.get(MSR_TSC_AUX, 0) & 0xFFFF_FFFF)
        insn.advance()
