"""PyIotlb: the IOTLB's table written in Python, the twin iommu/iotlb.c is tested against."""
from __future__ import annotations

from collections import OrderedDict

from akvm.iommu.cache import LARGE_PAGE_SHIFTS, DomainStats, IotlbEntry, Negative, _PerDomain


class PyIotlb(_PerDomain):
    """(domain, page) -> translation, for 4 KiB, 2 MiB and 1 GiB pages; bounded LRU.

    Statistics are kept per domain id: hits, misses, evictions, invalidated.
    The Python twin of Iotlb, whose table is in C.
    """

    def __init__(self, capacity: int = 512):
        self.capacity = max(1, capacity)
        # key (did, shift, iova >> shift)
        self._entries: OrderedDict[tuple[int, int, int], IotlbEntry | Negative] = OrderedDict()
        self._by_domain: dict[int, dict[tuple[int, int, int], None]] = {}
        self._shift_count = {s: 0 for s in LARGE_PAGE_SHIFTS}
        self.domains: dict[int, DomainStats] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, did: int, iova: int) -> IotlbEntry | Negative | None:
        entries = self._entries
        for shift in LARGE_PAGE_SHIFTS:
            if self._shift_count[shift]:
                key = (did, shift, iova >> shift)
                entry = entries.get(key)
                if entry is not None:
                    entries.move_to_end(key)
                    self.stats(did).hits += 1
                    return entry
        self.stats(did).misses += 1
        return None

    def insert(self, did: int, iova: int, shift: int, entry: IotlbEntry | Negative) -> None:
        key = (did, shift, iova >> shift)
        if key not in self._entries:
            self._shift_count[shift] += 1
            self._by_domain.setdefault(did, {})[key] = None
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            victim, _ = self._entries.popitem(last=False)
            self._forget(victim)
            self.stats(victim[0]).evictions += 1

    def _forget(self, key: tuple[int, int, int]) -> None:
        self._shift_count[key[1]] -= 1
        keys = self._by_domain.get(key[0])
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._by_domain[key[0]]

    def _remove(self, keys) -> int:
        n = 0
        for key in list(keys):
            if self._entries.pop(key, None) is not None:
                self._forget(key)
                self.stats(key[0]).invalidated += 1
                n += 1
        return n

    def entries(self) -> list[tuple[tuple[int, int, int], IotlbEntry | Negative]]:
        return list(self._entries.items())

    def invalidate_all(self) -> int:
        return self._remove(list(self._entries))

    def invalidate_domain(self, did: int) -> int:
        return self._remove(list(self._by_domain.get(did, ())))

    def invalidate_pages(self, did: int, address: int, address_mask: int) -> int:
        """Page-selective: every entry of `did` overlapping the 2^AM naturally
        aligned pages containing `address` (large pages included)."""
        size = 1 << (12 + address_mask)
        start = address & ~(size - 1)
        end = start + size
        keys = self._by_domain.get(did)
        if not keys:
            return 0
        shifts = [s for s in LARGE_PAGE_SHIFTS if self._shift_count[s]]
        spans = [((start >> s), ((end - 1) >> s) + 1) for s in shifts]
        if sum(last - first for first, last in spans) <= len(keys):
            # Few pages to name: look each up (the common single-page case).
            victims = [k for s, (first, last) in zip(shifts, spans)
                       for k in ((did, s, i) for i in range(first, last)) if k in keys]
        else:
            victims = [k for k in keys if k[2] << k[1] < end and start < (k[2] + 1) << k[1]]
        return self._remove(victims)
