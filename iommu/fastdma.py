"""A device's translated DMA done in C from the unit's IOTLB (iommu/vtdfast.c).

A device engine in C (devices/ioat.c) asks its TranslatedDma for a
translator before each round; while the function's context is translated
and the unit can serve it from C (its IOTLB and lock in C, no coherence
checker), it gets a struct akvm_dma_xlate (vmm/base/dmaxlate.h) that
translates IOTLB hits with the unit's lock held. A miss, a cached fault, an
access the page does not permit, or a context that changed since (the
context cache's epoch moved) is the engine's cue to let Python do that
access through TranslatedDma, which walks, fills the IOTLB or records the
fault. C's hits join the unit's statistics when the device says it is done.
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

    def get(self):
        """The translator for the context as it is now, or None. While the context
        cache's epoch stays, the last answer stands, without the lock (C's lock
        checks the epoch again under the lock)."""
        epoch = self.iommu.context_cache.epoch
        if epoch[0] == self._epoch:
            return self._answer
        with self.iommu.lock:
            self.collect()
            self._epoch = epoch[0]
            ctx = self.iommu.fast_context(self.requester_id)
            self._answer = None
            if ctx is not None:
                self.fast.did, self.fast.limit = ctx
                self.fast.seen = self._epoch
                self._answer = self.xlate
            return self._answer

    def done(self) -> None:
        """After a use: the hits go to the unit's statistics now and then (and at
        VtdIommu.stats())."""
        if self.fast.hits >= COLLECT_EVERY:
            with self.iommu.lock:
                self.collect()

    def collect(self) -> None:
        """C's hits into the statistics (the unit's lock held)."""
        hits, self.fast.hits = self.fast.hits, 0
        if hits:
            self.iommu.translations += hits
            self.iommu.iotlb.stats(self.fast.did).hits += hits
