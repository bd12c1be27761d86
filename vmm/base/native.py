"""C hot paths, built by cffi in API mode at install time (akvm.base.native_build)."""
from __future__ import annotations

import weakref

from akvm.base._native import ffi, lib  # noqa: F401

# GuestMemory -> (slot count, cffi array of its slots' host mappings, or None)
_slot_arrays: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def native_slots(memory):
    """The `struct akvm_mem_slot[]` through which C reaches `memory` (rebuilt when a
    slot is added), or None when a slot has no writable host buffer to point C at.
    The array points into the slots' buffers; memory.slots keeps those alive."""
    cached = _slot_arrays.get(memory)
    if cached is not None and cached[0] == len(memory.slots):
        return cached[1]
    try:
        array = ffi.new("struct akvm_mem_slot[]", len(memory.slots))
        for i, slot in enumerate(memory.slots):
            array[i].gpa, array[i].size = slot.gpa, slot.size
            array[i].host = ffi.cast("unsigned char *", memory.host_address(slot))
    except (TypeError, ValueError, AttributeError, BufferError):
        array = None
    _slot_arrays[memory] = (len(memory.slots), array)
    return array
