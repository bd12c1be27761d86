"""A device's translated DMA done in C from the unit's IOTLB (iommu/vtdfast.c).

A device engine in C (devices/ioat.c) asks its TranslatedDma for a
translator before each round; while the function's context is translated
and the unit can serve it from C (its IOTLB and lock in C, no coherence
checker), it gets a struct akvm_dma_xlate (vmm/base/dmaxlate.h) that
translates with the unit's lock held: IOTLB hits, and misses, which C walks
from the context the context cache holds (given here) and puts in the
IOTLB as VtdIommu._translate would. A walk that faults, a cached fault, an
access the page does not permit, or a context that changed since (the
context cache's epoch moved) is the engine's cue to let Python do that
access through TranslatedDma, which walks again and records the fault. C's
hits, misses and evictions join the unit's statistics when the device says
it is done.
"""
from __future__ import annotations

from akvm.base.native import ffi, lib

COLLECT_EVERY = 1 << 16


class FastTranslator:
    def __init__(self, iommu, requester_id: int):
        self.iommu = iommu
        self.requester_id = requester_id
        self.fast = ffi.new("struct akvm_vtd_fast *")
        self.fast.door = iommu.doorbell.handle
        self.fast.tlb = iommu.iotlb.native[0]
        self.fast.epoch = iommu.context_cache.epoch
        self.xlate = ffi.new("struct akvm_dma_xlate *")
        self.xlate.lock = ffi.addressof(lib, "akvm_vtd_fast_lock")
        self.xlate.unlock = ffi.addressof(lib, "akvm_vtd_fast_unlock")
        self.xlate.translate = ffi.addressof(lib, "akvm_vtd_fast_translate")
        self.xlate.opaque = self.fast
        self._epoch = None               # the context cache's epoch of the last answer
        self._answer = None
        iommu.fast_translators.append(self)

    def get(self, passthrough: bool = False):
        """The translator for the context as it is now, or None; with passthrough, one
        for a context that passes DMA through (or translation off) as well, which C
        must then use for every access, since only its lock sees the context change.
        While the context cache's epoch stays, the last translator stands, without
        the lock (C's lock checks the epoch again under the lock); no translator is
        asked again each time, since a context the unit could not find (not cached)
        may appear without the epoch moving."""
        epoch = self.iommu.context_cache.epoch
        if epoch[0] != self._epoch:
            self._refresh(epoch)
        return self._answer if passthrough or not self.fast.identity else None

    def _refresh(self, epoch) -> None:
        with self.iommu.lock:
            self.collect()
            self._epoch = epoch[0]
            ctx = self.iommu.fast_context(self.requester_id)
            self._answer = None
            f = self.fast
            f.identity = 0
            if isinstance(ctx, int):                    # passed through below that bound
                f.identity, f.limit, f.seen = 1, min(ctx, (1 << 64) - 1), self._epoch
                self._answer = self.xlate
            elif ctx is not None:
                params = self.iommu.params
                f.did, f.limit, f.sid = ctx.did, 1 << ctx.width, self.requester_id
                # walks in C for what C's walker takes (translate.walk_native's test)
                ok = 0 <= ctx.slptptr < 1 << 64 and 1 <= ctx.levels <= lib.AKVM_SL_MAX_LEVELS
                f.slptptr = ctx.slptptr if ok else 0
                f.levels = ctx.levels if ok else 0
                f.width, f.haw = min(ctx.width, 64), min(params.haw, 64)
                f.large_pages = params.large_pages & 3
                f.seen = self._epoch
                self._answer = self.xlate
            if self._answer is None:
                self._epoch = None

    def done(self) -> None:
        """After a use: the hits go to the unit's statistics now and then (and at
        VtdIommu.stats())."""
        if self.fast.hits + self.fast.misses >= COLLECT_EVERY:
            with self.iommu.lock:
                self.collect()

    def collect(self) -> None:
        """C's hits, misses and evictions into the statistics (the unit's lock held)."""
        f = self.fast
        hits, misses = f.hits, f.misses
        f.hits = f.misses = 0
        if hits or misses:
            self.iommu.translations += hits + misses
            stats = self.iommu.iotlb.stats(f.did)
            stats.hits += hits
            stats.misses += misses
        for e in f.evicted:
            if e.count:
                self.iommu.iotlb.stats(e.did).evictions += e.count
                e.count = 0
