"""The IOTLB's table in C (iommu/iotlb.c, akvm.iommu.cache.Iotlb) against its
Python twin (PyIotlb): the same inserts, lookups and invalidations of every
granularity must give the same hits, evictions, contents, LRU order and
per-domain statistics."""
from hypothesis import given, settings, strategies as st

from akvm.iommu.cache import Iotlb
from tests.unit.pyiotlb import PyIotlb

DIDS = st.integers(1, 4)
# Addresses that collide a lot: a few 1 GiB regions, 2 MiB and 4 KiB steps in them.
IOVAS = st.builds(lambda g, m, p, o: g << 30 | m << 21 | p << 12 | o,
                  st.integers(0, 3), st.integers(0, 3), st.integers(0, 7), st.integers(0, 4095))

ops = st.lists(st.one_of(
    st.tuples(st.just("insert"), DIDS, IOVAS, st.sampled_from([12, 12, 12, 21, 30])),
    st.tuples(st.just("lookup"), DIDS, IOVAS),
    st.tuples(st.just("all")),
    st.tuples(st.just("domain"), DIDS),
    st.tuples(st.just("pages"), DIDS, IOVAS, st.sampled_from([0, 0, 1, 2, 9, 18, 20, 51, 52, 63])),
), max_size=80)


def snapshot(tlb):
    return len(tlb), tlb.entries(), {d: vars(s) for d, s in tlb.domains.items()}


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 12), ops)
def test_c_table_and_python_table_agree(capacity, sequence):
    py, c = PyIotlb(capacity), Iotlb(capacity)
    for n, op in enumerate(sequence):
        kind = op[0]
        if kind == "insert":
            for t in (py, c):
                t.insert(op[1], op[2], op[3], n)      # the entry: which insert made it
        elif kind == "lookup":
            assert py.lookup(op[1], op[2]) == c.lookup(op[1], op[2]), op
        elif kind == "all":
            assert py.invalidate_all() == c.invalidate_all()
        elif kind == "domain":
            assert py.invalidate_domain(op[1]) == c.invalidate_domain(op[1])
        else:
            assert py.invalidate_pages(*op[1:]) == c.invalidate_pages(*op[1:]), op
        assert snapshot(py) == snapshot(c), op


def test_a_large_page_is_found_by_any_address_in_it():
    c = Iotlb(8)
    c.insert(1, 0x40000000, 30, "1G")
    c.insert(1, 0x40200000, 21, "2M")
    assert c.lookup(1, 0x40201234) == "2M"          # the 2 MiB entry is tried first
    assert c.lookup(1, 0x7FFFFFFF) == "1G"
    assert c.lookup(2, 0x40000000) is None           # another domain
    assert c.invalidate_pages(1, 0x40000000, 0) == 1 # the 1 GiB page overlaps the 4 KiB one
    assert c.lookup(1, 0x7FFFFFFF) is None and c.lookup(1, 0x40200000) == "2M"
