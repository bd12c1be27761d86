"""The context cache and the IOTLB: hits, misses, bounded size with LRU eviction,
per-domain statistics, stale translations served until software invalidates, and the
granularities of invalidation (global, domain, page with address masks, device with
function masks), driven through the register interface as a guest would."""
import pytest

from akvm.iommu.cache import ContextCache, Iotlb, IotlbEntry
from akvm.iommu.translate import FR_CONTEXT_NOT_PRESENT, FR_READ, ContextEntry, Leaf, TranslationFault
from akvm.iommu.vtd import CCMD
from tests.unit.vtd_tables import GiB, MiB, PAGE, R, SID, SID2, W, Rig, sid_of


def setup(rig, did=7, sid=SID):
    table = rig.page()
    rig.set_context(sid, table=table, did=did)
    return table


def gpa(rig, iova, sid=SID, write=False):
    return rig.iommu.translate(sid, iova, write)[0]


def domain(rig, did):
    return rig.iommu.stats()["iotlb"][did]


@pytest.fixture
def rig():
    r = Rig()
    r.enable()
    return r


def test_hit_after_miss_and_per_domain_stats(rig):
    table = setup(rig, did=7)
    rig.map(table, 0x1000, 0xA000)
    for _ in range(3):
        assert gpa(rig, 0x1000) == 0xA000
    assert domain(rig, 7) == dict(hits=2, misses=1, evictions=0, invalidated=0)
    cc = rig.iommu.stats()["context_cache"]
    assert (cc["hits"], cc["misses"]) == (2, 1)


def test_stale_translation_is_used_until_page_invalidation(rig):
    table = setup(rig, did=7)
    old, new = rig.data_page(0x01), rig.data_page(0x02)
    pte = rig.map(table, 0x1000, old)
    assert rig.dma().read(0x1000, 1) == b"\x01"
    rig.mem.write_u64(pte, new | R | W)               # remap without invalidating
    assert rig.dma().read(0x1000, 1) == b"\x01"       # the IOTLB still says `old`
    rig.flush_page(7, 0x1000)
    assert rig.dma().read(0x1000, 1) == b"\x02"


def test_unmapped_page_stays_usable_until_invalidated(rig):
    """The shootdown bug: the page-table entry is gone, the device still reaches the page."""
    table = setup(rig, did=7)
    page = rig.data_page(0x33)
    pte = rig.map(table, 0x1000, page)
    rig.dma().read(0x1000, 1)
    rig.mem.write_u64(pte, 0)
    assert rig.dma().read(0x1000, 1) == b"\x33"
    rig.flush_domain(7)
    with pytest.raises(TranslationFault) as e:
        rig.iommu.translate(SID, 0x1000, False)
    assert e.value.reason == FR_READ


def two_domains_remapped(rig):
    """Domains 1 (SID) and 2 (SID2) map 0x1000, are cached, then remapped without a flush."""
    t1 = setup(rig, did=1, sid=SID)
    t2 = setup(rig, did=2, sid=SID2)
    p1, p2 = rig.map(t1, 0x1000, 0xA000), rig.map(t2, 0x1000, 0xB000)
    gpa(rig, 0x1000, SID), gpa(rig, 0x1000, SID2)
    rig.mem.write_u64(p1, 0xC000 | R | W)
    rig.mem.write_u64(p2, 0xD000 | R | W)


def test_domain_invalidation_spares_other_domains(rig):
    two_domains_remapped(rig)
    rig.flush_domain(1)
    assert gpa(rig, 0x1000, SID) == 0xC000
    assert gpa(rig, 0x1000, SID2) == 0xB000             # domain 2 still cached
    assert domain(rig, 1)["invalidated"] == 1 and domain(rig, 2)["invalidated"] == 0


def test_global_invalidation(rig):
    two_domains_remapped(rig)
    rig.w64(0xF8, 1 << 63 | 1 << 60)
    assert (gpa(rig, 0x1000, SID), gpa(rig, 0x1000, SID2)) == (0xC000, 0xD000)


@pytest.mark.parametrize("am,iova,gone", [
    (0, 0x5000, {0x5000}),
    (1, 0x5000, {0x4000, 0x5000}),            # 2 pages, naturally aligned: 0x4000-0x5FFF
    (2, 0x6000, {0x4000, 0x5000, 0x6000, 0x7000}),
    (9, 0x0, set(range(0x0, 0x8000, 0x1000))),
])
def test_page_selective_invalidation_with_address_mask(rig, am, iova, gone):
    table = setup(rig, did=3)
    ptes = {a: rig.map(table, a, 0x10_0000 + a) for a in range(0, 0x8000, PAGE)}
    for a in ptes:
        gpa(rig, a)
    for a, pte in ptes.items():
        rig.mem.write_u64(pte, 0x20_0000 + a | R | W)
    rig.flush_page(3, iova, am)
    for a in ptes:
        assert gpa(rig, a) == (0x20_0000 if a in gone else 0x10_0000) + a, hex(a)


def test_page_invalidation_drops_an_overlapping_large_page(rig):
    table = setup(rig, did=3)
    pde = rig.map(table, 0x20_0000, 0x40_0000, size=2 * MiB)
    assert gpa(rig, 0x21_0000) == 0x41_0000
    rig.mem.write_u64(pde, 0x60_0000 | R | W | 1 << 7)
    rig.flush_page(3, 0x2F_F000)                     # one 4 KiB page inside the 2 MiB page
    assert gpa(rig, 0x21_0000) == 0x61_0000


def test_page_invalidation_with_mask_above_mamv_is_refused(rig):
    rig.w64(0xF0, 19)                                 # AM 19 > MAMV 18
    rig.w64(0xF8, 1 << 63 | 3 << 60 | 3 << 32)
    value = rig.r64(0xF8)
    assert not value & 1 << 63 and (value >> 57) & 3 == 0   # IAIG 0: not done


def test_page_selective_without_psi_is_done_by_domain():
    rig = Rig(psi=False)
    rig.enable()
    assert not rig.r64(0x08) & 1 << 39
    table = setup(rig, did=3)
    pte = rig.map(table, 0x9000, 0xA000)
    gpa(rig, 0x9000)
    rig.mem.write_u64(pte, 0xB000 | R | W)
    rig.flush_page(3, 0x1000)
    assert (rig.r64(0xF8) >> 57) & 3 == 2              # IAIG: domain-selective
    assert gpa(rig, 0x9000) == 0xB000


def test_iotlb_is_bounded_and_evicts_least_recently_used():
    rig = Rig(iotlb_entries=4)
    rig.enable()
    table = setup(rig, did=9)
    ptes = [rig.map(table, a * PAGE, 0x10_0000 + a * PAGE) for a in range(6)]
    for a in range(4):
        gpa(rig, a * PAGE)
    gpa(rig, 0)                                       # 0 is now the most recently used
    gpa(rig, 4 * PAGE)                                # evicts page 1
    for a, pte in enumerate(ptes):
        rig.mem.write_u64(pte, 0x20_0000 + a * PAGE | R | W)
    assert gpa(rig, 0) == 0x10_0000                   # still cached (stale)
    assert gpa(rig, PAGE) == 0x20_1000                # evicted: walked again
    assert domain(rig, 9)["evictions"] >= 1
    assert len(rig.iommu.iotlb) == 4


def test_context_cache_serves_stale_entries_until_invalidated(rig):
    t1, t2 = rig.page(), rig.page()
    rig.map(t1, 0x1000, 0xA000)
    rig.map(t2, 0x1000, 0xB000)
    rig.set_context(SID, table=t1, did=1)
    assert gpa(rig, 0x1000) == 0xA000
    rig.set_context(SID, table=t2, did=2)             # moved to another domain, no flush
    assert gpa(rig, 0x1000) == 0xA000
    rig.w64(CCMD, 1 << 63 | 3 << 61 | SID << 16 | 1)  # device-selective, old domain 1
    assert (rig.r64(CCMD) >> 59) & 3 == 3 and not rig.r64(CCMD) & 1 << 63
    assert gpa(rig, 0x1000) == 0xB000


def test_context_invalidation_by_domain_and_function_mask():
    cache = ContextCache()
    for fn in range(8):
        cache.insert(sid_of(0, 3, fn), ContextEntry(sid_of(0, 3, fn), 5, 0, False, 0, 4, 48))
    cache.insert(sid_of(0, 4, 0), ContextEntry(sid_of(0, 4, 0), 6, 0, False, 0, 4, 48))
    assert cache.invalidate_device(5, sid_of(0, 3, 1), 0) == 1
    # FM 2 masks function bits 2:1: functions 0, 2, 4, 6
    assert cache.invalidate_device(5, sid_of(0, 3, 2), 2) == 4
    assert cache.invalidate_device(6, sid_of(0, 3, 3), 3) == 0      # wrong domain
    assert cache.invalidate_domain(5) == 3                         # functions 3, 5, 7
    assert len(cache) == 1 and cache.invalidate_all() == 1


def test_context_cache_is_bounded():
    cache = ContextCache(capacity=2)
    for sid in range(3):
        cache.insert(sid, ContextEntry(sid, 1, 0, False, 0, 4, 48))
    assert len(cache) == 2 and cache.evictions == 1 and cache.lookup(0) is None


def test_iotlb_keys_large_pages_by_their_size():
    tlb = Iotlb()
    tlb.insert(1, GiB, 30, IotlbEntry(1, Leaf(GiB, 0, 30, True, True, 0), SID))
    assert tlb.lookup(1, GiB + 0x1234_5678).leaf.shift == 30
    assert tlb.lookup(2, GiB) is None                               # other domain
    assert tlb.invalidate_pages(1, 2 * GiB, 0) == 0                 # outside the page
    assert tlb.invalidate_pages(1, GiB + 0x3FFF_F000, 0) == 1


def test_caching_mode_caches_not_present_entries():
    rig = Rig(cm=True)
    rig.enable()
    assert rig.r64(0x08) & 1 << 7
    # context not present: cached under domain 0 until a context invalidation
    rig.set_context(SID2, tt=2)                        # bus 0 has a context table
    with pytest.raises(TranslationFault) as e:
        rig.iommu.translate(SID, 0x1000, False)
    assert e.value.reason == FR_CONTEXT_NOT_PRESENT
    table = setup(rig, did=4)
    with pytest.raises(TranslationFault):
        rig.iommu.translate(SID, 0x1000, False)
    rig.w64(CCMD, 1 << 63 | 3 << 61 | SID << 16 | 0)   # device-selective, domain 0
    with pytest.raises(TranslationFault) as e:
        rig.iommu.translate(SID, 0x1000, False)
    assert e.value.reason == FR_READ                   # now the page is what is missing
    rig.map(table, 0x1000, 0xA000)
    with pytest.raises(TranslationFault):              # ... and that is cached too
        rig.iommu.translate(SID, 0x1000, False)
    rig.flush_page(4, 0x1000)
    assert gpa(rig, 0x1000) == 0xA000


def test_without_caching_mode_not_present_entries_are_not_cached(rig):
    table = setup(rig, did=4)
    with pytest.raises(TranslationFault):
        rig.iommu.translate(SID, 0x1000, False)
    rig.map(table, 0x1000, 0xA000)
    assert gpa(rig, 0x1000) == 0xA000
