"""Multiboot 1 loader: header search, ELF and a.out-kludge loading, boot info layout."""
import os
import shutil
import struct
import subprocess

import pytest
from construct import Array, CString, Int32ul, Int64ul, Padding, Struct
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.conftest import examples

from akvm.boot.multiboot import (BootError, BootModule, load, load_file, parse)
from akvm.tables.layout import MemoryRegion
from akvm.base.memory import GuestMemory

MAGIC = 0x1BADB002
MiB = 1 << 20
RAM = 4 * MiB

# The info struct as the spec lays it out, decoded independently of the loader's own struct.
Info = Struct(
    "flags" / Int32ul, "mem_lower" / Int32ul, "mem_upper" / Int32ul, "boot_device" / Int32ul,
    "cmdline" / Int32ul, "mods_count" / Int32ul, "mods_addr" / Int32ul, Padding(16),
    "mmap_length" / Int32ul, "mmap_addr" / Int32ul, Padding(12),  # drives, config_table
    "boot_loader_name" / Int32ul, Padding(20),                     # apm, vbe_*
)
assert Info.sizeof() == 88
Mmap = Struct("size" / Int32ul, "base_addr" / Int64ul, "length" / Int64ul, "type" / Int32ul)
Mod = Struct("mod_start" / Int32ul, "mod_end" / Int32ul, "string" / Int32ul, "reserved" / Int32ul)


def memory_map(size=RAM):
    return [MemoryRegion(0, 0x9FC00, 1), MemoryRegion(0x9FC00, 0x100000 - 0x9FC00, 2),
            MemoryRegion(0x100000, size - 0x100000, 1)]


def memory(size=RAM, fill=0xAA):
    mem = GuestMemory.from_bytearray(size)
    mem.write(0, bytes([fill]) * size)
    return mem


def cstring(mem, addr):
    return CString("utf8").parse(mem.read(addr, 4096))


# ---------------------------------------------------------------- image builders

def mb_header(flags, aout=None, video=None, checksum=None):
    """A multiboot header; `aout` = (header_addr, load_addr, load_end, bss_end, entry)."""
    if checksum is None:
        checksum = -(MAGIC + flags) & 0xFFFFFFFF
    h = struct.pack("<III", MAGIC, flags, checksum)
    if aout is not None or video is not None:
        h += struct.pack("<5I", *(aout or (0,) * 5))
    if video is not None:
        h += struct.pack("<4I", *video)
    return h


def aout_image(load_addr=0x100000, offset=0x40, body=0x200, load_end=0, bss_end=0,
               entry=None, flags=0x10003):
    """A flat image whose header sits at file `offset`, loaded so file byte 0 is at load_addr."""
    header_addr = load_addr + offset
    entry = load_addr + offset + 48 if entry is None else entry
    img = bytearray(i & 0xFF for i in range(offset + 48 + body))
    img[offset:offset + 32] = mb_header(flags, (header_addr, load_addr, load_end, bss_end, entry))
    return bytes(img)


def elf_image(cls=64, segments=((0xFFFFFFFFC0100000, 0x100000, b"\xf4\xeb\xfd", 0x2000),),
              entry=0xFFFFFFFFC0100000, machine=None, etype=2, header=None):
    """A minimal ELF: header, program headers, multiboot header, then segment contents."""
    machine = machine or (62 if cls == 64 else 3)
    ehsize, phsize = (64, 56) if cls == 64 else (52, 32)
    header = mb_header(0x3) if header is None else header
    data_off = ehsize + phsize * len(segments) + len(header)
    phdrs, blobs = b"", b""
    for vaddr, paddr, data, memsz in segments:
        off = data_off + len(blobs)
        if cls == 64:
            phdrs += struct.pack("<IIQQQQQQ", 1, 7, off, vaddr, paddr, len(data), memsz, 0x1000)
        else:
            phdrs += struct.pack("<IIIIIIII", 1, off, vaddr, paddr, len(data), memsz, 7, 0x1000)
        blobs += data
    ident = b"\x7fELF" + bytes([1 if cls == 32 else 2, 1, 1]) + bytes(9)
    fmt = "<HHIQQQIHHHHHH" if cls == 64 else "<HHIIIIIHHHHHH"
    eh = ident + struct.pack(fmt, etype, machine, 1, entry, ehsize, 0, 0, ehsize, phsize,
                             len(segments), 0, 0, 0)
    return eh + phdrs + header + blobs


# ---------------------------------------------------------------- toolchain-built kernels

KERNEL_S = """
.section .multiboot, "a"
.align 4
.long 0x1BADB002, 3, -(0x1BADB002 + 3)
.text
.globl _start
_start:
    hlt
    jmp _start
.data
.long 0x11223344
.bss
.skip 0x3000
"""
LINKER_SCRIPT = """
ENTRY(_start)
PHDRS { text PT_LOAD; data PT_LOAD; }
SECTIONS {
  . = BASE + 0x100000;
  .text : AT(ADDR(.text) - BASE) { *(.multiboot) *(.text) } :text
  . = ALIGN(0x1000);
  .data : AT(ADDR(.data) - BASE) { *(.data) } :data
  .bss : AT(ADDR(.bss) - BASE) { *(.bss) } :data
  /DISCARD/ : { *(.note*) *(.comment) }
}
"""
needs_toolchain = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("gcc", "ld", "objcopy")), reason="needs gcc, ld and objcopy")


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """An ELF64 linked in the high half, and an ELF32 made with objcopy as Akaros does."""
    d = tmp_path_factory.mktemp("kernels")
    (d / "k.S").write_text(KERNEL_S)
    run = lambda *cmd: subprocess.run(cmd, cwd=d, check=True, capture_output=True)
    run("gcc", "-c", "k.S", "-o", "k.o")
    (d / "k.ld").write_text(LINKER_SCRIPT.replace("BASE", "0xffffffffc0000000"))
    run("ld", "-n", "-m", "elf_x86_64", "-T", "k.ld", "k.o", "-o", "k64")
    # objcopy truncates the addresses: vaddr 0xc0100000, paddr still 0x100000.
    run("objcopy", "-I", "elf64-x86-64", "-O", "elf32-i386", "k64", "k32")
    return {"elf64": (d / "k64").read_bytes(), "elf32": (d / "k32").read_bytes()}


@needs_toolchain
@pytest.mark.parametrize("fmt", ["elf64", "elf32"])
def test_toolchain_kernel_loads_at_physical_addresses(kernels, fmt):
    image = parse(kernels[fmt])
    assert image.format == fmt
    assert [(s.paddr, s.memsz) for s in image.segments] == [(0x100000, 15), (0x101000, 0x3004)]
    assert image.entry == 0x10000C                      # high virtual entry made physical
    mem = memory()
    state = load(image, mem, memory_map())
    assert (state.entry, state.eax, state.ebx) == (0x10000C, 0x2BADB002, 0x9000)
    assert mem.read(0x10000C, 3) == b"\xf4\xeb\xfd"     # hlt; jmp _start
    assert mem.read_u32(0x101000) == 0x11223344
    assert mem.read(0x101004, 0x3000) == bytes(0x3000)  # bss zeroed
    assert mem.read(0x104004, 4) == b"\xaa" * 4          # and nothing past it


# ---------------------------------------------------------------- header search

@pytest.mark.parametrize("offset", [0, 4, 0x400, 8192 - 32])
def test_header_found_at_aligned_offsets(offset):
    image = parse(aout_image(offset=offset))
    assert image.header_offset == offset
    assert image.format == "aout"
    assert image.entry == 0x100000 + offset + 48


@pytest.mark.parametrize("offset", [8192, 8192 - 8, 2])
def test_header_not_found_beyond_8k_straddling_or_unaligned(offset):
    data = bytes(offset) + mb_header(0x3) + bytes(64)
    with pytest.raises(BootError, match=r"^vmlinux: no multiboot header in the first 8 KiB$"):
        parse(data, "vmlinux")


def test_bad_checksum():
    data = elf_image(header=mb_header(0x3, checksum=0x1234))
    with pytest.raises(BootError, match="bad checksum"):
        parse(data)


def test_bad_checksum_skipped_for_a_later_valid_header():
    data = mb_header(0x3, checksum=0) + aout_image(offset=0x40)[12:]
    assert parse(data).header_offset == 0x40


@pytest.mark.parametrize("flag", [1 << 3, 1 << 7, 1 << 15])
def test_unsupported_required_flags(flag):
    with pytest.raises(BootError, match=f"unsupported features \\(flags {flag:#x}\\)"):
        parse(elf_image(header=mb_header(0x3 | flag)))


def test_unknown_optional_flags_are_ignored_and_video_accepted():
    image = parse(elf_image(header=mb_header(0x7 | 1 << 20, video=(0, 1024, 768, 32))))
    assert image.video == {"mode_type": 0, "width": 1024, "height": 768, "depth": 32}


def test_header_fields_cut_short_at_8k():
    data = bytes(8192 - 12) + mb_header(0x10003) + bytes(64)
    with pytest.raises(BootError, match="cut short"):
        parse(data)


# ---------------------------------------------------------------- ELF

def test_elf32_paddr_differs_from_vaddr():
    data = elf_image(32, [(0xC0100000, 0x200000, b"code", 0x10), (0xC0200000, 0x300000, b"d", 1)],
                     entry=0xC0100002)
    image = parse(data)
    assert image.format == "elf32"
    assert image.segments == [(0x200000, b"code", 0x10), (0x300000, b"d", 1)]
    assert image.entry == 0x200002


def test_elf_entry_already_physical():
    assert parse(elf_image(entry=0x100001)).entry == 0x100001


def test_elf64_bss_zero_fill():
    mem = memory()
    load(parse(elf_image()), mem, memory_map())
    assert mem.read(0x100000, 0x2001) == b"\xf4\xeb\xfd" + bytes(0x2000 - 3) + b"\xaa"


@pytest.mark.parametrize("kwargs, message", [
    (dict(entry=0x5000), "entry point 0x5000 is not in any loadable segment"),
    (dict(segments=()), "no loadable segments"),
    (dict(machine=40), "not an x86 ELF file"),
    (dict(etype=3), "ET_DYN, not an executable"),
    (dict(segments=[(0x100000, 0x100000, b"abcd", 2)], entry=0x100000), "filesz 0x4 > memsz 0x2"),
    (dict(segments=[(0xFFFFF000, 0xFFFFF000, b"x", 0x2000)], entry=0xFFFFF000), "above 4 GiB"),
])
def test_bad_elf(kwargs, message):
    with pytest.raises(BootError, match=message):
        parse(elf_image(**kwargs))


def test_elf_headers_too_short_say_so():
    with pytest.raises(BootError, match="the ELF header is cut short"):
        parse(elf_image()[:28] + mb_header(0x3))             # the header 4-byte aligned
    small_phdrs = bytearray(elf_image())
    small_phdrs[54:56] = struct.pack("<H", 8)             # e_phentsize of an ELF64
    with pytest.raises(BootError, match="ELF program header size 8 is below 56"):
        parse(bytes(small_phdrs))


def test_elf_segment_past_end_of_file():
    with pytest.raises(BootError, match="past the end of the file"):
        parse(elf_image()[:-1])


def test_elf_overlapping_segments():
    segs = [(0x100000, 0x100000, b"a", 0x2000), (0x101000, 0x101000, b"b", 0x10)]
    with pytest.raises(BootError, match="overlap"):
        parse(elf_image(segments=segs, entry=0x100000))


# ---------------------------------------------------------------- a.out kludge

def test_aout_with_bss():
    data = aout_image(load_addr=0x100000, offset=0x40, body=0x200, bss_end=0x110000)
    image = parse(data)
    assert image.segments == [(0x100000, data, 0x10000)]
    mem = memory()
    state = load(image, mem, memory_map())
    assert state.entry == 0x100070
    assert mem.read(0x100000, len(data)) == data
    assert mem.read(0x100000 + len(data), 0x10000 - len(data)) == bytes(0x10000 - len(data))
    assert mem.read(0x110000, 1) == b"\xaa"


def test_aout_load_end_and_load_offset():
    # Header 0x40 into the file but only 0x10 past load_addr: the first 0x30 bytes are skipped.
    data = bytearray(0x200)
    data[0x40:0x60] = mb_header(0x10000, (0x200010, 0x200000, 0x200100, 0, 0x200020))
    image = parse(bytes(data))
    assert image.segments == [(0x200000, bytes(data[0x30:0x130]), 0x100)]
    assert image.entry == 0x200020


@pytest.mark.parametrize("fields, message", [
    ((0x100000, 0x100100, 0, 0, 0x100100), "load_addr 0x100100 is above header_addr"),
    ((0x100100, 0x100000, 0, 0, 0x100000), "before the start of the file"),
    ((0x100000, 0x100000, 0x200000, 0, 0x100000), "past the end of the file"),
    ((0x100000, 0x100000, 0x100010, 0xF0000, 0x100000), "bss_end_addr 0xf0000 is below"),
    ((0x100000, 0x100000, 0, 0, 0x300000), "entry_addr 0x300000 is outside"),
    ((0xFFFFFF00, 0xFFFFFF00, 0, 0, 0xFFFFFF00), "above 4 GiB"),
])
def test_bad_aout_fields(fields, message):
    with pytest.raises(BootError, match=message):
        parse(mb_header(0x10000, fields) + bytes(0x300))


# ---------------------------------------------------------------- placement

@pytest.mark.parametrize("paddr", [0x10000000, 0xA0000, RAM - 0x1000])
def test_segment_outside_available_ram(paddr):
    image = parse(elf_image(segments=[(paddr, paddr, b"x", 0x2000)], entry=paddr))
    mem = memory()
    with pytest.raises(BootError, match=f"segment 0 at {paddr:#x}-.*not in available guest RAM "
                                        r"\(RAM size 4 MiB\)"):
        load(image, mem, memory_map())
    assert mem.read(0x9000, 4) == b"\xaa" * 4       # nothing written


def test_segment_overlapping_boot_info():
    image = parse(aout_image(load_addr=0x8000, offset=0, body=0x1000))
    with pytest.raises(BootError, match="overlaps the boot information at 0x9000-"):
        load(image, memory(), memory_map())


def test_kernel_below_boot_info_is_fine():
    image = parse(aout_image(load_addr=0x1000, offset=0, body=0x100))
    assert load(image, memory(), memory_map()).ebx == 0x9000


def test_boot_info_too_large():
    with pytest.raises(BootError, match="boot information needs"):
        load(parse(elf_image()), memory(), memory_map(), cmdline="x" * 700_000)


def test_nul_in_cmdline():
    with pytest.raises(BootError, match="kernel command line contains a NUL"):
        load(parse(elf_image()), memory(), memory_map(), cmdline="a\0b")


# ---------------------------------------------------------------- boot info

def test_info_struct_fields(tmp_path):
    m1, m2 = tmp_path / "initrd", tmp_path / "data.bin"
    m1.write_bytes(b"I" * 5000)
    m2.write_bytes(b"D" * 3)
    mem = memory()
    state = load(parse(elf_image()), mem, memory_map(), cmdline="console=ttyS0 quiet",
                 modules=[BootModule(str(m1), "root=1"), BootModule(str(m2))], loader_name="akvm 1")
    info = Info.parse(mem.read(state.ebx, Info.sizeof()))
    assert info.flags == (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
    assert info.mem_lower == 639
    assert info.mem_upper == (RAM - MiB) // 1024
    assert cstring(mem, info.cmdline) == "console=ttyS0 quiet"
    assert cstring(mem, info.boot_loader_name) == "akvm 1"

    assert info.mmap_length == 3 * 24
    entries = Array(3, Mmap).parse(mem.read(info.mmap_addr, info.mmap_length))
    assert [(e.size, e.base_addr, e.length, e.type) for e in entries] == \
        [(20, r.base, r.size, r.type) for r in memory_map()]

    assert info.mods_count == 2
    mods = Array(2, Mod).parse(mem.read(info.mods_addr, 32))
    kernel_end = 0x102000
    assert mods[0].mod_start == kernel_end and mods[0].mod_end == kernel_end + 5000
    assert mods[1].mod_start == kernel_end + 0x2000 and mods[1].mod_end == kernel_end + 0x2003
    for m, path, args, blob in zip(mods, (m1, m2), (" root=1", ""), (b"I" * 5000, b"D" * 3)):
        assert m.mod_start % 0x1000 == 0 and m.reserved == 0
        assert mem.read(m.mod_start, m.mod_end - m.mod_start) == blob
        assert cstring(mem, m.string) == f"{path}{args}"
    assert state.modules == [(m.mod_start, m.mod_end) for m in mods]

    # Everything the loader wrote lives in [0x9000, 0x9FC00).
    for addr in (info.cmdline, info.boot_loader_name, info.mmap_addr, info.mods_addr,
                 mods[0].string, mods[1].string):
        assert 0x9000 <= addr < 0x9FC00


def test_info_without_modules_and_empty_cmdline():
    mem = memory()
    state = load(parse(elf_image()), mem, memory_map())
    info = Info.parse(mem.read(state.ebx, Info.sizeof()))
    assert info.flags == (1 << 0) | (1 << 2) | (1 << 6) | (1 << 9)
    assert (info.mods_count, info.mods_addr) == (0, 0)
    assert cstring(mem, info.cmdline) == ""
    assert cstring(mem, info.boot_loader_name) == "akvm"


def test_mem_upper_stops_at_first_hole():
    mmap = memory_map(RAM)[:2] + [MemoryRegion(0x100000, MiB, 1), MemoryRegion(0x200000, MiB, 1),
                                  MemoryRegion(0x300000, 0x1000, 2), MemoryRegion(0x301000, 0x1000, 1)]
    mem = memory()
    info = Info.parse(mem.read(load(parse(elf_image()), mem, mmap).ebx, Info.sizeof()))
    assert info.mem_upper == 2048


def test_module_that_does_not_fit(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(bytes(RAM))
    with pytest.raises(BootError, match=f"module {big} .* does not fit"):
        load(parse(elf_image()), memory(), memory_map(), modules=[BootModule(str(big))])


def test_missing_module(tmp_path):
    with pytest.raises(BootError, match=f"^module {tmp_path}/nope: No such file"):
        load(parse(elf_image()), memory(), memory_map(), modules=[BootModule(f"{tmp_path}/nope")])


# ---------------------------------------------------------------- files

def test_not_elf_without_aout_fields():
    with pytest.raises(BootError, match=r"^k: not an ELF file and its multiboot header has no "
                                        r"a.out address fields$"):
        parse(mb_header(0x3) + bytes(100), "k")


def test_empty_file():
    with pytest.raises(BootError, match="no multiboot header"):
        parse(b"")


def test_load_file(tmp_path):
    (tmp_path / "k").write_bytes(b"abc")
    assert load_file(str(tmp_path / "k")) == b"abc"
    with pytest.raises(BootError, match=f"^kernel {tmp_path}/missing: No such file"):
        load_file(f"{tmp_path}/missing")
    with pytest.raises(BootError, match=f"^kernel {tmp_path}: Is a directory"):
        load_file(str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read anything")
def test_load_file_unreadable(tmp_path):
    p = tmp_path / "k"
    p.write_bytes(b"abc")
    p.chmod(0)
    with pytest.raises(BootError, match="Permission denied"):
        load_file(str(p))


# ---------------------------------------------------------------- robustness

SMALL_RAM = 2 * MiB


def parse_and_load(data):
    try:
        load(parse(data), GuestMemory.from_bytearray(SMALL_RAM), memory_map(SMALL_RAM), cmdline="x")
    except BootError:
        pass


VALID = [aout_image(bss_end=0x101000), elf_image(), elf_image(32, [(0x100000, 0x100000, b"ab", 4)],
                                                              entry=0x100000)]


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.booleans())
def test_random_bytes_only_raise_boot_error(data, with_header):
    parse_and_load(mb_header(0x3) + data if with_header else data)


@settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                        max_size=8), st.integers(0, 400))
def test_mutated_images_only_raise_boot_error(image, edits, cut):
    data = bytearray(image)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    parse_and_load(bytes(data[:len(data) - cut] if cut < len(data) else data))


def test_bss_larger_than_a_zeroing_chunk():
    mem = memory()
    load(parse(aout_image(bss_end=0x100000 + 3 * MiB - 5)), mem, memory_map())
    assert mem.read(0x100000 + 0x300, 3 * MiB - 5 - 0x300) == bytes(3 * MiB - 5 - 0x300)
    assert mem.read(0x100000 + 3 * MiB - 5, 5) == b"\xaa" * 5
