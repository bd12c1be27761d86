"""The VT-d register page: CAP/ECAP per option, read-only / read-write / write-1-to-clear /
reserved semantics, partial and straddling accesses, every GCMD command with status
updated inside the write, CCMD and the IOTLB register, register commands refused under
queued invalidation, options parsing, and hostile register traffic."""
import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import examples

from akvm.iommu.vtd import (
    CAP, CCMD, ECAP, FEADDR, FECTL, FEDATA, FEUADDR, FRCD, FSTS, GCMD, GCMD_CFI, GCMD_EAFL,
    GCMD_IRE, GCMD_QIE, GCMD_SFL, GCMD_SIRTP, GCMD_SRTP, GCMD_TE, GCMD_WBF, GSTS, GSTS_QIES,
    GSTS_RTPS, GSTS_TES, IECTL, IOTLB, IQA, IQH, IQT, IVA, RTADDR, VER, VtdConfig,
)
from akvm.config import ConfigError
from akvm.devicetable import parse_iommu
from tests.unit.vtd_tables import R, SID, W, DoorbellRig, Rig


def field(value, hi, lo):
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


@pytest.fixture
def rig():
    return Rig()


def akaros_accepts(cap, ecap, dmar_haw):
    """The checks of upstream Akaros's iommu_has_required_capabilities()."""
    return (field(cap, 12, 8) & 0x4 and field(cap, 37, 34) & 0x1 and not cap & 1 << 4 and
            not cap & 1 << 7 and ecap & 1 << 6 and field(cap, 21, 16) + 1 >= dmar_haw)


def test_default_capabilities(rig):
    cap, ecap = rig.r64(CAP), rig.r64(ECAP)
    assert rig.r32(VER) == 0x10
    assert field(cap, 2, 0) == 6                          # ND: 16-bit domain ids
    assert not cap & 1 << 4 and not cap & 1 << 7          # RWBF = 0, CM = 0
    assert field(cap, 12, 8) == 0b00110                   # SAGAW: 39-bit and 48-bit
    assert field(cap, 21, 16) == 47                       # MGAW 48
    assert field(cap, 33, 24) * 16 == FRCD == 0x220       # FRO
    assert field(cap, 37, 34) == 0b11                     # SLLPS: 2 MiB, 1 GiB
    assert cap & 1 << 39                                  # PSI
    assert field(cap, 47, 40) + 1 == 8                    # NFR
    assert field(cap, 53, 48) == 18                       # MAMV
    assert cap & 1 << 54 and cap & 1 << 55                # DWD, DRD
    assert ecap & 1 << 0 and ecap & 1 << 1 and ecap & 1 << 6     # C, QI, PT
    assert not ecap & (1 << 2 | 1 << 3)                   # no device-TLB, no IR
    assert field(ecap, 17, 8) * 16 == IVA == 0xF0 and IOTLB == 0xF8
    assert akaros_accepts(cap, ecap, dmar_haw=48)


def test_options_vary_the_capabilities():
    rig = Rig(aw=39, cm=True, qi=False, pt=False, psi=False, fault_records=2)
    cap, ecap = rig.r64(CAP), rig.r64(ECAP)
    assert field(cap, 12, 8) == 0b00010 and field(cap, 21, 16) == 38
    assert cap & 1 << 7 and not cap & 1 << 39 and field(cap, 53, 48) == 0
    assert field(cap, 47, 40) == 1
    assert not ecap & 1 << 1 and not ecap & 1 << 6
    assert not akaros_accepts(cap, ecap, dmar_haw=39)     # Akaros wants 4-level tables


def test_options_from_the_command_line():
    spec = parse_iommu("vtd,aw=39,cm=on,qi=off,pt=on,psi=off,frcd=4,iotlb=64,check=stop")
    assert spec.values == {"aw": 39, "cm": True, "qi": False, "pt": True, "psi": False,
                           "frcd": 4, "iotlb": 64, "check": "stop"}
    defaults = parse_iommu("vtd").values
    c = VtdConfig()     # the table's defaults are the unit's
    assert (defaults["aw"], defaults["cm"], defaults["qi"], defaults["pt"], defaults["psi"],
            defaults["frcd"], defaults["iotlb"], defaults["check"]) == \
        (c.aw, c.cm, c.qi, c.pt, c.psi, c.fault_records, c.iotlb_entries, c.check)
    for bad, words in [("vtd,aw=40", "aw=40: expected 39 or 48"), ("vtd,frcd=x", "expected a number"),
                       ("vtd,check=maybe", "check=maybe"), ("vtd,frcd=0", "frcd=0"),
                       ("vtd,cm=perhaps", "cm=perhaps"), ("vtd,bogus=1", "unknown option"),
                       ("amd", "no such IOMMU")]:
        with pytest.raises(ConfigError, match=words):
            parse_iommu(bad)


@pytest.mark.parametrize("offset,size", [(VER, 4), (CAP, 8), (ECAP, 8), (GSTS, 4), (IQH, 8)])
def test_read_only_registers_ignore_writes(rig, offset, size):
    before = rig.iommu.read(offset, size)
    rig.iommu.write(offset, size, (1 << (8 * size)) - 1)
    assert rig.iommu.read(offset, size) == before


def test_reserved_offsets_read_zero_and_ignore_writes(rig):
    for offset in (0x4C, 0x58, 0x64, 0xB8, 0xC0, 0x200, 0x2A0, 0xFF8):
        rig.w64(offset, 0xFFFF_FFFF_FFFF_FFFF)
        assert rig.r64(offset) == 0
    assert rig.iommu.internal_errors == 0


def test_partial_and_straddling_accesses(rig):
    assert rig.iommu.read(CAP + 1, 1) == 0x06             # SAGAW byte
    assert rig.r32(CAP + 4) == rig.r64(CAP) >> 32
    rig.w32(RTADDR, 0x1234_5FFF)                          # low dword; bits 11:0 read 0
    rig.w32(RTADDR + 4, 0x12)
    assert rig.r64(RTADDR) == 0x12_1234_5000
    rig.iommu.write(RTADDR + 2, 2, 0xABCD)                # a word in the middle
    assert rig.r64(RTADDR) == 0x12_ABCD_5000
    rig.w64(FECTL, 0x0000_4321_0000_0000)                 # FECTL (IM cleared) + FEDATA
    assert rig.r32(FEDATA) == 0x4321 and rig.r32(FECTL) == 0
    assert rig.r64(FECTL) == 0x4321 << 32


def test_fault_event_registers(rig):
    assert rig.r32(FECTL) == 1 << 31                      # masked at reset
    rig.w32(FECTL, 0xFFFF_FFFF)
    assert rig.r32(FECTL) == 1 << 31                      # IP is read-only
    rig.w32(FEDATA, 0xFFFF_FFFF)
    rig.w32(FEADDR, 0xFFFF_FFFF)
    rig.w32(FEUADDR, 0x1)
    assert (rig.r32(FEDATA), rig.r32(FEADDR), rig.r32(FEUADDR)) == (0xFFFF, 0xFFFF_FFFC, 1)


def test_srtp_latches_the_root_table_and_sets_rtps_at_once(rig):
    rig.w64(RTADDR, 0x10_0000)
    assert not rig.r32(GSTS) & GSTS_RTPS
    rig.w32(GCMD, GCMD_SRTP)
    assert rig.r32(GSTS) & GSTS_RTPS and rig.iommu.root == 0x10_0000
    rig.w64(RTADDR, 0x20_0000)                            # not used until the next SRTP
    assert rig.iommu.root == 0x10_0000
    assert rig.r32(GCMD) == 0                             # GCMD reads 0


def test_te_enables_and_disables_translation(rig):
    rig.w32(GCMD, GCMD_TE)
    assert rig.r32(GSTS) & GSTS_TES and rig.iommu.enabled
    rig.w32(GCMD, 0)
    assert not rig.r32(GSTS) & GSTS_TES
    assert rig.iommu.translate(SID, 0x1000, True)[0] == 0x1000


def test_commands_without_support_leave_status_clear(rig):
    rig.w32(GCMD, GCMD_TE | GCMD_SFL | GCMD_EAFL | GCMD_WBF | GCMD_IRE | GCMD_SIRTP | GCMD_CFI)
    assert rig.r32(GSTS) == GSTS_TES


def test_qie_enable_and_disable(rig):
    rig.w64(IQA, rig.page())
    rig.w32(GCMD, GCMD_QIE)
    assert rig.r32(GSTS) & GSTS_QIES
    rig.mem.write_u64(rig.iommu.iqa, 0x5 | 1 << 5)       # two wait descriptors with SW
    rig.mem.write_u64(rig.iommu.iqa + 16, 0x5)
    rig.w64(IQT, 0x20)
    assert rig.r64(IQH) == 0x20
    rig.w32(GCMD, 0)                                     # disable: IQH resets
    assert not rig.r32(GSTS) & GSTS_QIES and rig.r64(IQH) == 0


def test_iqa_write_resets_the_queue_pointers(rig):
    rig.w64(IQT, 0x30)
    rig.w64(IQA, 0x20_0003 | 1 << 11)                    # DW (256-bit) unsupported: reads 0
    assert rig.r64(IQA) == 0x20_0003 and rig.r64(IQT) == 0


def test_queue_registers_absent_without_qi():
    rig = Rig(qi=False)
    rig.w64(IQA, 0x20_0000)
    rig.w32(GCMD, GCMD_QIE)
    assert rig.r64(IQA) == 0 and not rig.r32(GSTS) & GSTS_QIES
    assert rig.r32(IECTL) == 0


@pytest.mark.parametrize("cirg,caig", [(1, 1), (2, 2), (3, 3), (0, 0)])
def test_ccmd_completes_in_the_write(rig, cirg, caig):
    rig.w64(CCMD, 1 << 63 | cirg << 61 | 1 << 32 | SID << 16 | 5)
    value = rig.r64(CCMD)
    assert not value & 1 << 63 and field(value, 60, 59) == caig
    assert field(value, 62, 61) == cirg and field(value, 31, 16) == SID and field(value, 15, 0) == 5


def test_ccmd_low_dword_alone_does_not_start_a_command(rig):
    rig.w32(CCMD, 0x0005)
    assert rig.iommu.invalidator.counts == {}
    rig.w32(CCMD + 4, 1 << 31 | 1 << 29)                 # ICC + global in the upper dword
    assert rig.iommu.invalidator.counts == {("register", "context", "global"): 1}
    assert not rig.r64(CCMD) & 1 << 63


@pytest.mark.parametrize("iirg,iaig", [(1, 1), (2, 2), (3, 3), (0, 0)])
def test_iotlb_register_completes_in_the_write(rig, iirg, iaig):
    rig.w64(IVA, 0x5000 | 1 << 6 | 2)
    rig.w64(IOTLB, 1 << 63 | iirg << 60 | 1 << 49 | 1 << 48 | 7 << 32)
    value = rig.r64(IOTLB)
    assert not value & 1 << 63 and field(value, 58, 57) == iaig
    assert value & 1 << 49 and value & 1 << 48 and field(value, 47, 32) == 7
    assert rig.r64(IVA) == 0x5000 | 1 << 6 | 2


def test_akaros_sequence(rig):
    """What upstream Akaros does, in order, polling as it does."""
    table = rig.page()
    rig.set_context(SID, table=table, did=1, tt=2, fpd=True)
    rig.w64(RTADDR, rig.root)
    rig.w32(GCMD, GCMD_SRTP)
    assert rig.r32(GSTS) & GSTS_RTPS
    rig.w64(CCMD, 1 << 63 | 1 << 61)
    assert not rig.r64(CCMD) & 1 << 63
    iotlb = field(rig.r64(ECAP), 17, 8) * 16 + 8
    rig.w64(iotlb, 1 << 63 | 1 << 49 | 1 << 48 | 1 << 60)
    assert not rig.r64(iotlb) & 1 << 63
    rig.w32(GCMD, GCMD_TE)
    assert rig.r32(GSTS) & GSTS_TES
    rig.w64(iotlb, 1 << 63 | 1 << 49 | 1 << 48 | 2 << 60 | 42 << 32)   # proc_iotlb_flush
    assert not rig.r64(iotlb) & 1 << 63
    assert rig.iommu.translate(SID, 0x1234, True)[0] == 0x1234


def test_register_commands_are_refused_while_qi_is_enabled(rig):
    rig.enable(qi=True)
    table = rig.page()
    rig.set_context(SID, table=table, did=3)
    pte = rig.map(table, 0x1000, 0xA000)
    assert rig.iommu.translate(SID, 0x1000, False)[0] == 0xA000
    rig.mem.write_u64(pte, 0xB000 | R | W)
    rig.flush_domain(3)
    value = rig.r64(IOTLB)
    assert not value & 1 << 63 and field(value, 58, 57) == 0
    rig.w64(CCMD, 1 << 63 | 1 << 61)
    assert not rig.r64(CCMD) & 1 << 63 and field(rig.r64(CCMD), 60, 59) == 0
    assert rig.iommu.translate(SID, 0x1000, False)[0] == 0xA000     # nothing was invalidated
    assert rig.iommu.stats()["refused_register_commands"] == 2


def test_fault_status_write_one_to_clear(rig):
    from akvm.iommu.faults import FSTS_IQE, FSTS_PFO
    rig.iommu.faults.status |= FSTS_PFO | FSTS_IQE
    rig.w32(FSTS, FSTS_PFO | 1 << 1 | 0xFF00)            # PPF and FRI are read-only
    assert rig.r32(FSTS) == FSTS_IQE


# --- hostile traffic --------------------------------------------------------------------

_offsets = st.one_of(st.sampled_from([GCMD, RTADDR, CCMD, FSTS, FECTL, IQT, IQA, IVA, IOTLB,
                                      FRCD + 8, 0x9C, 0xA0]),
                     st.integers(0, 0xFFF))
_access = st.tuples(_offsets, st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1))


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(_access, max_size=40), st.integers(0, 0xFFFF), st.integers(0, (1 << 64) - 1))
def test_random_register_traffic_never_raises(accesses, sid, iova):
    rig = Rig(size=4 << 20)
    for offset, size, value in accesses:
        rig.iommu.write(offset, size, value)
        rig.iommu.read(offset, size)
    try:
        rig.dma(sid).read(iova, 16)
    except Exception as e:                                # only DmaError may come out
        from akvm.base.dma import DmaError
        assert isinstance(e, DmaError), repr(e)
    assert rig.iommu.internal_errors == 0


# --- the IVA and IOTLB registers in C (iommu/vtddoor.c) ----------------------------

register_op = st.one_of(
    st.tuples(st.just("iva"), st.integers(0, (1 << 64) - 1)),
    st.tuples(st.just("iva32"), st.integers(0, (1 << 32) - 1)),     # Python's: not 64-bit
    st.builds(lambda ivt, g, dr, dw, did, rsv: ("iotlb", ivt << 63 | g << 60 | dr << 49 | dw << 48
                                                 | did << 32 | rsv),
              st.sampled_from([0, 1, 1]), st.integers(0, 3), st.integers(0, 1), st.integers(0, 1),
              st.integers(0, 3), st.sampled_from([0, 0, 0xFFFF, 1 << 57])),
    st.tuples(st.just("read"), st.sampled_from([IVA, IOTLB])),
    st.tuples(st.just("cache"), st.tuples(st.integers(0, 3), st.integers(0, 40),
                                          st.sampled_from([12, 12, 21]))),
)


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(register_op, max_size=40), st.sampled_from([{}, {"psi": False}]))
def test_c_and_python_iotlb_registers_agree(ops, config):
    """Register-based IOTLB invalidation as Akaros does it (IVA, the IOTLB register, polling
    IVT), by akvm.iommu.invalidation alone and with iommu/vtddoor.c in front: the same
    reads, and the same unit afterwards."""
    rigs = [Rig(size=2 << 20, **config), DoorbellRig(size=2 << 20, **config)]
    for r in rigs:
        r.enable(qi=False)
        r.in_c = 0
    for kind, arg in ops:
        if kind == "cache":
            did, page, shift = arg
            for r in rigs:
                with r.iommu.lock:      # as translate() does: after C's work is caught up
                    r.iommu.iotlb.insert(did, page << 12, shift, (did, page))
        elif kind == "read":
            assert rigs[0].r64(arg) == rigs[1].r64(arg)
        elif kind == "iva32":
            for r in rigs:
                r.w32(IVA, arg)
        else:
            for r in rigs:
                r.w64(IVA if kind == "iva" else IOTLB, arg)
    rigs[1].sync()
    states = [(r.r64(IVA), r.r64(IOTLB), r.r64(IQH), dict(r.iommu.invalidator.counts),
               r.iommu.iotlb.entries(), {d: vars(s) for d, s in r.iommu.iotlb.domains.items()})
              for r in rigs]
    assert states[0] == states[1]
    assert rigs[1].in_c >= sum(kind not in ("cache", "iva32") for kind, _ in ops)


def test_akaros_domain_flush_is_done_in_c():
    r = DoorbellRig()
    r.enable(qi=False)
    with r.iommu.lock:
        r.iommu.iotlb.insert(7, 0x4000, 12, "cached")
    r.in_c = 0
    r.w64(IOTLB, 1 << 63 | 2 << 60 | 7 << 32)       # domain 7, as Akaros's iotlb_flush()
    assert not r.r64(IOTLB) >> 63                     # IVT clear: done
    assert field(r.r64(IOTLB), 58, 57) == 2 and r.in_c == 3
    r.sync()
    assert r.iommu.iotlb.lookup(7, 0x4000) is None
    assert r.iommu.invalidator.counts[("register", "iotlb", "domain")] == 1


def test_python_writes_after_c_writes_reach_c():
    """C moved IVA; a 32-bit write (Python's) then puts back the value Python last
    published: C must still get it."""
    r = DoorbellRig()
    r.enable(qi=False)
    r.w32(IVA, 0)
    r.w64(IVA, 0x5000)                  # C
    r.w32(IVA, 0)                       # Python: the value it published before
    assert r.r64(IVA) == 0              # read by C
