"""Guest memory: bounds-checked access, no path outside a slot."""
import faulthandler
import os
import signal

import pytest
from hypothesis import given, strategies as st

from akvm.base.memory import FOUR_GIB, PCI_HOLE_START, GuestMemory, GuestMemoryError


def test_layout_splits_at_pci_hole():
    mem = GuestMemory.anonymous(PCI_HOLE_START + (64 << 20))
    assert [(s.gpa, s.size) for s in mem.slots] == [(0, PCI_HOLE_START), (FOUR_GIB, 64 << 20)]
    mem.write(FOUR_GIB + 10, b"hi")
    assert mem.read(FOUR_GIB + 10, 2) == b"hi"
    with pytest.raises(GuestMemoryError):
        mem.read(PCI_HOLE_START, 1)


def test_small_ram_is_one_slot():
    mem = GuestMemory.anonymous(16 << 20)
    assert len(mem.slots) == 1 and mem.size == 16 << 20


def test_read_write_round_trip_and_ints():
    mem = GuestMemory.from_bytearray(0x2000)
    mem.write_u64(0x100, 0x1122334455667788)
    assert mem.read_u32(0x100) == 0x55667788
    assert mem.read(0x100, 2) == b"\x88\x77"


@pytest.mark.parametrize("gpa,length", [(0x2000, 1), (0x1FFF, 2), (-1, 1), (0, -1), (2**64, 1)])
def test_out_of_range_refused(gpa, length):
    mem = GuestMemory.from_bytearray(0x2000)
    with pytest.raises(GuestMemoryError):
        mem.read(gpa, length)
    assert not mem.contains(gpa, length)


def test_access_straddling_two_slots_refused():
    mem = GuestMemory()
    mem.add_slot(0, bytearray(0x1000))
    mem.add_slot(0x1000, bytearray(0x1000))
    with pytest.raises(GuestMemoryError):
        mem.read(0xFFF, 2)


def test_overlapping_slots_refused():
    mem = GuestMemory.from_bytearray(0x2000)
    with pytest.raises(ValueError):
        mem.add_slot(0x1000, bytearray(0x1000))


@given(st.integers(min_value=-2**65, max_value=2**65), st.integers(min_value=-10, max_value=0x3000))
def test_any_address_either_in_ram_or_refused(gpa, length):
    mem = GuestMemory.from_bytearray(0x2000, gpa=0x1000)
    try:
        view = mem.view(gpa, length)
    except GuestMemoryError:
        return
    assert 0x1000 <= gpa and gpa + length <= 0x3000 and len(view) == length


@pytest.mark.parametrize("make", [GuestMemory.anonymous, GuestMemory.from_bytearray])
@given(start=st.integers(0, 5 * 4096), length=st.integers(0, 5 * 4096))
def test_zero_clears_exactly_the_range(make, start, length):
    """Whole pages are dropped with MADV_DONTNEED on mmap'd RAM; bytes around them stay."""
    mem = make(16 * 4096)
    mem.write(0, b"\xAA" * (16 * 4096))
    mem.zero(start, length)
    assert mem.read(start, length) == bytes(length)
    assert mem.read(0, start) == b"\xAA" * start
    rest = 16 * 4096 - start - length
    assert mem.read(start + length, rest) == b"\xAA" * rest


def test_a_forked_child_does_not_inherit_guest_ram():
    """akvm.boot.image forks: the child must neither copy the guest's page tables
    nor turn the guest's pages copy-on-write."""
    mem = GuestMemory.anonymous(2 << 20)
    mem.write(0x1000, b"guest")
    pid = os.fork()
    if pid == 0:
        try:
            faulthandler.disable()  # the crash is the point: no dump in the test log
            mem.read(0x1000, 5)     # not mapped in the child: SIGSEGV
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV
    assert mem.read(0x1000, 5) == b"guest"
