"""The IOTLB coherence checker (`--iommu vtd,check=on|stop`).

On every context-cache or IOTLB hit it re-reads the guest's tables and
compares them with what the cache is about to serve. When they differ,
software changed a context or paging entry that the hardware had cached
and has not invalidated it (yet): the DMA really uses the stale
translation, as hardware would, and the checker says so in one log line:

    akvm: iommu: check: stale IOTLB entry #1: domain 7 device 00:03.0 iova 0x200000:
    cached frame 0x5123000 (rw), tables now map frame 0x5456000 (rw)

Each stale entry is reported once (later hits only count). With
check=stop the first report also calls `on_stale(message)`, which the
machine uses to stop the VM there, so the guest state is that of the bug.

The missing flush it finds is the bug class of Akaros's commit "proc:
iommu: flush the iotlb during shootdowns". A flush that is merely late (a
DMA in the window between the page-table update and the invalidation) is
reported too: that DMA did use the old page.
"""
from __future__ import annotations

import logging
from typing import Callable

from akvm.iommu.cache import IotlbEntry
from akvm.iommu.translate import ContextEntry, TranslationFault, context_entry, format_sid, walk

log = logging.getLogger("akvm.iommu")

MAX_KEPT_REPORTS = 32


def _perms(read: bool, write: bool) -> str:
    return ("r" if read else "-") + ("w" if write else "-")


class CoherenceChecker:
    def __init__(self, iommu, *, stop: bool = False,
                 on_stale: Callable[[str], None] | None = None):
        self.iommu = iommu
        self.stop = stop
        self.on_stale = on_stale
        self.checks = 0
        self.stale_iotlb_hits = 0
        self.stale_context_hits = 0
        self.reports: list[str] = []        # the last MAX_KEPT_REPORTS report lines
        self.reported = 0
        self._reported_contexts: set[tuple[int, int, int]] = set()

    def _report(self, message: str) -> None:
        self.reported += 1
        log.warning("check: %s", message)
        self.reports.append(message)
        del self.reports[:-MAX_KEPT_REPORTS]
        if self.stop and self.on_stale is not None:
            self.on_stale(message)

    def context_hit(self, sid: int, cached: ContextEntry) -> None:
        iommu = self.iommu
        self.checks += 1
        try:
            fresh = context_entry(iommu.memory, iommu.root, sid, 0, iommu.params)
        except TranslationFault as f:
            fresh, now = None, f"the tables now fault: {f}"
        if fresh is not None:
            if (fresh.lo, fresh.hi) == (cached.lo, cached.hi):
                return
            now = (f"the tables now say domain {fresh.did} tt {fresh.tt} "
                   f"table {fresh.slptptr:#x}")
        self.stale_context_hits += 1
        key = (sid, cached.lo, cached.hi)
        if key in self._reported_contexts:
            return
        self._reported_contexts.add(key)
        self._report(f"stale context entry #{self.reported + 1}: device "
                     f"{format_sid(sid)}: cached domain {cached.did} tt {cached.tt} table "
                     f"{cached.slptptr:#x}, {now} (no context-cache invalidation since)")

    def iotlb_hit(self, ctx: ContextEntry, address: int, entry: IotlbEntry) -> None:
        iommu = self.iommu
        self.checks += 1
        old = entry.leaf
        old_frame = old.frame + (address - old.iova)
        try:
            new = walk(iommu.memory, ctx, address, False, iommu.params)
        except TranslationFault as f:
            new, now = None, f"the tables now fault ({f})"
        if new is not None:
            new_frame = new.frame + (address - new.iova)
            if new_frame == old_frame and (new.read, new.write) == (old.read, old.write):
                return
            now = f"tables now map frame {new_frame & ~0xFFF:#x} ({_perms(new.read, new.write)})"
        self.stale_iotlb_hits += 1
        if entry.reported:
            return
        entry.reported = True
        self._report(f"stale IOTLB entry #{self.reported + 1}: domain {entry.did} "
                     f"device {format_sid(ctx.sid)} iova {address & ~0xFFF:#x}: cached frame "
                     f"{old_frame & ~0xFFF:#x} ({_perms(old.read, old.write)}), {now}")
