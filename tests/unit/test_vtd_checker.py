"""The IOTLB coherence checker: a missing flush after a remap or an unmap is reported (one
line: domain, device, address, old and new frame) and counted, once per stale entry; the
stale translation is still what the DMA uses; check=stop calls the machine's stop hook;
nothing is reported when software invalidates properly."""
import logging

import pytest

from akvm.base.dma import DmaError
from akvm.iommu.vtd import CCMD
from tests.unit.vtd_tables import MiB, R, SID, W, Rig


def setup(check="on"):
    rig = Rig(check=check)
    rig.enable()
    rig.table = rig.page()
    rig.set_context(SID, table=rig.table, did=7)
    rig.old, rig.new = rig.data_page(0x0D), rig.data_page(0x0E)
    rig.pte = rig.map(rig.table, 0x20_0000, rig.old)
    assert rig.dma().read(0x20_0000, 1) == b"\x0D"
    return rig


def checker_stats(rig):
    return rig.iommu.stats()["checker"]


def test_missing_flush_after_a_remap_is_reported(caplog):
    rig = setup()
    rig.mem.write_u64(rig.pte, rig.new | R | W)            # remap, forget the invalidation
    with caplog.at_level(logging.WARNING, logger="akvm.iommu"):
        assert rig.dma().read(0x20_0000, 1) == b"\x0D"     # the stale page, as on hardware
        rig.dma().read(0x20_0004, 1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1                                  # reported once per entry
    line = lines[0]
    assert line.startswith("check: stale IOTLB entry #1: domain 7 device 00:03.0 "
                           "iova 0x200000:")
    assert f"cached frame {rig.old:#x} (rw)" in line and f"map frame {rig.new:#x} (rw)" in line
    # two DMAs: two context-cache hits and two IOTLB hits checked
    assert checker_stats(rig) == dict(checks=4, reports=1, stale_iotlb_hits=2,
                                      stale_context_hits=0)
    rig.flush_page(7, 0x20_0000)
    assert rig.dma().read(0x20_0000, 1) == b"\x0E"
    assert checker_stats(rig)["reports"] == 1


def test_missing_flush_after_an_unmap_is_reported():
    rig = setup()
    rig.mem.write_u64(rig.pte, 0)
    assert rig.dma().read(0x20_0000, 1) == b"\x0D"
    assert "the tables now fault (read not permitted" in rig.iommu.checker.reports[0]


def test_reduced_permissions_without_flush_are_reported():
    rig = setup()
    rig.mem.write_u64(rig.pte, rig.old | R)
    rig.dma().write(0x20_0000, b"!")                       # still writable through the IOTLB
    assert "(rw), tables now map frame" in rig.iommu.checker.reports[0]
    assert rig.iommu.checker.reports[0].endswith("(r-)")


def test_proper_invalidation_reports_nothing():
    rig = setup()
    rig.mem.write_u64(rig.pte, rig.new | R | W)
    rig.flush_domain(7)
    for _ in range(3):
        assert rig.dma().read(0x20_0000, 1) == b"\x0E"
    assert checker_stats(rig)["reports"] == 0 and checker_stats(rig)["checks"] >= 2


def test_large_page_hits_are_checked_per_address():
    rig = setup()
    pde = rig.map(rig.table, 0x4000_0000, 0x60_0000, size=2 * MiB)
    rig.iommu.translate(SID, 0x4000_0000, False)
    rig.mem.write_u64(pde, 0x80_0000 | R | W | 1 << 7)
    rig.iommu.translate(SID, 0x4012_3000, False)
    assert "iova 0x40123000: cached frame 0x723000 (rw), tables now map frame 0x923000" in \
        rig.iommu.checker.reports[0]


def test_stale_context_entry_is_reported():
    rig = setup()
    other = rig.page()
    rig.set_context(SID, table=other, did=8)               # moved, no context invalidation
    rig.dma().read(0x20_0000, 1)
    report = rig.iommu.checker.reports[0]
    assert report.startswith("stale context entry #1: device 00:03.0: cached "
                             "domain 7")
    assert f"now say domain 8 tt 0 table {other:#x}" in report
    rig.w64(CCMD, 1 << 63 | 1 << 61)
    rig.flush_domain(7)
    with pytest.raises(DmaError):
        rig.dma().read(0x20_0000, 1)                       # the new domain maps nothing
    assert checker_stats(rig)["stale_context_hits"] == 1


def test_check_stop_calls_the_stop_hook():
    rig = setup("stop")
    rig.mem.write_u64(rig.pte, rig.new | R | W)
    rig.dma().read(0x20_0000, 1)
    assert len(rig.stale) == 1 and "stale IOTLB entry" in rig.stale[0]


def test_check_off_has_no_checker():
    rig = Rig()
    assert rig.iommu.checker is None and "checker" not in rig.iommu.stats()
