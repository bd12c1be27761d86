"""Guest RAM: slots of host memory and bounds-checked access by guest-physical address.

Every access the VMM makes on the guest's behalf goes through here, so a
guest-chosen address can never reach host memory outside guest RAM.
"""
from __future__ import annotations

import mmap
import os

# The 32-bit PCI hole: MMIO windows, IOAPIC, LAPIC and the VT-d page live here;
# RAM that does not fit below it continues at 4 GiB.
PCI_HOLE_START = 0xC000_0000
FOUR_GIB = 0x1_0000_0000


def ram_ranges(size: int) -> list[tuple[int, int]]:
    """(guest-physical address, length) of each slot of `size` bytes of RAM."""
    low = min(size, PCI_HOLE_START)
    return [(gpa, length) for gpa, length in ((0, low), (FOUR_GIB, size - low)) if length]


class GuestMemoryError(Exception):
    """An access outside guest RAM (or straddling two slots)."""


# Snapshot RAM files (save_sparse, from_ram_file): data runs closer than this are
# mapped as one extent (the hole between them is read from the file), and the gap
# grows until a slot has at most MAX_EXTENTS mappings (each is a kernel VMA).
MERGE_GAP = 16 * mmap.PAGESIZE
MAX_EXTENTS = 8192


class Slot:
    """One contiguous piece of guest RAM backed by a host buffer."""

    __slots__ = ("index", "gpa", "size", "buf", "view", "file_extents")

    def __init__(self, index: int, gpa: int, size: int, buf, view: memoryview):
        self.index, self.gpa, self.size = index, gpa, size
        self.buf = buf              # mmap.mmap or bytearray
        self.view = view
        # (offset, length) ranges mapped from a snapshot's RAM file (from_ram_file):
        # their pages may hold data without having been touched in this process.
        self.file_extents: list[tuple[int, int]] = []

    @property
    def end(self) -> int:
        return self.gpa + self.size


class GuestMemory:
    """Guest-physical RAM made of non-overlapping slots."""

    def __init__(self):
        self.slots: list[Slot] = []

    @classmethod
    def anonymous(cls, size: int) -> "GuestMemory":
        """RAM of `size` bytes in mmap'd slots: below the PCI hole, the rest above 4 GiB."""
        mem = cls()
        for gpa, length in ram_ranges(size):
            buf = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            # A forked child (akvm.boot.image) gets none of it: no page tables
            # to copy, no copy-on-write under the guest's feet.
            buf.madvise(mmap.MADV_DONTFORK)
            mem.add_slot(gpa, buf)
        return mem

    @classmethod
    def from_ram_file(cls, fd: int, slots: list[tuple[int, int, int, list[tuple[int, int]]]]
                      ) -> "GuestMemory":
        """RAM as save_sparse() wrote it to the file `fd`: for each (gpa, size, file offset,
        extents) an anonymous slot with the extents mapped privately from the file over it,
        so a page loads when the guest first touches it and the time taken does not grow
        with the size of RAM. The file may be closed afterwards."""
        from akvm.base.native import ffi, lib
        mem = cls()
        try:
            for gpa, length, offset, extents in slots:
                buf = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                slot = mem.add_slot(gpa, buf)
                pairs = [v for extent in extents for v in extent]
                r = lib.akvm_ram_map(ffi.cast("void *", mem.host_address(slot)), length, fd,
                                     offset, pairs or [0], len(extents))
                if r < 0:
                    raise OSError(-r, f"mapping the RAM file: {os.strerror(-r)}")
                slot.file_extents = list(extents)
                buf.madvise(mmap.MADV_DONTFORK)
        except BaseException:
            mem.close()
            raise
        return mem

    def save_sparse(self, fd: int, offsets: list[int]) -> dict:
        """Write the RAM that holds data to the file `fd`, slot i at offsets[i] (holes
        elsewhere). Returns {"extents": per slot, the (offset, length) ranges to map back,
        "data": bytes written, "touched": bytes of RAM this process has touched}. Pages
        never touched are not even read (/proc/self/pagemap), except in the extents a
        RAM file maps, whose untouched pages still hold the file's data."""
        from akvm.base.native import ffi, lib
        try:
            pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pagemap = -1            # every page is read and checked for zeros
        out = {"extents": [], "data": 0, "touched": 0}
        runs = ffi.new("struct akvm_ram_runs *")
        touched = ffi.new("unsigned long long *")
        try:
            for slot, offset in zip(self.slots, offsets):
                base = ffi.cast("void *", self.host_address(slot))
                for start, end, from_file in _segments(slot.size, slot.file_extents):
                    r = lib.akvm_ram_save(base, start, end, -1 if from_file else pagemap, fd,
                                          offset, runs, touched)
                    if r < 0:
                        raise OSError(-r, f"writing the RAM file: {os.strerror(-r)}")
                data = [(runs.v[2 * i], runs.v[2 * i + 1]) for i in range(runs.n)]
                lib.akvm_ram_runs_free(runs)
                out["data"] += sum(n for _, n in data)
                out["extents"].append(merge_runs(data))
        finally:
            lib.akvm_ram_runs_free(runs)
            if pagemap >= 0:
                os.close(pagemap)
        out["touched"] = touched[0] * mmap.PAGESIZE
        return out

    def close(self) -> None:
        """Unmap mmap'd slots (after KVM has let go of them)."""
        for slot in self.slots:
            slot.view.release()
            if isinstance(slot.buf, mmap.mmap):
                slot.buf.close()
        self.slots = []

    @classmethod
    def from_bytearray(cls, size: int, gpa: int = 0) -> "GuestMemory":
        """RAM backed by a bytearray: for device-model unit tests without KVM."""
        mem = cls()
        mem.add_slot(gpa, bytearray(size))
        return mem

    def add_slot(self, gpa: int, buf) -> Slot:
        size = len(buf)
        for s in self.slots:
            if gpa < s.end and s.gpa < gpa + size:
                raise ValueError(f"slot at {gpa:#x} overlaps slot at {s.gpa:#x}")
        slot = Slot(len(self.slots), gpa, size, buf, memoryview(buf))
        self.slots.append(slot)
        return slot

    @property
    def size(self) -> int:
        return sum(s.size for s in self.slots)

    def _locate(self, gpa: int, length: int) -> tuple[Slot, int]:
        if length < 0 or gpa < 0:
            raise GuestMemoryError(f"bad access {gpa:#x}+{length:#x}")
        for s in self.slots:
            if s.gpa <= gpa and gpa + length <= s.end:
                return s, gpa - s.gpa
        raise GuestMemoryError(f"access {gpa:#x}+{length:#x} is outside guest RAM")

    def contains(self, gpa: int, length: int = 1) -> bool:
        try:
            self._locate(gpa, length)
        except GuestMemoryError:
            return False
        return True

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view of guest RAM; raises GuestMemoryError when out of range."""
        slot, off = self._locate(gpa, length)
        return slot.view[off:off + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data) -> None:
        self.view(gpa, len(data))[:] = data

    def zero(self, gpa: int, length: int) -> None:
        """Clear a range. Whole pages of mmap'd RAM are given back to the kernel
        (MADV_DONTNEED: private anonymous memory reads as zeros afterwards),
        which costs nothing until the guest touches them; the rest is written."""
        slot, off = self._locate(gpa, length)
        start, end = -(-off // mmap.PAGESIZE) * mmap.PAGESIZE, (off + length) // mmap.PAGESIZE * mmap.PAGESIZE
        if isinstance(slot.buf, mmap.mmap) and start < end:
            slot.buf.madvise(mmap.MADV_DONTNEED, start, end - start)
            slot.view[off:start] = bytes(start - off)
            slot.view[end:off + length] = bytes(off + length - end)
        else:
            slot.view[off:off + length] = bytes(length)

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.view(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.view(gpa, 8), "little")

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & 0xFFFF_FFFF).to_bytes(4, "little"))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"))

    def host_address(self, slot: Slot) -> int:
        """The host virtual address of a slot, for KVM_SET_USER_MEMORY_REGION."""
        import ctypes
        return ctypes.addressof(ctypes.c_char.from_buffer(slot.buf))


def _segments(size: int, file_extents: list[tuple[int, int]]):
    """[0, size) cut into (start, end, from_file) pieces by the mapped file extents."""
    pos = 0
    for off, length in sorted(file_extents):
        if off > pos:
            yield pos, off, False
        yield off, off + length, True
        pos = off + length
    if pos < size:
        yield pos, size, False


def merge_runs(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Runs of data -> the extents to map: neighbours closer than MERGE_GAP become one,
    and the gap doubles until there are at most MAX_EXTENTS."""
    gap = MERGE_GAP
    while True:
        merged: list[list[int]] = []
        for off, length in sorted(runs):
            if merged and off - (merged[-1][0] + merged[-1][1]) <= gap:
                merged[-1][1] = off + length - merged[-1][0]
            else:
                merged.append([off, length])
        if len(merged) <= MAX_EXTENTS:
            return [(off, length) for off, length in merged]
        gap *= 2
