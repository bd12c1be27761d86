"""Guest RAM: slots of host memory and bounds-checked access by guest-physical address.

Every access the VMM makes on the guest's behalf goes through here, so a
guest-chosen address can never reach host memory outside guest RAM.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass

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


@dataclass
class Slot:
    """One contiguous piece of guest RAM backed by a host buffer."""
    index: int
    gpa: int
    size: int
    buf: object          # mmap.mmap or bytearray
    view: memoryview

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
