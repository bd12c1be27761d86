"""Multiboot 1 (spec 0.6.96) loader: parse a kernel image, load it and its boot info.

parse() only looks at the file's bytes; load() checks every placement against
the memory map before writing anything, so a bad kernel is refused with one
clear line instead of a half-written guest.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

from construct import Int16ul, Int32ul, Int64ul, Default, Struct
from elftools.elf.structs import ELFStructs

from akvm.boot.files import BadFile, open_regular
from akvm.base.memory import GuestMemory
from akvm.tables.layout import MemoryRegion

HEADER_MAGIC = 0x1BADB002
MAGIC_BYTES = HEADER_MAGIC.to_bytes(4, "little")
BOOTLOADER_MAGIC = 0x2BADB002
SEARCH_LIMIT = 8192          # the header lies in the first 8 KiB, 32-bit aligned

# Header flags. Bits 0-15 are requirements: a loader that does not know one must refuse.
PAGE_ALIGN = 1 << 0          # modules on 4 KiB boundaries (we always do that)
MEMORY_INFO = 1 << 1         # mem_* and mmap_* wanted (we always give them)
VIDEO_MODE = 1 << 2          # a video mode wanted: accepted, no video info given
SUPPORTED_REQUIRED = PAGE_ALIGN | MEMORY_INFO | VIDEO_MODE
AOUT_KLUDGE = 1 << 16        # load from the header's address fields, not from ELF

# Info flags.
INFO_MEMORY = 1 << 0
INFO_CMDLINE = 1 << 2
INFO_MODS = 1 << 3
INFO_MEM_MAP = 1 << 6
INFO_BOOT_LOADER_NAME = 1 << 9

# All boot info lives in [INFO_ADDR, INFO_LIMIT): free low RAM below the EBDA.
INFO_ADDR = 0x9000
INFO_LIMIT = 0x9FC00
PAGE = 0x1000
LOWER_MEMORY_MAX = 640 * 1024
UPPER_MEMORY_START = 0x100000
FOUR_GIB = 1 << 32
RAM_AVAILABLE = 1
RAM_RESERVED = 2

MultibootHeader = Struct("magic" / Int32ul, "flags" / Int32ul, "checksum" / Int32ul)
AoutFields = Struct(         # at header offset 12, valid when AOUT_KLUDGE
    "header_addr" / Int32ul, "load_addr" / Int32ul, "load_end_addr" / Int32ul,
    "bss_end_addr" / Int32ul, "entry_addr" / Int32ul,
)
VideoFields = Struct(        # at header offset 32, valid when VIDEO_MODE
    "mode_type" / Int32ul, "width" / Int32ul, "height" / Int32ul, "depth" / Int32ul,
)
AOUT_OFFSET, VIDEO_OFFSET = 12, 32

_u32 = Default(Int32ul, 0)
MultibootInfo = Struct(
    "flags" / _u32, "mem_lower" / _u32, "mem_upper" / _u32, "boot_device" / _u32,
    "cmdline" / _u32, "mods_count" / _u32, "mods_addr" / _u32,
    "syms" / Default(Struct("a" / _u32, "b" / _u32, "c" / _u32, "d" / _u32), {}),
    "mmap_length" / _u32, "mmap_addr" / _u32, "drives_length" / _u32, "drives_addr" / _u32,
    "config_table" / _u32, "boot_loader_name" / _u32, "apm_table" / _u32,
    "vbe_control_info" / _u32, "vbe_mode_info" / _u32,
    "vbe_mode" / Default(Int16ul, 0), "vbe_interface_seg" / Default(Int16ul, 0),
    "vbe_interface_off" / Default(Int16ul, 0), "vbe_interface_len" / Default(Int16ul, 0),
)
# `size` counts the bytes after itself, so an entry is size + 4 bytes long.
MmapEntry = Struct("size" / Int32ul, "base_addr" / Int64ul, "length" / Int64ul, "type" / Int32ul)
ModuleEntry = Struct("mod_start" / Int32ul, "mod_end" / Int32ul, "string" / Int32ul,
                     "reserved" / Default(Int32ul, 0))


class BootError(Exception):
    """Bad kernel or boot input; message is one clear line for the user."""


@dataclass
class BootModule:
    path: str
    args: str = ""


class Segment(NamedTuple):
    """A piece of the kernel: `data` goes at `paddr`, zeros up to `memsz`."""
    paddr: int
    data: bytes
    memsz: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


@dataclass
class MultibootImage:
    """A parsed kernel: what to put where, and where to jump. No memory touched."""
    name: str
    header_offset: int
    flags: int
    format: str                  # "elf32", "elf64" or "aout"
    segments: list[Segment]
    entry: int
    aout: dict | None = None     # header address fields, when AOUT_KLUDGE
    video: dict | None = None    # requested mode, when VIDEO_MODE (not honoured)


@dataclass
class BootState:
    entry: int   # 32-bit EIP
    eax: int     # 0x2BADB002
    ebx: int     # guest-physical address of the multiboot info
    modules: list[tuple[int, int]] = field(default_factory=list)  # (mod_start, mod_end)


def load_file(path: str, what: str = "kernel") -> bytes:
    """Read a kernel or module file, turning OS errors into one-line BootErrors."""
    try:
        with os.fdopen(open_regular(path, what), "rb") as f:
            return f.read()
    except BadFile as e:
        raise BootError(str(e)) from None
    except OSError as e:
        raise BootError(f"{what} {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------- parsing

def _find_header(data: bytes, name: str) -> int:
    """Offset of the first valid header; a magic with a bad checksum is skipped, as GRUB does."""
    bad, window = None, data[:SEARCH_LIMIT]
    off = window.find(MAGIC_BYTES)
    while 0 <= off <= len(window) - MultibootHeader.sizeof():
        if off % 4 == 0:
            h = MultibootHeader.parse(window[off:off + 12])
            if (h.magic + h.flags + h.checksum) & 0xFFFFFFFF == 0:
                return off
            if bad is None:
                bad = off
        off = window.find(MAGIC_BYTES, off + 1)
    if bad is not None:
        raise BootError(f"{name}: multiboot header at offset {bad:#x} has a bad checksum")
    raise BootError(f"{name}: no multiboot header in the first 8 KiB")


def parse(data: bytes, name: str = "kernel") -> MultibootImage:
    """Find the multiboot header and work out the segments and entry point."""
    data = bytes(data)
    off = _find_header(data, name)
    flags = MultibootHeader.parse(data[off:off + 12]).flags
    unknown = flags & 0xFFFF & ~SUPPORTED_REQUIRED
    if unknown:
        raise BootError(f"{name}: multiboot header requires unsupported features "
                        f"(flags {unknown:#x}); akvm supports page align, memory info, video mode")

    def fields(struct, at):
        end = off + at + struct.sizeof()
        if end > min(len(data), SEARCH_LIMIT):
            raise BootError(f"{name}: multiboot header at offset {off:#x} is cut short "
                            "(must lie within the first 8 KiB)")
        c = struct.parse(data[off + at:end])
        return {k: v for k, v in c.items() if not k.startswith("_")}

    aout = fields(AoutFields, AOUT_OFFSET) if flags & AOUT_KLUDGE else None
    video = fields(VideoFields, VIDEO_OFFSET) if flags & VIDEO_MODE else None
    if aout is not None:
        fmt, segments, entry = "aout", *_aout_segments(data, name, off, aout)
    elif data[:4] == b"\x7fELF":
        fmt, segments, entry = _elf_segments(data, name)
    else:
        raise BootError(f"{name}: not an ELF file and its multiboot header has no a.out address fields")

    _check_overlaps(segments, name)
    return MultibootImage(name, off, flags, fmt, segments, entry, aout, video)


def _aout_segments(data: bytes, name: str, off: int, a: dict) -> tuple[list[Segment], int]:
    """The a.out kludge: the header says where it sits, so file offset <-> address is fixed."""
    header_addr, load_addr = a["header_addr"], a["load_addr"]
    if load_addr > header_addr:
        raise BootError(f"{name}: load_addr {load_addr:#x} is above header_addr {header_addr:#x}")
    load_offset = off - (header_addr - load_addr)
    if load_offset < 0:
        raise BootError(f"{name}: header_addr - load_addr ({header_addr - load_addr:#x}) "
                        f"reaches before the start of the file")
    if a["load_end_addr"] == 0:
        load_end = load_addr + len(data) - load_offset
    else:
        load_end = a["load_end_addr"]
        if load_end < load_addr:
            raise BootError(f"{name}: load_end_addr {load_end:#x} is below load_addr {load_addr:#x}")
        if load_offset + (load_end - load_addr) > len(data):
            raise BootError(f"{name}: load_end_addr {load_end:#x} is past the end of the file")
    bss_end = a["bss_end_addr"] or load_end
    if bss_end < load_end:
        raise BootError(f"{name}: bss_end_addr {bss_end:#x} is below load_end_addr {load_end:#x}")
    if bss_end > FOUR_GIB:
        raise BootError(f"{name}: image ends at {bss_end:#x}, above 4 GiB")
    entry = a["entry_addr"]
    if not load_addr <= entry < load_end:
        raise BootError(f"{name}: entry_addr {entry:#x} is outside the loaded image "
                        f"{load_addr:#x}-{load_end:#x}")
    text = data[load_offset:load_offset + load_end - load_addr]
    return [Segment(load_addr, text, bss_end - load_addr)], entry


def _elf_headers(data: bytes, name: str) -> tuple[int, object, object]:
    """ELF class, file header and program headers, parsed with pyelftools'
    structure definitions. (ELFFile, the front end, would also import the DWARF
    and relocation readers: a tenth of akvm's start-up, for tables a kernel
    loader never reads.) Identification as ELFFile does it: e_ident's class and
    data bytes are the same for every ELF file."""
    elfclass = {b"\x01": 32, b"\x02": 64}.get(data[4:5])
    if elfclass is None or data[5:6] != b"\x01":
        raise BootError(f"{name}: not a little-endian ELF32 or ELF64 file")
    structs = ELFStructs(little_endian=True, elfclass=elfclass)
    structs.create_basic_structs()
    if len(data) < structs.Elf_Ehdr.sizeof():
        raise BootError(f"{name}: the ELF header is cut short ({len(data)} bytes)")
    h = structs.Elf_Ehdr.parse(data)
    structs.create_advanced_structs(h.e_type, h.e_machine, h.e_ident.EI_OSABI)
    if h.e_phnum and h.e_phentsize < structs.Elf_Phdr.sizeof():
        raise BootError(f"{name}: ELF program header size {h.e_phentsize} is below "
                        f"{structs.Elf_Phdr.sizeof()}")
    return elfclass, h, structs.Elf_Phdr


def _elf_segments(data: bytes, name: str) -> tuple[str, list[Segment], int]:
    """PT_LOAD segments at their physical addresses; the entry translated to physical."""
    try:
        elfclass, h, phdr = _elf_headers(data, name)
        if h.e_machine not in ("EM_386", "EM_X86_64"):
            raise BootError(f"{name}: not an x86 ELF file ({h.e_machine})")
        if h.e_type != "ET_EXEC":
            raise BootError(f"{name}: ELF file is {h.e_type}, not an executable")
        if h.e_phoff + h.e_phnum * h.e_phentsize > len(data):
            raise BootError(f"{name}: ELF program headers run past the end of the file")
        loads = []
        for i in range(h.e_phnum):
            at = h.e_phoff + i * h.e_phentsize
            p = phdr.parse(data[at:at + h.e_phentsize])
            if p.p_type == "PT_LOAD" and p.p_memsz:
                loads.append((i, p))
    except BootError:
        raise
    except Exception as e:  # pyelftools raises many types on corrupt input
        raise BootError(f"{name}: bad ELF file: {e}") from None

    segments, vranges = [], []
    for i, p in loads:
        if p.p_filesz > p.p_memsz:
            raise BootError(f"{name}: ELF segment {i} has filesz {p.p_filesz:#x} > memsz {p.p_memsz:#x}")
        if p.p_offset + p.p_filesz > len(data):
            raise BootError(f"{name}: ELF segment {i} runs past the end of the file")
        if p.p_paddr + p.p_memsz > FOUR_GIB:
            raise BootError(f"{name}: ELF segment {i} at {p.p_paddr:#x} ends above 4 GiB")
        segments.append(Segment(p.p_paddr, data[p.p_offset:p.p_offset + p.p_filesz], p.p_memsz))
        vranges.append((p.p_vaddr, p.p_memsz, p.p_paddr))
    if not segments:
        raise BootError(f"{name}: ELF file has no loadable segments")

    entry = h.e_entry
    for vaddr, memsz, paddr in vranges:
        if vaddr <= entry < vaddr + memsz:
            entry = entry - vaddr + paddr
            break
    else:  # not a virtual address of any segment: accept it if it is already physical
        if not any(s.paddr <= entry < s.end for s in segments):
            raise BootError(f"{name}: ELF entry point {entry:#x} is not in any loadable segment")
    return f"elf{elfclass}", segments, entry


def _check_overlaps(segments: list[Segment], name: str) -> None:
    ordered = sorted(segments)
    for a, b in zip(ordered, ordered[1:]):
        if b.paddr < a.end:
            raise BootError(f"{name}: segments at {a.paddr:#x}-{a.end:#x} and "
                            f"{b.paddr:#x}-{b.end:#x} overlap")


# ---------------------------------------------------------------- loading

def _available(memory_map: Sequence[MemoryRegion]) -> list[tuple[int, int]]:
    """Type-1 regions as sorted, merged [start, end) ranges."""
    merged: list[list[int]] = []
    for r in sorted((r for r in memory_map if r.type == RAM_AVAILABLE and r.size > 0),
                    key=lambda r: r.base):
        if merged and r.base <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], r.end)
        else:
            merged.append([r.base, r.end])
    return [(s, e) for s, e in merged]


def _fits(start: int, size: int, avail, memory: GuestMemory) -> bool:
    return (any(s <= start and start + size <= e for s, e in avail)
            and memory.contains(start, max(size, 1)))


def _ram(memory: GuestMemory) -> str:
    size = memory.size
    return f"{size >> 20} MiB" if size % (1 << 20) == 0 else f"{size:#x} bytes"


def _cstring(text: str, what: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")  # argv paths may hold undecodable bytes
    if b"\0" in raw:
        raise BootError(f"{what} contains a NUL character")
    return raw + b"\0"


def _align(x: int, a: int) -> int:
    return (x + a - 1) & ~(a - 1)


def _place(size: int, start: int, avail, memory: GuestMemory, avoid: tuple[int, int]) -> int | None:
    """Lowest page-aligned address >= start where `size` bytes fit in available RAM and miss `avoid`."""
    for s, e in avail:
        addr = _align(max(start, s), PAGE)
        if addr < avoid[1] and avoid[0] < addr + max(size, 1):
            addr = _align(avoid[1], PAGE)
        if addr + size <= e and addr + size <= FOUR_GIB and _fits(addr, size, avail, memory):
            return addr
    return None


def load(image: MultibootImage, memory: GuestMemory, memory_map: list[MemoryRegion],
         cmdline: str = "", modules: Sequence[BootModule] = (), loader_name: str = "akvm") -> BootState:
    """Check every placement, then write the kernel, the modules and the boot info."""
    name = image.name
    avail = _available(memory_map)
    for i, seg in enumerate(image.segments):
        if not _fits(seg.paddr, seg.memsz, avail, memory):
            raise BootError(f"{name}: segment {i} at {seg.paddr:#x}-{seg.end:#x} is not in available "
                            f"guest RAM (RAM size {_ram(memory)})")

    mod_data = [load_file(m.path, "module") for m in modules]
    mod_strings = [_cstring(f"{m.path} {m.args}" if m.args else m.path, f"module {m.path} arguments")
                   for m in modules]
    cmd = _cstring(cmdline, "kernel command line")
    loader = _cstring(loader_name, "boot loader name")
    regions = sorted(memory_map, key=lambda r: r.base)

    # Boot info layout: info struct, mmap, module list, then the strings.
    mmap_addr = INFO_ADDR + MultibootInfo.sizeof()
    mmap_length = MmapEntry.sizeof() * len(regions)
    mods_addr = mmap_addr + mmap_length
    cmdline_addr = mods_addr + ModuleEntry.sizeof() * len(modules)
    loader_addr = cmdline_addr + len(cmd)
    string_addrs, end = [], loader_addr + len(loader)
    for s in mod_strings:
        string_addrs.append(end)
        end += len(s)
    if end > INFO_LIMIT:
        raise BootError(f"boot information needs {end - INFO_ADDR} bytes, more than the "
                        f"{INFO_LIMIT - INFO_ADDR} below {INFO_LIMIT:#x}; shorten the command lines")
    if not _fits(INFO_ADDR, end - INFO_ADDR, avail, memory):
        raise BootError(f"boot information at {INFO_ADDR:#x}-{end:#x} is not in available guest RAM "
                        f"(RAM size {_ram(memory)})")
    for i, seg in enumerate(image.segments):
        if seg.paddr < end and INFO_ADDR < seg.end:
            raise BootError(f"{name}: segment {i} at {seg.paddr:#x}-{seg.end:#x} overlaps the boot "
                            f"information at {INFO_ADDR:#x}-{end:#x}")

    placed, cursor = [], max(seg.end for seg in image.segments)
    for m, blob in zip(modules, mod_data):
        addr = _place(len(blob), cursor, avail, memory, (INFO_ADDR, end))
        if addr is None:
            raise BootError(f"module {m.path} ({len(blob)} bytes) does not fit in guest RAM above "
                            f"{cursor:#x} (RAM size {_ram(memory)})")
        placed.append((addr, addr + len(blob)))
        cursor = _align(addr + len(blob), PAGE)

    # Everything checked: write.
    for seg in image.segments:
        memory.write(seg.paddr, seg.data)
        memory.zero(seg.paddr + len(seg.data), seg.memsz - len(seg.data))
    for (start, _), blob in zip(placed, mod_data):
        memory.write(start, blob)

    flags = INFO_MEMORY | INFO_CMDLINE | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME
    if modules:
        flags |= INFO_MODS
    mem_lower, mem_upper = _lower_upper(avail)
    memory.write(INFO_ADDR, MultibootInfo.build(dict(
        flags=flags, mem_lower=mem_lower, mem_upper=mem_upper, cmdline=cmdline_addr,
        mods_count=len(modules), mods_addr=mods_addr if modules else 0,
        mmap_length=mmap_length, mmap_addr=mmap_addr, boot_loader_name=loader_addr)))
    memory.write(mmap_addr, b"".join(
        MmapEntry.build(dict(size=MmapEntry.sizeof() - 4, base_addr=r.base, length=r.size, type=r.type))
        for r in regions))
    memory.write(mods_addr, b"".join(
        ModuleEntry.build(dict(mod_start=s, mod_end=e, string=a))
        for (s, e), a in zip(placed, string_addrs)))
    memory.write(cmdline_addr, cmd)
    memory.write(loader_addr, loader)
    for a, s in zip(string_addrs, mod_strings):
        memory.write(a, s)
    return BootState(entry=image.entry, eax=BOOTLOADER_MAGIC, ebx=INFO_ADDR, modules=placed)


def _lower_upper(avail) -> tuple[int, int]:
    """mem_lower: KiB available from 0 (at most 640); mem_upper: KiB contiguous from 1 MiB."""
    lower = upper = 0
    for s, e in avail:
        if s == 0:
            lower = min(e, LOWER_MEMORY_MAX) >> 10
        if s <= UPPER_MEMORY_START < e:
            upper = min((e - UPPER_MEMORY_START) >> 10, 0xFFFFFFFF)
    return lower, upper
