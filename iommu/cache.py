"""The remapping unit's caches: the context cache and the IOTLB (VT-d 6.1, 6.2).

Both are bounded (least recently used entries are evicted) and tagged with
the domain id, and both keep serving what they hold until software
invalidates it: a guest that changes a context or page-table entry without
invalidating really uses the old translation, as on hardware.

With caching mode (CAP.CM) the unit may also cache not-present and
erroneous entries; those are stored as `Negative` entries and answer with
the same fault until invalidated (context entries under domain 0, as the
spec has software invalidate them).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from akvm.iommu.translate import ContextEntry, Leaf, TranslationFault
from akvm.base.native import ffi, lib

LARGE_PAGE_SHIFTS = (12, 21, 30)


@dataclass
class DomainStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    invalidated: int = 0          # entries dropped by invalidations


@dataclass(frozen=True)
class Negative:
    """A cached fault (caching mode only)."""
    fault: TranslationFault
    did: int = 0


@dataclass
class IotlbEntry:
    did: int
    leaf: Leaf
    sid: int                      # the requester whose walk filled it (for reports)
    reported: bool = False        # the checker has reported this entry stale


class ContextCache:
    """source id -> ContextEntry (or Negative), bounded, tagged by domain id."""

    def __init__(self, capacity: int = 256):
        self.capacity = max(1, capacity)
        self._entries: OrderedDict[int, ContextEntry | Negative] = OrderedDict()
        self.hits = self.misses = self.evictions = self.invalidated = 0
        # Counts entries leaving (for translators in C, iommu/vtdfast.h, which
        # stop serving a context once it moved); the unit bumps it too.
        self.epoch = ffi.new("unsigned long long *")

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, sid: int) -> ContextEntry | Negative | None:
        entry = self._entries.get(sid)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(sid)
        self.hits += 1
        return entry

    def insert(self, sid: int, entry: ContextEntry | Negative) -> None:
        self._entries[sid] = entry
        self._entries.move_to_end(sid)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evictions += 1
            self.epoch[0] += 1

    def entries(self) -> list[tuple[int, ContextEntry | Negative]]:
        return list(self._entries.items())

    def _drop(self, keep) -> int:
        victims = [sid for sid, e in self._entries.items() if not keep(sid, e)]
        for sid in victims:
            del self._entries[sid]
        self.invalidated += len(victims)
        if victims:
            self.epoch[0] += 1
        return len(victims)

    def invalidate_all(self) -> int:
        return self._drop(lambda sid, e: False)

    def invalidate_domain(self, did: int) -> int:
        return self._drop(lambda sid, e: e.did != did)

    def invalidate_device(self, did: int, sid: int, function_mask: int) -> int:
        """Device-selective: DID and SID match, ignoring the function bits FM masks
        (FM 1: bit 2, 2: bits 2:1, 3: bits 2:0)."""
        ignore = (0, 0b100, 0b110, 0b111)[function_mask & 3]
        return self._drop(lambda s, e: e.did != did or (s & ~ignore) != (sid & ~ignore))


class _PerDomain:
    """Per-domain statistics, created on first use."""
    domains: dict[int, DomainStats]

    def stats(self, did: int) -> DomainStats:
        s = self.domains.get(did)
        if s is None:
            s = self.domains[did] = DomainStats()
        return s


class Iotlb(_PerDomain):
    """(domain, page) -> translation, for 4 KiB, 2 MiB and 1 GiB pages; bounded LRU,
    with the table in C (iommu/iotlb.c); tests/unit/pyiotlb.py is its Python twin.

    C owns the keys, the hash, the LRU order and the invalidation walks; the
    slots' contents (IotlbEntry or Negative) and the statistics stay here.
    A translator in C (iommu/vtdfast.c) fills slots too, on the misses it
    walks: a slot whose stamp is not the one this object saw when it filled
    it holds what C put there, and is read back from C when next needed.
    """

    def __init__(self, capacity: int = 512):
        self.capacity = max(1, capacity)
        self._table = ffi.gc(lib.akvm_iotlb_new(self.capacity), lib.akvm_iotlb_free)
        if self._table == ffi.NULL:
            raise MemoryError("akvm_iotlb_new")
        self._keys: list[tuple[int, int, int] | None] = [None] * self.capacity
        self._values: list[IotlbEntry | Negative | None] = [None] * self.capacity
        self._stamps = [0] * self.capacity       # C's stamp of what _values holds (0: none)
        self._evicted = ffi.new("int *")
        self._slots = ffi.new("int[]", self.capacity)
        self._info = ffi.new("struct akvm_iotlb_info *")
        self.domains: dict[int, DomainStats] = {}

    def __len__(self) -> int:
        return lib.akvm_iotlb_count(self._table)

    def _value(self, slot: int) -> IotlbEntry | Negative | None:
        """What a used slot holds: this object's copy, or what C filled it with."""
        stamp = lib.akvm_iotlb_stamp(self._table, slot)
        if stamp != self._stamps[slot]:
            info = self._info
            lib.akvm_iotlb_info(self._table, slot, info)
            leaf = Leaf(info.iova, info.frame, info.shift, bool(info.perm & lib.AKVM_IOTLB_R),
                        bool(info.perm & lib.AKVM_IOTLB_W), info.pte)
            self._keys[slot] = (info.did, info.shift, info.iova >> info.shift)
            self._values[slot] = IotlbEntry(info.did, leaf, info.sid)
            self._stamps[slot] = stamp
        return self._values[slot]

    def _did(self, slot: int) -> int:
        """The domain of a slot's key (it stays in C while the slot is empty)."""
        lib.akvm_iotlb_info(self._table, slot, self._info)
        return self._info.did

    def lookup(self, did: int, iova: int) -> IotlbEntry | Negative | None:
        slot = lib.akvm_iotlb_lookup(self._table, did, iova)
        if slot < 0:
            self.stats(did).misses += 1
            return None
        self.stats(did).hits += 1
        return self._value(slot)

    def insert(self, did: int, iova: int, shift: int, entry: IotlbEntry | Negative) -> None:
        victim = lib.akvm_iotlb_victim(self._table)
        victim_did = self._did(victim) if victim >= 0 else None
        slot = lib.akvm_iotlb_insert(self._table, did, iova, shift, self._evicted)
        if slot < 0:
            raise ValueError(f"IOTLB: no {shift}-bit pages")
        if self._evicted[0] >= 0:
            self.stats(victim_did).evictions += 1
        self._keys[slot] = (did, shift, iova >> shift)
        self._values[slot] = entry
        self._stamps[slot] = lib.akvm_iotlb_stamp(self._table, slot)
        if isinstance(entry, IotlbEntry):               # what C translates from (vtdfast.c)
            leaf = entry.leaf
            lib.akvm_iotlb_set_leaf(self._table, slot, leaf.frame,
                                    (lib.AKVM_IOTLB_R if leaf.read else 0) |
                                    (lib.AKVM_IOTLB_W if leaf.write else 0))
            lib.akvm_iotlb_set_origin(self._table, slot, entry.sid, leaf.pte_address)

    def entries(self) -> list[tuple[tuple[int, int, int], IotlbEntry | Negative]]:
        n = lib.akvm_iotlb_order(self._table, self._slots, self.capacity)
        slots = list(self._slots[0:n])
        return [(self._keys[i], value) for i in slots for value in (self._value(i),)]

    def _invalidate(self, granularity: int, did: int = 0, address: int = 0, mask: int = 0) -> int:
        n = lib.akvm_iotlb_invalidate(self._table, granularity, did, address, mask,
                                      self._slots, self.capacity)
        return self.drop_slots(n)

    @property
    def native(self):
        """(the C table, a buffer of `capacity` slot numbers) for C code that
        invalidates (iommu/qi.c); it must then call drop_slots()."""
        return self._table, self._slots

    def drop_slots(self, n: int) -> int:
        """Forget the contents of the n slots C emptied (listed in the buffer)."""
        for i in self._slots[0:n]:
            self.stats(self._did(i)).invalidated += 1
            self._keys[i] = self._values[i] = None
            self._stamps[i] = 0
        return n

    def invalidate_all(self) -> int:
        return self._invalidate(lib.AKVM_IOTLB_GLOBAL)

    def invalidate_domain(self, did: int) -> int:
        return self._invalidate(lib.AKVM_IOTLB_DOMAIN, did)

    def invalidate_pages(self, did: int, address: int, address_mask: int) -> int:
        """Page-selective: every entry of `did` overlapping the 2^AM naturally
        aligned pages containing `address` (large pages included)."""
        return self._invalidate(lib.AKVM_IOTLB_PAGE, did, address, address_mask)
