"""akvm.vcpu.complete and akvm.vcpu.paging: finishing the instructions KVM gives up on (kvm_pvm hosts).

Unit tests build guest page tables and XSAVE areas in a bytearray-backed
GuestMemory and run the completer against FakeVcpu, which only stores what
the KVM ioctls would get and return (registers, XSAVE buffer, events), so
each test can check exactly what would reach KVM. The KVM tests at the end
boot a small multiboot guest (assembled here) in a real Machine and check
what the guest itself observed.
"""
from __future__ import annotations

import random
import shutil
import struct
import subprocess
import threading
import types

import pytest
from iced_x86 import Mnemonic

from tests.conftest import needs_binutils, needs_kvm
from akvm.base import kvm
from akvm.vcpu.complete import (AVX, SSE, X87, XCOMP_BV_COMPACTED, Completer, XsaveComponent,
                          XsaveLayout, area_size, normalize_kvm_state, restore_area, save_area)
from akvm.base.memory import GuestMemory
from akvm.vcpu.paging import (CR0_NE, CR0_PE, CR0_PG, CR0_TS, CR0_WP, CR4_LA57, CR4_OSXSAVE, CR4_PAE,
                        CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_LME, EFER_NXE, GP, PF,
                        Access, GuestFault, PagingState, read_linear, translate, translate_range)

# --- guest page tables --------------------------------------------------------

P, RW, US, A, D, PS = 1, 2, 4, 0x20, 0x40, 0x80
XD = 1 << 63
MiB, GiB = 1 << 20, 1 << 30


class Tables:
    """Page tables for one paging mode, allocated from a bump pointer in guest memory."""

    def __init__(self, mem: GuestMemory, mode: str, base: int = 0x100000):
        self.mem, self.mode, self.next = mem, mode, base
        self.entry = 4 if mode == "32-bit" else 8
        if mode == "pae":
            self.root = self._alloc(32)
        else:
            self.root = self._alloc()
        self.cr3 = self.root

    def _alloc(self, size: int = 0x1000) -> int:
        addr = self.next
        self.next += 0x1000
        self.mem.write(addr, bytes(size))
        return addr

    def _levels(self):
        return {"32-bit": [22, 12], "pae": [30, 21, 12], "4-level": [39, 30, 21, 12],
                "5-level": [48, 39, 30, 21, 12]}[self.mode]

    def _index(self, la: int, shift: int) -> int:
        if self.mode == "32-bit":
            return (la >> shift) & 0x3FF
        if self.mode == "pae" and shift == 30:
            return (la >> 30) & 3
        return (la >> shift) & 0x1FF

    def _read(self, addr):
        return int.from_bytes(self.mem.read(addr, self.entry), "little")

    def _write(self, addr, value):
        self.mem.write(addr, value.to_bytes(self.entry, "little"))

    def map(self, la: int, pa: int, size: int = 0x1000, flags: int = RW, upper: int = RW | US):
        """Map one page of `size` (4K, 2M, 4M, 1G) at la -> pa with leaf flags `flags`."""
        leaf_shift = {0x1000: 12, 2 * MiB: 21, 4 * MiB: 22, GiB: 30}[size]
        table = self.root
        for shift in self._levels():
            slot = table + self._index(la, shift) * self.entry
            if shift == leaf_shift:
                value = pa | flags | P | (PS if shift != 12 else 0)
                self._write(slot, value)
                return slot
            entry = self._read(slot)
            if not entry & P:
                new = self._alloc()
                entry = new | P | (0 if self.mode == "pae" and shift == 30 else upper)
                self._write(slot, entry)
            table = entry & 0xFFFF_FFFF_F000
        raise AssertionError("no such page size in this mode")

    def state(self, **extra) -> PagingState:
        cr4 = {"32-bit": CR4_PSE, "pae": CR4_PAE, "4-level": CR4_PAE,
               "5-level": CR4_PAE | CR4_LA57}[self.mode]
        efer = EFER_LME | EFER_LMA | EFER_NXE if self.mode in ("4-level", "5-level") else EFER_NXE
        kw = dict(cr0=CR0_PE | CR0_PG | CR0_WP, cr3=self.cr3, cr4=cr4, efer=efer, maxphyaddr=46)
        kw.update(extra)
        return PagingState(**kw)


@pytest.fixture
def mem():
    return GuestMemory.from_bytearray(16 * MiB)


# --- the page walk --------------------------------------------------------------

def test_paging_off_is_identity_truncated_to_32_bits(mem):
    ps = PagingState(cr0=CR0_PE, cr3=0, cr4=0, efer=0)
    assert ps.mode == "off"
    assert translate(mem, ps, 0x1234) == 0x1234
    assert translate(mem, ps, 0x1_0000_5678) == 0x5678


@pytest.mark.parametrize("mode,size", [
    ("32-bit", 0x1000), ("32-bit", 4 * MiB),
    ("pae", 0x1000), ("pae", 2 * MiB),
    ("4-level", 0x1000), ("4-level", 2 * MiB), ("4-level", GiB),
    ("5-level", 0x1000), ("5-level", 2 * MiB), ("5-level", GiB),
])
def test_page_walk_every_mode_and_page_size(mem, mode, size):
    t = Tables(mem, mode)
    la = {"32-bit": 0xC0000000, "pae": 0xC0000000}.get(mode, 0xFFFF_8000_4000_0000)
    if mode == "5-level":
        la = 0xFF00_0000_4000_0000                # uses a PML5 index other than 0
    pa = 0x800000 if size < GiB else 0            # an aligned frame in RAM
    t.map(la, pa, size)
    ps = t.state()
    assert ps.mode == mode
    off = 0x123 if size == 0x1000 else 0x1F_F123 if size != 0x1000 else 0
    off %= size
    assert translate(mem, ps, la + off) == pa + off
    # the neighbouring page is not mapped
    with pytest.raises(GuestFault) as e:
        translate(mem, ps, la + size)
    assert e.value.vector == PF and e.value.error_code == 0 and e.value.cr2 == la + size


def test_32_bit_pse36_high_physical_bits(mem):
    t = Tables(mem, "32-bit")
    slot = t.map(0x40000000, 0, 4 * MiB)
    mem.write_u32(slot, 0x00400000 | (0x3 << 13) | PS | RW | P)     # PA bits 33:32 = 3
    assert translate(mem, t.state(), 0x40000010) == 0x3_0040_0010


def test_32_bit_ps_bit_ignored_without_cr4_pse(mem):
    t = Tables(mem, "32-bit")
    slot = t.map(0x40000000, 0x900000, 4 * MiB)
    pt = 0x800000                               # 4 MiB aligned: also a valid large frame
    mem.write(pt, bytes(0x1000))
    mem.write_u32(pt, 0x700000 | RW | P)
    mem.write_u32(slot, pt | PS | RW | P)       # PS set, but without CR4.PSE it points to a PT
    assert translate(mem, t.state(cr4=0), 0x40000042) == 0x700042
    assert translate(mem, t.state(), 0x40000042) == pt + 0x42
    mem.write_u32(slot, 0x200000 | PS | RW | P)  # bit 21 of a 4 MiB entry is reserved
    with pytest.raises(GuestFault) as e:
        translate(mem, t.state(), 0x40000042)
    assert e.value.error_code == 0b1001


def test_page_walk_sets_accessed_and_dirty(mem):
    t = Tables(mem, "4-level")
    leaf = t.map(0x7000_0000, 0x500000)
    ps = t.state()
    translate(mem, ps, 0x7000_0008)
    assert mem.read_u64(leaf) & (A | D) == A
    assert mem.read_u64(t.root) & A
    translate(mem, ps, 0x7000_0008, Access(write=True))
    assert mem.read_u64(leaf) & (A | D) == A | D


def test_page_fault_error_codes(mem):
    t = Tables(mem, "4-level")
    t.map(0x1000_0000, 0x500000, flags=0)                # read-only, supervisor
    t.map(0x1000_1000, 0x501000, flags=RW | US | 0)      # user
    t.map(0x1000_2000, 0x502000, flags=RW | XD)          # no-execute
    ps = t.state()

    def code(la, access, ps=ps):
        with pytest.raises(GuestFault) as e:
            translate(mem, ps, la, access)
        assert e.value.vector == PF and e.value.cr2 == la
        return e.value.error_code

    assert code(0x1000_0000, Access(write=True)) == 0b011              # WP: P | W
    assert translate(mem, t.state(cr0=CR0_PE | CR0_PG), 0x1000_0000, Access(write=True)) == 0x500000
    assert code(0x1000_0000, Access(user=True)) == 0b101                # P | U
    assert code(0x1000_2000, Access(fetch=True)) == 0b10001             # P | I/D
    assert code(0x2000_0000, Access(fetch=True, user=True)) == 0b10100  # not present: U | I/D
    smep = t.state(cr4=CR4_PAE | CR4_SMEP)
    assert code(0x1000_1000, Access(fetch=True), smep) == 0b10001
    smap = t.state(cr4=CR4_PAE | CR4_SMAP)
    assert code(0x1000_1000, Access(), smap) == 0b00001
    assert translate(mem, smap, 0x1000_1000, Access(ac=True)) == 0x501000
    assert code(0x1000_1000, Access(implicit=True, ac=True), smap) == 0b00001


def test_reserved_bits_fault_with_rsvd(mem):
    t = Tables(mem, "4-level")
    leaf = t.map(0x3000_0000, 0x500000)
    mem.write_u64(leaf, mem.read_u64(leaf) | (1 << 47))     # above MAXPHYADDR 46
    with pytest.raises(GuestFault) as e:
        translate(mem, t.state(), 0x3000_0000)
    assert e.value.error_code == 0b1001
    mem.write_u64(leaf, 0x500000 | XD | RW | P)             # XD without EFER.NXE
    with pytest.raises(GuestFault) as e:
        translate(mem, t.state(efer=EFER_LME | EFER_LMA), 0x3000_0000)
    assert e.value.error_code & 0b1000
    big = t.map(0x4000_0000, 0x200000, 2 * MiB)
    mem.write_u64(big, mem.read_u64(big) | (1 << 13))       # bit 13 of a 2 MiB entry
    with pytest.raises(GuestFault) as e:
        translate(mem, t.state(), 0x4000_0000)
    assert e.value.error_code & 0b1000


def test_non_canonical_address_is_gp(mem):
    t = Tables(mem, "4-level")
    with pytest.raises(GuestFault) as e:
        translate(mem, t.state(), 0x0000_8000_0000_0000)
    assert e.value.vector == GP and e.value.error_code == 0
    t5 = Tables(mem, "5-level", base=0x300000)
    t5.map(0x0000_8000_0000_0000, 0x500000)                 # canonical with LA57
    assert translate(mem, t5.state(), 0x0000_8000_0000_0010) == 0x500010


def test_range_across_discontiguous_pages(mem):
    t = Tables(mem, "4-level")
    t.map(0x6000_0000, 0x503000)
    t.map(0x6000_1000, 0x501000)
    mem.write(0x503FFE, b"ab")
    mem.write(0x501000, b"cd")
    ps = t.state()
    assert translate_range(mem, ps, 0x6000_0FFE, 4) == [(0x503FFE, 2), (0x501000, 2)]
    assert read_linear(mem, ps, 0x6000_0FFE, 4) == b"abcd"


# --- the XSAVE layout and format conversions ---------------------------------------

# CPUID leaf 0xD of an AVX-512 CPU (this project's host), plus an aligned component 9.
HOST_LEAF_D = {
    0: (0x2E7, 0x980, 0xA88, 0), 1: (0xF, 0x9A8, 0x1800, 0),
    2: (0x100, 0x240, 0, 0), 5: (0x40, 0x340, 0, 0), 6: (0x200, 0x380, 0, 0),
    7: (0x400, 0x580, 0, 0), 9: (0x8, 0xA80, 2, 0), 11: (0x10, 0, 1, 0), 12: (0x18, 0, 1, 0),
}
LAYOUT = XsaveLayout.from_cpuid(lambda leaf, sub: HOST_LEAF_D.get(sub, (0, 0, 0, 0)))
KVM_SIZE = 4096


def test_layout_from_cpuid():
    assert LAYOUT.xsaveopt and LAYOUT.xsavec and LAYOUT.xsaves
    assert LAYOUT.components[2] == XsaveComponent(256, 576)
    assert LAYOUT.components[9].align64 and LAYOUT.components[11].supervisor
    assert LAYOUT.xcr0_supported == 0x2E7 and LAYOUT.xss_supported == 0x1800
    offsets, size = LAYOUT.compacted_offsets(XCOMP_BV_COMPACTED | 0x207)
    # AVX right after the header; PKRU (9) rounded up to 64 bytes after AVX.
    assert offsets == {2: 576, 9: 832} and size == 840
    offsets, size = LAYOUT.compacted_offsets(0x2E7)
    assert offsets == {2: 576, 5: 832, 6: 896, 7: 1408, 9: 2432} and size == 2440
    assert LAYOUT.standard_size(0x207) == 0xA88
    assert area_size(LAYOUT, 3, compacted=False) == 576


def kvm_buffer(seed: int = 1, xstate_bv: int = 0x2E7) -> bytearray:
    """A random-looking but valid KVM XSAVE buffer (standard format)."""
    rng = random.Random(seed)
    buf = bytearray(rng.randbytes(KVM_SIZE))
    buf[464:512] = bytes(48)
    struct.pack_into("<II", buf, 24, 0x1F80 | 0x40, 0xFFFF)    # MXCSR (DAZ), MXCSR_MASK
    buf[512:576] = struct.pack("<QQ", xstate_bv, 0) + bytes(48)
    return buf


def test_compacted_round_trip():
    src = kvm_buffer(1)
    normalize_kvm_state(src, LAYOUT)
    rfbm = 0x2E7
    area = bytearray(b"\xAA" * 4096)
    area[512:576] = bytes(64)
    for off, data in save_area(src, LAYOUT, rfbm, compacted=True, rex_w=True, mode64=True):
        area[off:off + len(data)] = data
    bv, comp = struct.unpack_from("<QQ", area, 512)
    assert comp == XCOMP_BV_COMPACTED | rfbm and bv == rfbm
    assert area[2432:2440] == src[0xA80:0xA88]          # PKRU, 64-byte aligned
    dst = kvm_buffer(2, xstate_bv=0)
    normalize_kvm_state(dst, LAYOUT)
    restore_area(dst, LAYOUT, rfbm, lambda o, n: bytes(area[o:o + n]), allowed=0x2E7, rex_w=True,
                 mode64=True)
    for lo, hi in ((0, 24), (24, 28), (32, 416), (576, 2432), (0xA80, 0xA88)):
        assert dst[lo:hi] == src[lo:hi], (lo, hi)


def test_standard_round_trip_and_header_preserved_outside_rfbm():
    src = kvm_buffer(3)
    normalize_kvm_state(src, LAYOUT)
    area = bytearray(4096)
    old_bv = 1 << 9                                  # PKRU, outside RFBM: kept
    writes = save_area(src, LAYOUT, X87 | SSE | AVX, compacted=False, rex_w=True, mode64=True,
                       old_xstate_bv=old_bv)
    for off, data in writes:
        area[off:off + len(data)] = data
    assert struct.unpack_from("<Q", area, 512)[0] == old_bv | X87 | SSE | AVX
    assert area[576:832] == src[576:832] and area[832:896] == bytes(64)   # opmask not saved
    assert max(off + len(d) for off, d in writes) <= 832
    dst = kvm_buffer(4, xstate_bv=0)
    normalize_kvm_state(dst, LAYOUT)
    restore_area(dst, LAYOUT, X87 | SSE | AVX, lambda o, n: bytes(area[o:o + n]),
                 allowed=0x2E7, rex_w=True, mode64=True)
    assert dst[0:28] == src[0:28] and dst[32:416] == src[32:416] and dst[576:832] == src[576:832]


def test_xsavec_init_optimization_skips_components_not_in_use():
    src = kvm_buffer(5, xstate_bv=X87 | SSE)          # AVX and up: initial
    normalize_kvm_state(src, LAYOUT)
    writes = dict(save_area(src, LAYOUT, 0xE7, compacted=True, rex_w=True, mode64=True))
    assert 576 not in writes                          # AVX not written
    assert struct.unpack_from("<QQ", writes[512]) == (X87 | SSE, XCOMP_BV_COMPACTED | 0xE7)


def test_xstate_bv_zero_reinitialises_components():
    kvm_state = kvm_buffer(6)
    normalize_kvm_state(kvm_state, LAYOUT)
    area = bytearray(kvm_buffer(7))
    struct.pack_into("<QQ", area, 512, 0, 0)         # XSTATE_BV = 0, standard form
    struct.pack_into("<I", area, 24, 0x1F00)         # MXCSR is still loaded (RFBM has SSE)
    restore_area(kvm_state, LAYOUT, 0xE7, lambda o, n: bytes(area[o:o + n]), allowed=0xE7,
                 rex_w=True, mode64=True)
    assert struct.unpack_from("<HHBBHQQ", kvm_state, 0) == (0x037F, 0, 0, 0, 0, 0, 0)
    assert kvm_state[32:416] == bytes(384)
    assert kvm_state[576:2432] == bytes(2432 - 576)
    assert struct.unpack_from("<I", kvm_state, 24)[0] == 0x1F00
    assert kvm_state[0xA80:0xA88] != bytes(8)         # PKRU is outside RFBM: untouched


def test_compacted_xrstor_sse_clear_resets_mxcsr():
    kvm_state = kvm_buffer(8)
    area = bytearray(1024)
    struct.pack_into("<I", area, 24, 0x1F00)
    struct.pack_into("<QQ", area, 512, X87, XCOMP_BV_COMPACTED | X87 | SSE)
    restore_area(kvm_state, LAYOUT, X87 | SSE, lambda o, n: bytes(area[o:o + n]), allowed=0xE7,
                 rex_w=True, mode64=True)
    assert struct.unpack_from("<I", kvm_state, 24)[0] == 0x1F80


@pytest.mark.parametrize("header,why", [
    (struct.pack("<QQ", 1 << 3, 0), "XSTATE_BV bit not in XCR0"),
    (struct.pack("<QQQ", 3, 0, 1), "bytes 23:8 not zero"),
    (struct.pack("<QQ", 3, XCOMP_BV_COMPACTED | 1), "XSTATE_BV not within XCOMP_BV"),
    (struct.pack("<QQ", 1, XCOMP_BV_COMPACTED | 1 | (1 << 9)), "XCOMP_BV bit not in XCR0"),
    (struct.pack("<QQQQ", 1, XCOMP_BV_COMPACTED | 1, 0, 1), "bytes 63:16 not zero"),
])
def test_xrstor_header_checks_are_gp(header, why):
    area = bytearray(1024)
    struct.pack_into("<I", area, 24, 0x1F80)
    area[512:512 + len(header)] = header
    state = kvm_buffer(9)
    before = bytes(state)
    with pytest.raises(GuestFault) as e:
        restore_area(state, LAYOUT, 0xE7, lambda o, n: bytes(area[o:o + n]), allowed=0xE7,
                     rex_w=True, mode64=True)
    assert (e.value.vector, e.value.error_code) == (GP, 0), why
    assert bytes(state) == before


def test_xrstor_bad_mxcsr_is_gp():
    area = bytearray(1024)
    struct.pack_into("<I", area, 24, 0x1_0000)
    struct.pack_into("<Q", area, 512, SSE)
    with pytest.raises(GuestFault):
        restore_area(kvm_buffer(10), LAYOUT, SSE, lambda o, n: bytes(area[o:o + n]),
                     allowed=0xE7, rex_w=True, mode64=True)


def test_32_bit_forms_store_x87_pointers_as_offsets():
    src = kvm_buffer(11)
    struct.pack_into("<QQ", src, 8, 0x0000_1234_5678_9ABC, 0x0000_0FED_CBA9_8765)
    writes = dict(save_area(src, LAYOUT, X87, compacted=False, rex_w=False, mode64=False))
    assert struct.unpack_from("<IHHIHH", writes[0], 8) == (0x56789ABC, 0, 0, 0xCBA98765, 0, 0)
    assert writes[0][:8] == bytes(src[:8])
    area = bytearray(1024)
    area[0:24] = writes[0]
    struct.pack_into("<HH", area, 12, 0x23, 0xFFFF)          # FCS and reserved: ignored
    struct.pack_into("<Q", area, 512, X87)
    dst = kvm_buffer(12)
    restore_area(dst, LAYOUT, X87, lambda o, n: bytes(area[o:o + n]), allowed=3, rex_w=False,
                 mode64=False)
    assert struct.unpack_from("<QQ", dst, 8) == (0x56789ABC, 0xCBA98765)


def test_outside_64_bit_mode_xmm8_15_are_left_alone():
    src = kvm_buffer(13)
    writes = dict(save_area(src, LAYOUT, SSE | AVX, compacted=False, rex_w=False, mode64=False))
    assert len(writes[160]) == 128 and len(writes[576]) == 128
    area = bytearray(b"\x55" * 1024)
    struct.pack_into("<QQ", area, 512, SSE | AVX, 0)
    area[24:28] = b"\x80\x1f\0\0"
    area[464:512] = bytes(48)
    area[528:576] = bytes(48)
    dst = kvm_buffer(14)
    before = bytes(dst)
    restore_area(dst, LAYOUT, SSE | AVX, lambda o, n: bytes(area[o:o + n]), allowed=7,
                 rex_w=False, mode64=False)
    assert dst[160:288] == b"\x55" * 128 and dst[288:416] == before[288:416]
    assert dst[576:704] == b"\x55" * 128 and dst[704:832] == before[704:832]


# --- the completer on recorded instruction bytes --------------------------------------

class FakeVcpu:
    """Holds what KVM_GET_* would return and records what KVM_SET_* receives."""

    def __init__(self, regs, sregs, *, xsave=None, xcr0=X87 | SSE | AVX, msrs=None,
                 fcw=0x037F, fsw=0):
        self.index = 0
        self.regs, self.sregs = regs, sregs
        self.xsave = bytearray(xsave if xsave is not None else kvm_buffer(20))
        self.xcr0 = xcr0
        self.msrs = msrs or {}
        self.fcw, self.fsw = fcw, fsw
        self.events = kvm.kvm_vcpu_events()
        self.set_calls: list[str] = []

    def _copy(self, obj):
        return type(obj).from_buffer_copy(obj)

    def get_regs(self): return self._copy(self.regs)
    def get_sregs(self): return self._copy(self.sregs)
    def get_vcpu_events(self): return self._copy(self.events)
    def get_xsave(self): return bytearray(self.xsave)

    def set_regs(self, r):
        self.set_calls.append("regs")
        self.regs = self._copy(r)

    def set_sregs(self, s):
        self.set_calls.append("sregs")
        self.sregs = self._copy(s)

    def set_vcpu_events(self, e):
        self.set_calls.append("events")
        self.events = self._copy(e)

    def set_xsave(self, data):
        self.set_calls.append("xsave")
        assert len(data) == len(self.xsave)
        self.xsave = bytearray(data)

    def get_xcrs(self):
        x = kvm.kvm_xcrs(nr_xcrs=1)
        x.xcrs[0].xcr, x.xcrs[0].value = 0, self.xcr0
        return x

    def get_msrs(self, indices):
        return {i: self.msrs[i] for i in indices if i in self.msrs}

    def get_fpu(self):
        return kvm.kvm_fpu(fcw=self.fcw, fsw=self.fsw)


def seg(selector, *, l=0, db=1, dpl=0, type_=3, base=0):
    s = kvm.kvm_segment(base=base, limit=0xFFFFFFFF, selector=selector, type=type_, present=1,
                        dpl=dpl, db=db, s=1, l=l, g=1)
    return s


CODE = 0x200000          # instructions are placed here
STACK = 0x300000
IDT = 0x10000


class Guest:
    """Guest memory with page tables and an IDT, and a FakeVcpu in a chosen mode."""

    def __init__(self, mode: str = "64", cpl: int = 0, **vcpu_kw):
        self.mem = GuestMemory.from_bytearray(16 * MiB)
        regs = kvm.kvm_regs(rip=CODE, rsp=STACK, rflags=2)
        sregs = kvm.kvm_sregs()
        if mode == "64":
            self.tables = Tables(self.mem, "4-level", base=0x400000)
            for gb in range(0, 16 * MiB, 2 * MiB):
                self.tables.map(gb, gb, 2 * MiB, flags=RW | US)
            sregs.cr0 = CR0_PE | CR0_PG | CR0_WP | CR0_NE
            sregs.cr3, sregs.cr4 = self.tables.cr3, CR4_PAE | CR4_OSXSAVE
            sregs.efer = EFER_LME | EFER_LMA | EFER_NXE
            sregs.cs = seg(0x08 | cpl, l=1, db=0, dpl=cpl, type_=0xB)
        else:
            sregs.cr0, sregs.cr4 = CR0_PE | CR0_NE, CR4_OSXSAVE
            sregs.cs = seg(0x08 | cpl, dpl=cpl, type_=0xB)
        for name in ("ds", "es", "fs", "gs", "ss"):
            setattr(sregs, name, seg(0x10 | cpl, dpl=cpl))
        sregs.idt.base, sregs.idt.limit = IDT, 256 * (16 if mode == "64" else 8) - 1
        self.mode = mode
        self.vcpu = FakeVcpu(regs, sregs, **vcpu_kw)
        self.completer = Completer(self.mem, LAYOUT, maxphyaddr=46)
        self.thread = types.SimpleNamespace(vcpu=self.vcpu, completion_report=None)
        for v in range(256):
            self.gate(v, dpl=0)

    def gate(self, vector: int, dpl: int, present: int = 1) -> None:
        attrs = (0x0E | (dpl << 5) | (present << 7)) << 8
        if self.mode == "64":
            self.mem.write_u64(IDT + vector * 16, 0x1000 | (0x08 << 16) | (attrs << 32))
            self.mem.write_u64(IDT + vector * 16 + 8, 0)
        else:
            self.mem.write_u64(IDT + vector * 8, 0x1000 | (0x08 << 16) | (attrs << 32))

    def run(self, code: bytes, **regs) -> bool:
        self.mem.write(self.vcpu.regs.rip, code)
        for k, v in regs.items():
            setattr(self.vcpu.regs, k, v)
        return self.completer(self.thread)

    @property
    def exception(self):
        e = self.vcpu.events.exception
        return (e.nr, e.error_code if e.has_error_code else None) if e.injected else None

    @property
    def interrupt(self):
        i = self.vcpu.events.interrupt
        return (i.nr, i.soft) if i.injected else None


def xsave_area(xstate_bv=X87 | SSE, xcomp_bv=0, fcw=0x027F, xmm0=b"\x11" * 16, mxcsr=0x1F80):
    area = bytearray(1024)
    struct.pack_into("<H", area, 0, fcw)
    struct.pack_into("<II", area, 24, mxcsr, 0xFFFF)
    area[160:176] = xmm0
    struct.pack_into("<QQ", area, 512, xstate_bv, xcomp_bv)
    return area


def test_xrstor64_rdi():
    g = Guest()
    g.mem.write(0x500000, xsave_area())
    assert g.run(bytes.fromhex("480fae2f"), rdi=0x500000, rax=0xFFFFFFFF, rdx=0xFFFFFFFF)
    assert g.vcpu.regs.rip == CODE + 4
    x = g.vcpu.xsave
    assert struct.unpack_from("<H", x, 0)[0] == 0x027F and x[160:176] == b"\x11" * 16
    assert x[576:832] == bytes(256)                    # AVX: XSTATE_BV[2] = 0 -> initialised
    assert struct.unpack_from("<Q", x, 512)[0] & 7 == X87 | SSE
    assert g.completer.counts == {"xrstor64": 1}
    assert g.exception is None and g.interrupt is None


def test_xsave_rsp_plus_8_uses_the_32_bit_x87_format():
    g = Guest()
    state = kvm_buffer(21, xstate_bv=X87 | SSE | AVX)
    struct.pack_into("<QQ", state, 8, 0xAAAA_BBBB_CCCC_DDDD, 0x1111_2222_3333_4444)
    g.vcpu.xsave = state
    area = 0x500040 - 8
    assert g.run(bytes.fromhex("0fae642408"), rsp=area, rax=X87 | SSE, rdx=0)
    assert g.vcpu.regs.rip == CODE + 5
    saved = g.mem.read(0x500040, 576)
    assert struct.unpack_from("<IHHIHH", saved, 8) == (0xCCCCDDDD, 0, 0, 0x33334444, 0, 0)
    assert saved[160:416] == state[160:416]            # XMM8-15 too: 64-bit mode
    assert struct.unpack_from("<Q", saved, 512)[0] == X87 | SSE
    assert g.mem.read(0x500040 + 576, 256) == bytes(256)   # AVX not requested
    assert g.completer.counts == {"xsave": 1}


def test_xsaveopt64_behaves_as_xsave64():
    g = Guest()
    g.vcpu.xsave = kvm_buffer(22, xstate_bv=X87 | SSE | AVX)
    assert g.run(bytes.fromhex("480fae37"), rdi=0x500000, rax=7, rdx=0)
    saved = g.mem.read(0x500000, 832)
    assert saved[576:832] == g.vcpu.xsave[576:832]
    assert saved[8:24] == g.vcpu.xsave[8:24]           # 64-bit FIP/FDP
    assert g.completer.counts == {"xsaveopt64": 1}


def test_xsavec64_then_compacted_xrstor64_round_trip():
    g = Guest()
    original = kvm_buffer(23, xstate_bv=X87 | SSE | AVX)
    normalize_kvm_state(original, LAYOUT)
    g.vcpu.xsave = bytearray(original)
    assert g.run(bytes.fromhex("480fc727"), rdi=0x500000, rax=0xFFFFFFFF, rdx=0xFFFFFFFF)
    bv, comp = struct.unpack("<QQ", g.mem.read(0x500000 + 512, 16))
    assert comp == XCOMP_BV_COMPACTED | 7 and bv == 7
    g.vcpu.xsave = kvm_buffer(24, xstate_bv=0)
    g.vcpu.regs.rip = CODE + 0x10
    assert g.run(bytes.fromhex("480fae2f"), rdi=0x500000)
    x = g.vcpu.xsave
    assert x[0:28] == original[0:28] and x[32:416] == original[32:416]
    assert x[576:832] == original[576:832]
    assert g.completer.counts == {"xsavec64": 1, "xrstor64": 1}


def test_xsave_area_must_be_64_byte_aligned():
    g = Guest()
    assert g.run(bytes.fromhex("480fae2f"), rdi=0x500020)
    assert g.exception == (GP, 0)
    assert g.vcpu.regs.rip == CODE                    # a fault: RIP stays
    assert g.completer.faults == {"xrstor64 #GP": 1} and not g.completer.counts


def test_xsave_needs_osxsave_and_clear_ts():
    g = Guest()
    g.vcpu.sregs.cr4 &= ~CR4_OSXSAVE
    assert g.run(bytes.fromhex("480fae27"), rdi=0x500000)
    assert g.exception == (6, None)
    g = Guest()
    g.vcpu.sregs.cr0 |= CR0_TS
    assert g.run(bytes.fromhex("480fae27"), rdi=0x500000)
    assert g.exception == (7, None)


def test_xsave_to_unmapped_page_injects_page_fault_with_cr2():
    g = Guest()
    before = bytes(g.vcpu.xsave)
    assert g.run(bytes.fromhex("480fae27"), rdi=0x4000_0000, rax=3, rdx=0)
    assert g.exception == (PF, 0b010)                 # write, not present, supervisor
    assert g.vcpu.sregs.cr2 == 0x4000_0000
    assert g.vcpu.regs.rip == CODE and bytes(g.vcpu.xsave) == before


def test_xsave_crossing_into_a_read_only_page_writes_nothing():
    g = Guest()
    g.tables.map(0x4000_0000, 0x600000)
    g.tables.map(0x4000_1000, 0x601000, flags=0)      # read-only second page
    g.mem.write(0x600E00, b"\x77" * 0x200)
    assert g.run(bytes.fromhex("480fae27"), rdi=0x4000_0E00, rax=3, rdx=0)
    assert g.exception == (PF, 0b011) and g.vcpu.sregs.cr2 == 0x4000_1000
    assert g.mem.read(0x600E00, 0x200) == b"\x77" * 0x200


def test_xrstor_through_4k_pages_mapped_out_of_order():
    g = Guest()
    g.tables.map(0x4000_0000, 0x601000)
    g.tables.map(0x4000_1000, 0x600000)
    area = xsave_area(xmm0=b"\x42" * 16)
    area[0x180:0x190] = b"\x99" * 16                   # XMM14 at 0x180+... crosses the split
    g.mem.write(0x601E00, area[:0x200])
    g.mem.write(0x600000, area[0x200:])
    assert g.run(bytes.fromhex("480fae2f"), rdi=0x4000_0E00, rax=3, rdx=0)
    assert g.vcpu.xsave[160:176] == b"\x42" * 16 and g.vcpu.xsave[0x180:0x190] == b"\x99" * 16


def test_xsaves_only_when_cpuid_offers_it():
    g = Guest()
    assert g.run(bytes.fromhex("480fc72f"), rdi=0x500000, rax=7, rdx=0)   # xsaves64: offered
    assert g.completer.counts == {"xsaves64": 1}
    g = Guest()
    g.completer = Completer(g.mem, XsaveLayout(dict(LAYOUT.components), 0xE7, xsavec=True))
    assert not g.run(bytes.fromhex("480fc72f"), rdi=0x500000)
    assert "xsaves64" in g.thread.completion_report


def test_xsaves_at_cpl3_is_gp():
    g = Guest(cpl=3)
    assert g.run(bytes.fromhex("480fc72f"), rdi=0x500000)
    assert g.exception == (GP, 0)


def test_int3_injects_breakpoint_after_the_instruction():
    g = Guest()
    assert g.run(b"\xCC")
    assert g.vcpu.regs.rip == CODE + 1
    assert g.exception == (3, None) and g.interrupt is None
    assert g.completer.counts == {"int3": 1}


def test_int_0x80_injects_soft_interrupt():
    g = Guest(cpl=3)
    g.gate(0x80, dpl=3)
    assert g.run(bytes.fromhex("cd80"), rax=0x1234)
    assert g.vcpu.regs.rip == CODE + 2 and g.vcpu.regs.rax == 0x1234
    assert g.interrupt == (0x80, 1) and g.exception is None
    assert g.completer.counts == {"int": 1}


def test_user_int_through_kernel_gate_is_gp_with_idt_error_code():
    g = Guest(cpl=3)
    assert g.run(bytes.fromhex("cd80"))
    assert g.exception == (GP, 0x80 * 8 + 2) and g.interrupt is None
    assert g.vcpu.regs.rip == CODE
    g = Guest(cpl=3)
    assert g.run(b"\xCC")                             # int3 is DPL-checked too
    assert g.exception == (GP, 3 * 8 + 2)


def test_int_beyond_idt_limit_and_not_present_gate():
    g = Guest()
    g.vcpu.sregs.idt.limit = 0x80 * 16 - 1
    assert g.run(bytes.fromhex("cd80"))
    assert g.exception == (GP, 0x402)
    g = Guest()
    g.gate(0x81, dpl=0, present=0)
    assert g.run(bytes.fromhex("cd81"))
    assert g.exception == (11, 0x40A)


def test_into_only_traps_when_overflow_is_set():
    g = Guest(mode="32")
    assert g.run(b"\xCE", rflags=2)
    assert g.vcpu.regs.rip == CODE + 1 and g.exception is None
    g = Guest(mode="32")
    assert g.run(b"\xCE", rflags=2 | (1 << 11))
    assert g.vcpu.regs.rip == CODE + 1 and g.exception == (4, None)
    assert g.completer.counts == {"into": 1}


def test_icebp_injects_debug_exception_without_dpl_check():
    g = Guest(cpl=3)
    assert g.run(b"\xF1")
    assert g.exception == (1, None) and g.vcpu.regs.rip == CODE + 1
    assert g.completer.counts == {"int1": 1}


def test_fwait():
    g = Guest()
    assert g.run(b"\x9B")
    assert g.vcpu.regs.rip == CODE + 1 and g.exception is None
    g = Guest(fcw=0x037E, fsw=0x0081)                 # IE pending and unmasked: ES set
    assert g.run(b"\x9B")
    assert g.exception == (16, None) and g.vcpu.regs.rip == CODE
    g = Guest(fcw=0x037F, fsw=0x0001)                 # pending but masked
    assert g.run(b"\x9B")
    assert g.exception is None
    g = Guest()
    g.vcpu.sregs.cr0 |= CR0_TS | 2                    # MP and TS
    assert g.run(b"\x9B")
    assert g.exception == (7, None)


def test_rdtscp():
    g = Guest(msrs={0x10: 0x1234_5678_9ABC_DEF0, 0xC0000103: 7})
    assert g.run(bytes.fromhex("0f01f9"), rcx=0xFFFF_FFFF_FFFF_FFFF)
    r = g.vcpu.regs
    assert (r.rax, r.rdx, r.rcx, r.rip) == (0x9ABCDEF0, 0x12345678, 7, CODE + 3)
    assert g.completer.counts == {"rdtscp": 1}


def test_xgetbv_reads_xcr0():
    g = Guest(xcr0=X87 | SSE | AVX)
    assert g.run(bytes.fromhex("0f01d0"), rcx=0, rax=0xFFFF_FFFF_FFFF_FFFF)
    r = g.vcpu.regs
    assert (r.rax, r.rdx, r.rip) == (X87 | SSE | AVX, 0, CODE + 3)
    assert g.completer.counts == {"xgetbv": 1}


def test_xgetbv_faults_like_hardware():
    g = Guest()
    assert g.run(bytes.fromhex("0f01d0"), rcx=1)            # no XCR1 here: #GP(0)
    assert g.vcpu.events.exception.nr == 13 and g.vcpu.regs.rip == CODE
    g = Guest()
    g.vcpu.sregs.cr4 &= ~CR4_OSXSAVE
    assert g.run(bytes.fromhex("0f01d0"), rcx=0)
    assert g.vcpu.events.exception.nr == 6


def test_unknown_instruction_is_reported_and_not_completed(caplog):
    g = Guest()
    for i in range(8):
        g.mem.write_u64(STACK + 8 * i, 0x1111 * (i + 1))
    with caplog.at_level("INFO", logger="akvm.complete"):
        assert not g.run(b"\xF4")
    report = g.thread.completion_report
    assert "`hlt`" in report and f"rip {CODE:#x}" in report
    assert "bytes: f4" in report
    assert "0000000000001111 0000000000002222" in report and "0000000000008888" in report
    assert report in caplog.text
    assert g.vcpu.set_calls == [] and g.completer.failures == 1
    # Without a VcpuThread to carry it into the stop message, the report is an error.
    caplog.clear()
    with caplog.at_level("ERROR", logger="akvm.complete"):
        assert not g.completer(types.SimpleNamespace(vcpu=g.vcpu))
    assert "`hlt`" in caplog.text


def test_instruction_across_a_page_boundary():
    g = Guest()
    g.tables.map(0x7000_0000, 0x601000, flags=RW)
    g.tables.map(0x7000_1000, 0x600000, flags=RW)
    g.mem.write(0x601FFE, bytes.fromhex("480f"))
    g.mem.write(0x600000, bytes.fromhex("ae2f"))
    g.mem.write(0x500000, xsave_area())
    g.vcpu.regs.rip = 0x7000_0FFE
    assert g.completer(g.thread) and g.vcpu.regs.rip == 0x7000_1002
    assert g.completer.counts == {"xrstor64": 1}


def test_instruction_fetch_fault_on_the_second_page():
    g = Guest()
    g.tables.map(0x7000_0000, 0x601000, flags=RW)
    g.mem.write(0x601FFE, bytes.fromhex("480f"))
    g.vcpu.regs.rip = 0x7000_0FFE
    assert g.completer(g.thread)
    assert g.exception == (PF, 0b10000) and g.vcpu.sregs.cr2 == 0x7000_1000


def test_operand_outside_guest_ram_stops_cleanly():
    g = Guest()
    g.tables.map(0x4000_0000, 0x7000_0000)            # a frame beyond the 16 MiB of RAM
    assert not g.run(bytes.fromhex("480fae2f"), rdi=0x4000_0000)
    assert "outside guest RAM" in g.thread.completion_report


def test_32_bit_mode_segment_base_and_32_bit_xrstor():
    g = Guest(mode="32")
    g.vcpu.sregs.ds.base = 0x100000
    area = xsave_area()
    struct.pack_into("<IHHIHH", area, 8, 0x1234, 0x08, 0, 0x5678, 0x10, 0)
    g.mem.write(0x500000, area)
    assert g.run(bytes.fromhex("0fae2f"), rdi=0x400000, rax=3, rdx=0)   # xrstor [edi]
    assert struct.unpack_from("<QQ", g.vcpu.xsave, 8) == (0x1234, 0x5678)
    assert g.vcpu.regs.rip == CODE + 3
    assert g.completer.counts == {"xrstor": 1}


def test_format_stats():
    g = Guest()
    g.run(b"\xCC")
    g.vcpu.regs.rip = CODE + 0x10
    g.run(bytes.fromhex("480fae2f"), rdi=0x500001)
    assert g.completer.format_stats() == "completions: int3 1; faults injected: xrstor64 #GP 1"


def test_completer_bug_never_escapes():
    g = Guest()
    g.completer._handlers[Mnemonic.INT3] = lambda insn: 1 / 0
    assert g.run(b"\xCC") is False
    assert "internal error" in g.thread.completion_report


# --- with KVM: a multiboot guest that executes the instructions -----------------------

GUEST_ASM = r"""
	.set COM1, 0x3F8
	.set ALIAS, 0x40000000          /* 4 KiB pages onto xarea, pairwise swapped */
	.set BIG, 0x80000000            /* a 1 GiB page onto physical 0 */
	.set UNMAPPED, 0xC0000000
	.text
	.code32
	.align 4
	.long 0x1BADB002, 3, -(0x1BADB002 + 3)
	.globl _start
_start:
	mov $stack_top, %esp
	lgdt gdtr
	ljmp $0x08, $1f
1:	mov $0x10, %ax
	mov %ax, %ds; mov %ax, %es; mov %ax, %ss; mov %ax, %fs; mov %ax, %gs
	mov $h32_bp, %eax; mov $3, %ecx; call gate32
	mov $h32_80, %eax; mov $0x80, %ecx; call gate32
	lidt idtr32
	mov $'a', %al; call putc
	int3
r32_int3:
	mov $0x11111111, %ebx; mov $0x22222222, %esi; mov $0x33333333, %edi; mov $0x44444444, %ebp
	int $0x80
r32_int80:
	mov %ebx, res32_regs; mov %esi, res32_regs+4; mov %edi, res32_regs+8; mov %ebp, res32_regs+12
	mov %cr4, %eax; or $((1<<9)|(1<<18)), %eax; mov %eax, %cr4     /* OSFXSR, OSXSAVE */
	xor %ecx, %ecx; mov $3, %eax; xor %edx, %edx; xsetbv
	mov $-1, %eax; mov $-1, %edx
	xrstor area32_in
	movaps %xmm0, res32_xmm0
	fnstcw res32_fcw
	mov $3, %eax; xor %edx, %edx
	xsave area32_out
	mov $'b', %al; call putc
	/* long mode: 4-level paging (this host's KVM pages only in long mode) */
	mov %cr4, %eax; or $(1<<5), %eax; mov %eax, %cr4
	mov $pml4, %eax; mov %eax, %cr3
	mov $0xC0000080, %ecx; rdmsr; or $((1<<8)|(1<<11)), %eax; wrmsr
	mov %cr0, %eax; or $0x80010020, %eax; mov %eax, %cr0     /* PG, WP, NE */
	ljmp $0x18, $long64

gate32:	lea idt32(,%ecx,8), %edi
	mov %ax, (%edi); movw $0x08, 2(%edi); movw $0x8E00, 4(%edi); shr $16, %eax; mov %ax, 6(%edi)
	ret
putc:	push %edx; mov $COM1, %dx; out %al, %dx; pop %edx; ret
/* KVM's emulator has no protected-mode IRET: return by hand */
h32_bp:	mov (%esp), %eax; mov %eax, res32_ret_bp
	pop %eax; add $4, %esp; popf; jmp *%eax
h32_80:	mov (%esp), %eax; mov %eax, res32_ret_80
	pop %eax; add $4, %esp; popf; jmp *%eax

	.code64
long64:
	mov $0x10, %ax; mov %ax, %ds; mov %ax, %es; mov %ax, %ss
	lea stack_top(%rip), %rsp
	mov $'c', %al; call putc64
	lea ev_1(%rip), %rax; mov $1, %ecx; call gate64
	lea ev_3(%rip), %rax; mov $3, %ecx; call gate64
	lea ev_13(%rip), %rax; mov $13, %ecx; call gate64
	lea ev_14(%rip), %rax; mov $14, %ecx; call gate64
	lea ev_16(%rip), %rax; mov $16, %ecx; call gate64
	lea ev_80(%rip), %rax; mov $0x80, %ecx; call gate64
	lidt idtr64(%rip)
	int3
r64_int3:
	mov $0x1111111111111111, %rbx; mov $0x2222222222222222, %r12; mov $0x3333333333333333, %r15
	int $0x80
r64_int80:
	mov %rbx, res64_regs(%rip); mov %r12, res64_regs+8(%rip); mov %r15, res64_regs+16(%rip)
	.byte 0xF1                                   /* icebp */
r64_icebp:
	xor %ecx, %ecx; mov $7, %eax; xor %edx, %edx; xsetbv     /* x87 | SSE | AVX */
	mov $-1, %eax; mov $-1, %edx
	lea area64_in(%rip), %rdi
	xrstor64 (%rdi)
	movaps %xmm0, res64_xmm0(%rip)
	movaps %xmm15, res64_xmm15(%rip)
	fnstcw res64_fcw(%rip)
	mov $ALIAS + 0xE00, %esi                     /* 512 bytes in one page, the rest in another */
	xsave64 (%rsi)
	mov $BIG, %edi; lea area64_c(%rip), %rbx; add %rbx, %rdi
	xsavec64 (%rdi)
	lea area_init(%rip), %rbx
	xrstor64 (%rbx)                              /* XSTATE_BV = 0: all initialised */
	movaps %xmm0, res64_xmm0_init(%rip)
	fnstcw res64_fcw_init(%rip)
	xrstor64 (%rdi)                              /* the compacted area, through the 1 GiB page */
	movaps %xmm0, res64_xmm0_c(%rip)
	lea area64_in+8(%rip), %rdi
	movq $4, skip(%rip)
fault_align:
	xrstor64 (%rdi)                              /* misaligned: #GP(0) */
	mov $UNMAPPED, %esi
	movq $4, skip(%rip)
fault_pf:
	xsave64 (%rsi)                               /* not mapped: #PF(W) */
	fwait                                        /* nothing pending */
	lea area_mf(%rip), %rdi; mov $1, %eax; xor %edx, %edx
	xrstor64 (%rdi)                              /* unmasked invalid operation pending */
	movq $1, skip(%rip)
fault_mf:
	fwait                                        /* #MF */
	lea area_init(%rip), %rdi; mov $1, %eax; xor %edx, %edx
	xrstor64 (%rdi)
	rdtsc; mov %eax, res_tsc0(%rip); mov %edx, res_tsc0+4(%rip)
	rdtscp; mov %eax, res_tscp(%rip); mov %edx, res_tscp+4(%rip); mov %ecx, res_aux(%rip)
	rdtsc; mov %eax, res_tsc1(%rip); mov %edx, res_tsc1+4(%rip)
	mov $'d', %al; call putc64
	mov $'\n', %al; call putc64
	mov $0x604, %dx; mov $0x3400, %ax; out %ax, %dx   /* ACPI poweroff */
1:	hlt
	jmp 1b

/* Every event is logged as (vector, rip, error code, cr2); `skip` steps over a faulting instruction. */
ev_1:	push $0; push $1; jmp ev_common
ev_3:	push $0; push $3; jmp ev_common
ev_13:	push $13; jmp ev_common
ev_14:	push $14; jmp ev_common
ev_16:	push $0; push $16; jmp ev_common
ev_80:	push $0; push $0x80; jmp ev_common
ev_common:
	push %rax; push %rbx
	mov evlog_n(%rip), %rbx; shl $5, %rbx; lea evlog(%rip), %rax; add %rbx, %rax
	mov 16(%rsp), %rbx; mov %rbx, (%rax)
	mov 32(%rsp), %rbx; mov %rbx, 8(%rax)
	mov 24(%rsp), %rbx; mov %rbx, 16(%rax)
	mov %cr2, %rbx; mov %rbx, 24(%rax)
	incq evlog_n(%rip)
	mov skip(%rip), %rbx; add %rbx, 32(%rsp); movq $0, skip(%rip)
	pop %rbx; pop %rax
	add $16, %rsp
	iretq
gate64:	/* rax handler, ecx vector: interrupt gate, DPL 0, 64-bit code segment */
	shl $4, %ecx; lea idt64(%rip), %rdi; add %rcx, %rdi
	mov %ax, (%rdi); movw $0x18, 2(%rdi); movw $0x8E00, 4(%rdi)
	shr $16, %rax; mov %ax, 6(%rdi); shr $16, %rax; mov %eax, 8(%rdi); movl $0, 12(%rdi)
	ret
putc64:	push %rdx; mov $COM1, %dx; out %al, %dx; pop %rdx; ret

	.data
	.align 16
gdt:	.quad 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00AF9A000000FFFF
gdt_end:
gdtr:	.word gdt_end - gdt - 1
	.long gdt, 0
	.align 8
idtr32:	.word 256*8-1
	.long idt32
	.align 8
idtr64:	.word 256*16-1
	.long idt64, 0
	.align 16
	.globl res32_ret_bp, res32_ret_80, res32_regs, res32_fcw, res32_xmm0
res32_ret_bp: .long 0
res32_ret_80: .long 0
res32_regs: .long 0, 0, 0, 0
res32_fcw: .long 0
	.align 16
res32_xmm0: .quad 0, 0
	.globl res64_regs, res64_fcw, res64_fcw_init, res64_xmm0, res64_xmm15, res64_xmm0_init
	.globl res64_xmm0_c, res_tsc0, res_tscp, res_tsc1, res_aux, evlog, evlog_n
res64_regs: .quad 0, 0, 0
res64_fcw: .quad 0
res64_fcw_init: .quad 0
res_tsc0: .quad 0
res_tscp: .quad 0
res_tsc1: .quad 0
res_aux: .quad 0
skip: .quad 0
evlog_n: .quad 0
evlog: .fill 64, 8, 0
	.align 16
res64_xmm0: .quad 0, 0
res64_xmm15: .quad 0, 0
res64_xmm0_init: .quad 0, 0
res64_xmm0_c: .quad 0, 0

	.align 64
area32_in:                              /* FCW 0x37A, FIP/FCS, FDP/FDS in the 32-bit format */
	.word 0x037A, 0, 0, 0; .long 0x1234, 0x10, 0x5678, 0x18
	.long 0x1F80, 0xFFFF
	.fill 16, 8, 0
	.quad 0x1111222233334444, 0x5555666677778888    /* XMM0 */
	.fill 42, 8, 0
	.quad 3, 0, 0, 0, 0, 0, 0, 0
	.globl area32_out
	.align 64
area32_out:
	.fill 512, 1, 0xAA
	.fill 64, 1, 0
	.align 64
area64_in:
	.word 0x027F, 0, 0, 0; .quad 0, 0
	.long 0x1F80, 0xFFFF
	.quad 0x8000000000000000, 0x3FFF                /* ST0 = 1.0 */
	.fill 14, 8, 0
	.quad 0x0123456789abcdef, 0xfedcba9876543210    /* XMM0 */
	.fill 28, 8, 0
	.quad 0x5555aaaa5555aaaa, 0x7777888877778888    /* XMM15 */
	.fill 12, 8, 0
	.quad 3, 0, 0, 0, 0, 0, 0, 0
	.fill 32, 8, 0
	.align 64
area_init:
	.fill 72, 8, 0
	.align 64
area_mf:                                /* FCW: invalid operation unmasked; FSW: IE | ES */
	.word 0x037E, 0x0081, 0, 0
	.fill 63, 8, 0
	.quad 1, 0, 0, 0, 0, 0, 0, 0
	.globl area64_c
	.align 64
area64_c:
	.fill 512, 1, 0xAA
	.fill 64, 1, 0
	.fill 448, 1, 0xAA

	.align 4096
pml4:	.long pdpt + 3, 0
	.fill 511, 8, 0
pdpt:	.long pd64 + 3, 0
	.long pd_alias + 3, 0
	.long 0x83, 0
	.fill 509, 8, 0
pd64:	.set i, 0
	.rept 8
	.long (i << 21) | 0x83, 0
	.set i, i + 1
	.endr
	.fill 504, 8, 0
pd_alias: .long pt64 + 3, 0
	.fill 511, 8, 0
	.globl pt64, xarea
pt64:	.long xarea + 0x1000 + 3, 0, xarea + 3, 0
	.fill 510, 8, 0
xarea:	.fill 2 * 4096, 1, 0
	.bss
	.align 4096
idt32:	.skip 256*8
idt64:	.skip 256*16
	.align 16
	.skip 8192
stack_top:
"""


@pytest.fixture(scope="module")
def completion_guest(tmp_path_factory):
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("needs GNU as and ld to build the test guest")
    d = tmp_path_factory.mktemp("complete")
    (d / "guest.S").write_text(GUEST_ASM)
    subprocess.run(["as", "--64", "-o", str(d / "guest.o"), str(d / "guest.S")], check=True)
    elf = d / "guest.elf"
    subprocess.run(["ld", "-m", "elf_x86_64", "-N", "-Ttext=0x100000", "--no-warn-rwx-segments",
                    "-o", str(elf), str(d / "guest.o")], check=True)
    symbols = {}
    for line in subprocess.run(["nm", str(elf)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        addr, _, name = line.split()
        symbols[name] = int(addr, 16)
    return elf, symbols


@needs_kvm
@needs_binutils
def test_guest_sees_completed_instructions_under_kvm(completion_guest, tmp_path):
    from akvm.config import MachineConfig
    from akvm.base.exitcode import ExitCode
    from akvm.machine import Machine

    elf, sym = completion_guest
    out = tmp_path / "serial.txt"
    machine = Machine.build(MachineConfig(kernel=str(elf), serial=f"file:{out}", memory=64 * MiB))
    result = []
    runner = threading.Thread(target=lambda: result.append(machine.run()))
    runner.start()                       # not the main thread: run() leaves signals alone
    runner.join(120)
    if runner.is_alive():
        machine.stop(ExitCode.GUEST_ERROR, "test timeout")
        runner.join(10)
        pytest.fail("the guest did not finish in 120 s")
    code, message = result[0]
    assert (code, message) == (ExitCode.POWEROFF, "guest powered off"), message
    assert out.read_text() == "abcd\n"
    m = machine.memory
    u32, u64 = m.read_u32, m.read_u64

    # 32-bit protected mode: int3 and int $0x80 return after themselves, registers intact.
    assert u32(sym["res32_ret_bp"]) == sym["r32_int3"]
    assert u32(sym["res32_ret_80"]) == sym["r32_int80"]
    assert [u32(sym["res32_regs"] + 4 * i) for i in range(4)] == \
        [0x11111111, 0x22222222, 0x33333333, 0x44444444]
    # 32-bit xrstor loaded FCW and XMM0 into the CPU; xsave stored them in the 32-bit format.
    assert u32(sym["res32_fcw"]) & 0xFFFF == 0x037A
    assert m.read(sym["res32_xmm0"], 16) == bytes.fromhex("44443333222211118888777766665555")
    out32 = m.read(sym["area32_out"], 576)
    assert struct.unpack_from("<H", out32, 0)[0] == 0x037A
    assert out32[12:16] == bytes(4) and out32[20:24] == bytes(4)     # FCS, FDS
    assert out32[160:176] == m.read(sym["res32_xmm0"], 16)
    assert out32[288:512] == b"\xAA" * 224      # XMM8-15 and the reserved bytes: untouched
    assert struct.unpack_from("<I", out32, 24)[0] == 0x1F80
    assert struct.unpack_from("<Q", out32, 512)[0] & 3 == 3

    # 64-bit: the events the guest's IDT handlers saw, in order.
    n = u64(sym["evlog_n"])
    events = [tuple(u64(sym["evlog"] + 32 * k + 8 * j) for j in range(4)) for k in range(n)]
    assert [(v, rip) for v, rip, _, _ in events] == [
        (3, sym["r64_int3"]), (0x80, sym["r64_int80"]), (1, sym["r64_icebp"]),
        (13, sym["fault_align"]), (14, sym["fault_pf"]), (16, sym["fault_mf"])]
    assert events[3][2] == 0                                   # #GP(0)
    assert events[4][2] == 0b010 and events[4][3] == 0xC0000000   # #PF: write, not present
    assert [u64(sym["res64_regs"] + 8 * i) for i in range(3)] == \
        [0x1111111111111111, 0x2222222222222222, 0x3333333333333333]

    # xrstor64 reached the CPU; XSTATE_BV = 0 initialised it; the compacted area restored it.
    xmm0 = bytes.fromhex("efcdab89674523011032547698badcfe")
    assert m.read(sym["res64_xmm0"], 16) == xmm0
    assert m.read(sym["res64_xmm15"], 16) == bytes.fromhex("aaaa5555aaaa55558888777788887777")
    assert u64(sym["res64_fcw"]) & 0xFFFF == 0x027F
    assert m.read(sym["res64_xmm0_init"], 16) == bytes(16)
    assert u64(sym["res64_fcw_init"]) & 0xFFFF == 0x037F
    assert m.read(sym["res64_xmm0_c"], 16) == xmm0

    # xsave64 went through two 4 KiB pages mapped in swapped order.
    xarea = sym["xarea"]
    saved = m.read(xarea + 0x1E00, 0x200) + m.read(xarea, 832 - 0x200)
    assert struct.unpack_from("<H", saved, 0)[0] == 0x027F
    assert saved[32:42] == bytes.fromhex("0000000000000080ff3f")   # ST0 = 1.0
    assert saved[160:176] == xmm0 and saved[400:416] == m.read(sym["res64_xmm15"], 16)
    assert struct.unpack_from("<Q", saved, 512)[0] & 3 == 3
    assert u64(sym["pt64"]) & (A | D) == A | D and u64(sym["pt64"] + 8) & (A | D) == A | D
    # xsavec64 through the 1 GiB page: compacted header.
    comp = m.read(sym["area64_c"], 576)
    assert struct.unpack_from("<Q", comp, 520)[0] == XCOMP_BV_COMPACTED | 7
    assert comp[160:176] == xmm0

    # rdtscp: the guest's TSC between two rdtsc, and its IA32_TSC_AUX (as KVM reports it).
    assert 0 < u64(sym["res_tsc0"]) <= u64(sym["res_tscp"]) <= u64(sym["res_tsc1"])
    aux = machine.vcpus[0].vcpu.get_msrs([0xC0000103]).get(0xC0000103, 0)
    assert u64(sym["res_aux"]) == aux & 0xFFFF_FFFF

    completions = machine.completer.stats()
    if completions["counts"]:   # this host's KVM gave them up (kvm_pvm); on VMX/SVM none are needed
        assert completions["counts"] == {"int3": 2, "int": 2, "int1": 1, "xrstor": 1, "xsave": 1,
                                         "xrstor64": 5, "xsave64": 1, "xsavec64": 1, "wait": 1,
                                         "rdtscp": 1}
        assert completions["faults"] == {"xrstor64 #GP": 1, "xsave64 #PF": 1, "wait #MF": 1}
        assert "completions: " in machine.format_stats()
