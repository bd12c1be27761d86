"""Primary fault logging: fault recording registers (reason, source id, address, type),
FSTS.PPF/PFO/FRI, write-1-to-clear, the fault event MSI (masked, pending, unmasked), FPD."""
import pytest

from akvm.base.dma import DmaError
from akvm.iommu.faults import FSTS_IQE, FSTS_PFO, FSTS_PPF
from akvm.iommu.translate import FR_CONTEXT_NOT_PRESENT, FR_READ, FR_WRITE
from akvm.iommu.vtd import FEADDR, FECTL, FEDATA, FEUADDR, FRCD, FSTS
from tests.unit.vtd_tables import R, SID, SID2, Rig

MSI_ADDR, MSI_DATA = 0xFEE0_0000, 0x41


def record(rig, i):
    return rig.r64(FRCD + 16 * i), rig.r64(FRCD + 16 * i + 8)


def fsts(rig):
    return rig.r32(FSTS)


def fault(rig, iova, write=False, sid=SID):
    with pytest.raises(DmaError):
        if write:
            rig.dma(sid).write(iova, b"x")
        else:
            rig.dma(sid).read(iova, 1)


@pytest.fixture
def rig():
    r = Rig(fault_records=4)
    r.enable()
    r.table = r.page()
    r.set_context(SID, table=r.table, did=3)
    r.map(r.table, 0x1000, 0xA000, perms=R)
    r.w32(FEDATA, MSI_DATA)
    r.w32(FEADDR, MSI_ADDR)
    r.w32(FEUADDR, 0)
    return r


def test_a_fault_is_recorded_with_reason_source_address_and_type(rig):
    fault(rig, 0x1234, write=True)
    lo, hi = record(rig, 0)
    assert lo == 0x1000                                    # FI: the page address
    assert hi >> 63 == 1                                   # F
    assert (hi >> 62) & 1 == 0                             # T: a write
    assert (hi >> 32) & 0xFF == FR_WRITE
    assert hi & 0xFFFF == SID
    assert fsts(rig) & FSTS_PPF and (fsts(rig) >> 8) & 0xFF == 0
    fault(rig, 0x5_0000)
    lo, hi = record(rig, 1)
    assert lo == 0x5_0000 and (hi >> 62) & 1 == 1 and (hi >> 32) & 0xFF == FR_READ


def test_clearing_f_clears_ppf_and_moves_fri(rig):
    fault(rig, 0x2000)
    fault(rig, 0x3000)
    rig.w64(FRCD + 8, 1 << 63)                             # service record 0
    assert fsts(rig) & FSTS_PPF and (fsts(rig) >> 8) & 0xFF == 1
    assert record(rig, 0)[1] >> 63 == 0
    rig.w32(FRCD + 16 + 12, 1 << 31)                       # record 1, as a dword write
    assert not fsts(rig) & FSTS_PPF


def test_records_are_read_only_except_f(rig):
    fault(rig, 0x2000)
    before = record(rig, 0)
    rig.w64(FRCD, 0xFFFF_FFFF_FFFF_F000)
    rig.w64(FRCD + 8, 0x7FFF_FFFF_FFFF_FFFF)
    assert record(rig, 0) == before


def test_overflow_sets_pfo_and_loses_the_fault(rig):
    for i in range(4):
        fault(rig, 0x10_0000 + i * 0x1000)
    assert not fsts(rig) & FSTS_PFO
    fault(rig, 0x20_0000)
    assert fsts(rig) & FSTS_PFO
    assert all(record(rig, i)[0] != 0x20_0000 for i in range(4))
    s = rig.iommu.stats()["faults"]
    assert (s["recorded"], s["overflowed"]) == (4, 1)
    rig.w32(FSTS, FSTS_PFO)                                # RW1C
    assert not fsts(rig) & FSTS_PFO and fsts(rig) & FSTS_PPF
    rig.w64(FRCD + 8, 1 << 63)                             # free record 0: the ring goes on
    fault(rig, 0x30_0000)
    assert record(rig, 0)[0] == 0x30_0000


def test_fault_event_interrupt(rig):
    rig.w32(FECTL, 0)                                      # unmask
    fault(rig, 0x2000)
    assert rig.msis == [(MSI_ADDR, MSI_DATA)]
    assert not rig.r32(FECTL) & 1 << 30                    # IP cleared once sent
    fault(rig, 0x3000)                                     # faults still pending: no new event
    assert len(rig.msis) == 1
    for i in range(2):
        rig.w64(FRCD + 16 * i + 8, 1 << 63)
    fault(rig, 0x4000)
    assert len(rig.msis) == 2


def test_masked_fault_event_stays_pending_until_unmasked(rig):
    fault(rig, 0x2000)                                     # FECTL.IM is set at reset
    assert rig.msis == [] and rig.r32(FECTL) == 1 << 31 | 1 << 30
    rig.w32(FECTL, 0)
    assert rig.msis == [(MSI_ADDR, MSI_DATA)] and rig.r32(FECTL) == 0


def test_servicing_a_masked_fault_drops_the_pending_event(rig):
    fault(rig, 0x2000)
    rig.w64(FRCD + 8, 1 << 63)
    assert rig.r32(FECTL) == 1 << 31                       # IP cleared with the status
    rig.w32(FECTL, 0)
    assert rig.msis == []


def test_fpd_suppresses_recording_but_not_the_failure(rig):
    t = rig.page()
    rig.set_context(SID2, table=t, did=4, fpd=True)
    fault(rig, 0x1000, sid=SID2)
    assert not fsts(rig) & FSTS_PPF
    s = rig.iommu.stats()["faults"]
    assert s["suppressed"] == 1 and s["recorded"] == 0 and s["by_reason"] == {FR_READ: 1}


def test_fpd_in_a_not_present_context_entry_is_honoured(rig):
    """Akaros clears P and leaves FPD set when it takes a device away."""
    rig.set_context(SID2, present=False, fpd=True)
    fault(rig, 0x1000, sid=SID2)
    assert not fsts(rig) & FSTS_PPF
    rig.set_context(SID2, present=False, fpd=False)
    fault(rig, 0x1000, sid=SID2)
    assert (record(rig, 0)[1] >> 32) & 0xFF == FR_CONTEXT_NOT_PRESENT


def test_queue_error_raises_the_fault_event_too(rig):
    rig.w32(FECTL, 0)
    rig.iommu.faults.set_status(FSTS_IQE)
    assert rig.msis == [(MSI_ADDR, MSI_DATA)] and fsts(rig) & FSTS_IQE


def test_an_msi_the_host_refuses_is_counted_not_raised():
    def refuse(address, data):
        raise OSError(22, "Invalid argument")
    from akvm.iommu.vtd import VtdIommu
    from akvm.base.memory import GuestMemory
    unit = VtdIommu(GuestMemory.from_bytearray(1 << 20), refuse)
    unit.write(FECTL, 4, 0)
    unit.faults.record(SID, FR_READ, 0x1000, False)
    assert unit.fault_event.failed == 1 and unit.fault_event.sent == 0
