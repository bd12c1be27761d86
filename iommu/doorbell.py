"""Invalidation in C (iommu/vtddoor.c), and the unit's lock.

While queued invalidation is on and no queue error is pending, a guest's
IQT write is carried out in C, without entering Python, as far as qi.c owns
the descriptors (IOTLB, plain waits); while it is off, so are the IVA and
IOTLB registers (their writes, and the IOTLB register's reads). C and
akvm.iommu.vtd share one lock, a mutex in C: a QueueDoorbell is its VtdIommu's
`lock` (re-entrant, as the RLock it replaces). The outermost acquire catches up with what C did (IQH,
IQT, the IOTLB slots it emptied, the counts); the last release publishes
the queue's and the registers' state for C.
"""
from __future__ import annotations

from akvm.iommu.faults import FSTS_IQE
from akvm.iommu.invalidation import IQA_QS_MASK
from akvm.base.native import ffi, lib, native_slots


class QueueDoorbell:
    def __init__(self, iommu, iqt_gpa: int, iva_gpa: int):
        """For `iommu` (with the C IOTLB and RAM C can reach) whose IQT and
        IVA registers are at guest-physical `iqt_gpa` and `iva_gpa`."""
        self.iommu = iommu
        slots = native_slots(iommu.memory)
        table, removed = iommu.iotlb.native
        self.handle = ffi.gc(lib.akvm_vtd_door_new(
            iqt_gpa, iva_gpa, slots, len(slots), table, removed,
            iommu.iotlb.capacity, int(iommu.config.psi), iommu.config.mamv),
            lib.akvm_vtd_door_free)
        if self.handle == ffi.NULL:
            raise MemoryError("akvm_vtd_door_new")
        # C points into these: the door owns them for as long as C may use them.
        self._slots = slots
        self._tlb = (table, removed)
        self._queue = ffi.new("struct akvm_vtd_queue *")
        self._done = ffi.new("struct akvm_qi_result *")
        self._depth = 0             # changed only by the thread holding the mutex
        self._published = None

    def __enter__(self) -> "QueueDoorbell":
        dirty = lib.akvm_vtd_door_lock(self.handle)
        self._depth += 1
        if self._depth == 1 and dirty:
            try:
                self._catch_up()
            except BaseException:
                self._depth -= 1
                lib.akvm_vtd_door_unlock(self.handle)
                raise
        return self

    def __exit__(self, *exc) -> bool:
        try:
            if self._depth == 1:
                self._publish()
        finally:
            self._depth -= 1
            lib.akvm_vtd_door_unlock(self.handle)
        return False

    def _catch_up(self) -> None:
        q = self._queue
        lib.akvm_vtd_door_take(self.handle, q, self._done)
        iommu = self.iommu
        iommu.iqh = q.head << 4
        iommu.iqt = q.iqt
        iommu.iva = q.iva
        iommu.iotlb_reg = q.iotlb
        iommu.invalidator.count_native(self._done, register_iotlb=q.reg_iotlb)
        self._published = None      # C's state is not what Python last published

    def _publish(self) -> None:
        iommu = self.iommu
        slots = native_slots(iommu.memory)
        if slots is not None and slots is not self._slots:
            lib.akvm_vtd_door_set_slots(self.handle, slots, len(slots))   # RAM changed
            self._slots = slots
        armed = iommu.qi_enabled and not iommu.faults.status & FSTS_IQE
        # Register commands are refused while queued invalidation is on: Python's.
        regs_armed = not iommu.qi_enabled
        state = (armed, regs_armed, iommu.iqa, iommu.iqh, iommu.iqt, iommu.iva, iommu.iotlb_reg)
        if state == self._published:
            return
        q = self._queue
        q.armed = armed
        q.base = iommu.iqa & ~0xFFF
        q.entries = 256 << (iommu.iqa & IQA_QS_MASK)
        q.head = iommu.iqh >> 4
        q.iqt = iommu.iqt
        q.regs_armed = regs_armed
        q.iva = iommu.iva
        q.iotlb = iommu.iotlb_reg
        for g in range(4):
            q.reg_iotlb[g] = 0
        lib.akvm_vtd_door_publish(self.handle, q)
        self._published = state
