"""The I/OAT (CBDMA 3.3) model driven through its BAR and configuration space as a driver
does: identity and capabilities, the channel's start the way Akaros's ioatdma checks it,
memcpy from 1 byte to 2 MiB, chains, DMACOUNT appends while running, completion
writeback, MSI-X and INTx with INT_REARM, suspend/resume/abort/reset, every CHANERR
the engine raises, DMA through the VT-d unit (faults with the function's requester id),
and a reset during a long copy after which nothing more is written."""
import os
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from akvm.devices import ioat
from akvm.devices.pci.config import (
    BAR0, CAP_ID_EXP, CAP_ID_MSIX, CAP_ID_PM, CAP_PTR, HEADER_TYPE, PCIE_DEVICE_CONTROL, STATUS,
)
from akvm.iommu.translate import FR_WRITE
from akvm.iommu.vtd import FRCD, FSTS
from tests.unit.ioat_driver import (
    CHANCTRL_RUN, DATA, MSI_ADDRESS, Pc, desc,
)
from tests.unit.vtd_tables import R, W

CTL = ioat.CTL_COMPL_WRITE | ioat.CTL_INT_EN
NULL_CTL = ioat.CTL_NULL | CTL
MiB = 1 << 20


@pytest.fixture(params=[True, False], ids=["c", "python"])
def pc(request):
    pc = Pc(functions=(0, 3), native=request.param)
    yield pc
    pc.close()


def fill(mem, addr, n, seed):
    data = bytes((i * 7 + seed) & 0xFF for i in range(n)) if n < 4096 else os.urandom(n)
    mem.write(addr, data)
    return data


# --- identity ------------------------------------------------------------------------------

def test_configuration_space_is_a_skylake_cbdma_function(pc):
    assert pc.cfg(0, 0) == 0x2021_8086 and pc.cfg(3, 0) == 0x2021_8086
    assert pc.cfg(3, 0x08) == 0x0880_0004                 # class 088000, revision 4
    assert pc.cfg(0, HEADER_TYPE, 1) == 0x80 and pc.cfg(3, HEADER_TYPE, 1) == 0x00
    assert pc.cfg(3, STATUS, 2) & 0x10                      # capability list
    assert pc.cfg(3, BAR0) & 0xF == 0x4                     # 64-bit, non-prefetchable memory
    dev = pc.fns[3]
    pc.cfg_write(3, BAR0, 4, 0xFFFF_FFFF)
    assert ~(pc.cfg(3, BAR0) & ~0xF) + 1 & 0xFFFF_FFFF == 16 * 1024
    pc.cfg_write(3, BAR0, 4, dev.bars[0].address or 0)
    assert pc.cfg(3, CAP_PTR, 1) == 0x80
    assert dev.config.capabilities() == [(CAP_ID_MSIX, 0x80), (CAP_ID_EXP, 0x90), (CAP_ID_PM, 0xE0)]
    assert pc.cfg(3, 0x82, 2) & 0x7FF == 0                   # one MSI-X vector
    assert (pc.cfg(3, 0x84), pc.cfg(3, 0x88)) == (0x2000, 0x3000)
    assert (pc.cfg(3, 0x92, 2) >> 4) & 0xF == 9              # root-complex integrated endpoint
    devctl = 0x90 + PCIE_DEVICE_CONTROL
    pc.cfg_write(3, devctl, 2, pc.cfg(3, devctl, 2) & ~0x10)  # what Akaros does at probe
    assert not pc.cfg(3, devctl, 2) & 0x10


def test_chanerr_int_is_write_one_to_clear_in_extended_space(pc):
    drv = pc.driver(3)
    drv.start()
    drv.put(16, CTL, 0x7FFF_0000_0000, DATA)                  # source outside RAM
    drv.issue()
    assert drv.wait() == ioat.HALTED
    assert pc.cfg(3, ioat.CHANERR_INT) == ioat.READ_DATA_ERR
    pc.cfg_write(3, ioat.CHANERR_INT, 4, pc.cfg(3, ioat.CHANERR_INT))
    assert pc.cfg(3, ioat.CHANERR_INT) == 0
    assert pc.cfg(3, ioat.DMAUNCERRSEV) == ioat.DMAUNCERRSEV_DEFAULT


def test_device_registers(pc):
    drv = pc.driver(0)
    assert drv.r(ioat.CHANCNT, 1) == 1 and drv.r(ioat.XFERCAP, 1) == 20
    assert drv.r(ioat.CBVER, 1) == 0x33 and drv.r(ioat.DMACAPABILITY) == 0
    assert drv.chansts == ioat.HALTED                      # power-on
    assert drv.r(0x00) == 0x0000_1401                        # CHANCNT, XFERCAP as one dword
    drv.w(ioat.DCACTRL, 0xFFFF_FFFF)
    assert drv.r(ioat.DCACTRL) == 0xFFFF_FFFF
    assert drv.r(0x1000) == 0 and drv.r(0x81, 1) == 0
    assert drv.r(0x83, 2) == 0xFFFF                          # misaligned: no register


# --- the channel ---------------------------------------------------------------------------

def test_akaros_start_null_descriptor_then_memcpy(pc):
    """ioat_alloc_chan_resources and the self-test: a NULL descriptor with DMACOUNT 1 must
    show ACTIVE or IDLE at once; then a 2000-byte copy with an interrupt."""
    drv = pc.driver(3)
    drv.start()
    drv.enable_msix(0x41)
    first = drv.put(1, NULL_CTL)
    drv.issue()
    assert drv.state in (ioat.ACTIVE, ioat.IDLE)             # no waiting for the thread
    assert drv.wait() == ioat.IDLE
    assert drv.written_back == first | ioat.IDLE and drv.chansts == first | ioat.IDLE
    assert pc.msis == [(MSI_ADDRESS, 0x41)]
    drv.w(ioat.CHANCTRL, CHANCTRL_RUN, 2)                    # the tasklet re-arms
    src = fill(pc.mem, DATA, 2000, 1)
    second = drv.put(2000, CTL, DATA, DATA + 0x10000)
    drv.issue()
    assert drv.wait() == ioat.IDLE
    assert pc.mem.read(DATA + 0x10000, 2000) == src
    assert drv.written_back == second | ioat.IDLE and len(pc.msis) == 2
    assert drv.r(ioat.ATTNSTATUS) == 1 and drv.r(ioat.INTRCTRL, 1) == 0x0F
    drv.w(ioat.CHANCTRL, CHANCTRL_RUN, 2)
    assert drv.r(ioat.ATTNSTATUS) == 0 and drv.r(ioat.INTRCTRL, 1) == 0x09
    drv.w(ioat.CHANCMD, ioat.CHANCMD_SUSPEND, 1)             # ioat_free_chan_resources
    assert drv.state == ioat.SUSPENDED
    drv.reset()
    assert drv.chansts == ioat.HALTED and drv.r(ioat.DMACOUNT, 2) == 0


@pytest.mark.parametrize("size", [1, 63, 4096, 2000, MiB - 1, MiB, MiB + 1, 2 * MiB])
def test_memcpy_sizes(pc, size):
    drv = pc.driver(0)
    drv.start()
    src = fill(pc.mem, DATA, size, size)
    last = drv.memcpy(DATA, DATA + 4 * MiB, size)
    drv.issue()
    assert drv.wait() == ioat.IDLE and drv.chanerr == 0
    assert pc.mem.read(DATA + 4 * MiB, size) == src
    assert pc.mem.read(DATA + 4 * MiB + size, 1) == b"\0"
    assert drv.written_back == last | ioat.IDLE


def test_a_chain_outside_the_ring_is_followed(pc):
    """`next` is followed wherever it points; descriptors are re-read when run."""
    drv = pc.driver(0)
    drv.start()
    a, b = 0x30_0000, 0x30_1000
    pc.mem.write(drv.ring, desc(8, 0, DATA, DATA + 0x100, a))
    pc.mem.write(a, desc(8, 0, DATA + 8, DATA + 0x108, b))
    pc.mem.write(b, desc(8, ioat.CTL_COMPL_WRITE, DATA + 16, DATA + 0x110, drv.ring))
    data = fill(pc.mem, DATA, 24, 5)
    drv.head = 3
    drv.issue()
    assert drv.wait() == ioat.IDLE
    assert pc.mem.read(DATA + 0x100, 24) == data and drv.written_back == b | ioat.IDLE
    pc.mem.write(drv.ring, desc(4, ioat.CTL_COMPL_WRITE, DATA, DATA + 0x200, a))
    drv.head = 4                                            # the ring wraps to entry 0
    drv.issue()
    assert drv.wait() == ioat.IDLE and pc.mem.read(DATA + 0x200, 4) == data[:4]
    assert drv.written_back == drv.ring | ioat.IDLE


def test_dmacount_appends_while_the_channel_runs(pc):
    drv = pc.driver(0)
    drv.start()
    src = fill(pc.mem, DATA, MiB, 9)
    for i in range(8):
        drv.memcpy(DATA, DATA + (2 + i) * MiB, MiB, ctl=ioat.CTL_COMPL_WRITE)
    drv.issue()
    appended = []
    for i in range(8):                                      # while those run
        appended.append(drv.put(64, ioat.CTL_COMPL_WRITE, DATA + 64 * i, DATA + 10 * MiB + 64 * i))
        drv.issue()
    assert drv.wait() == ioat.IDLE
    for i in range(8):
        assert pc.mem.read(DATA + (2 + i) * MiB, MiB) == src
    assert pc.mem.read(DATA + 10 * MiB, 512) == src[:512]
    assert drv.written_back == appended[-1] | ioat.IDLE
    assert pc.fns[0].ch.count == 16


def test_completion_write_only_where_asked(pc):
    drv = pc.driver(0)
    drv.start()
    drv.put(8, 0, DATA, DATA + 64)
    drv.issue()
    assert drv.wait() == ioat.IDLE and drv.written_back == 0
    assert drv.chansts == drv.addr(0) | ioat.IDLE
    assert pc.msis == []


def test_suspend_resume_and_abort(pc):
    drv = pc.driver(0)
    drv.start()
    src = fill(pc.mem, DATA, MiB, 3)
    for i in range(12):
        drv.memcpy(DATA, DATA + (2 + i) * MiB, MiB, ctl=ioat.CTL_COMPL_WRITE)
    drv.issue()
    drv.w(ioat.CHANCMD, ioat.CHANCMD_SUSPEND, 1)
    assert drv.state == ioat.SUSPENDED
    done = pc.fns[0].ch.count
    time.sleep(0.02)
    assert pc.fns[0].ch.count == done                       # suspended means stopped
    drv.w(ioat.CHANCMD, ioat.CHANCMD_RESUME, 1)
    assert drv.wait() == ioat.IDLE
    for i in range(12):
        assert pc.mem.read(DATA + (2 + i) * MiB, MiB) == src
    drv.memcpy(DATA, DATA + 14 * MiB, MiB)
    drv.issue()
    drv.w(ioat.CHANCMD, ioat.CHANCMD_ABORT, 1)
    assert drv.state == ioat.HALTED
    drv.reset()
    assert drv.chansts == ioat.HALTED


def test_interrupts_follow_int_rearm(pc):
    drv = pc.driver(0)
    drv.start()
    drv.enable_msix(0x52)
    for _ in range(2):
        drv.put(1, NULL_CTL)
        drv.issue()
        drv.wait()
    assert pc.msis == [(MSI_ADDRESS, 0x52)]                 # disarmed after the first
    drv.w(ioat.CHANCTRL, CHANCTRL_RUN, 2)                    # re-arm: the pending one goes
    assert len(pc.msis) == 2
    drv.w(ioat.CHANCTRL, CHANCTRL_RUN, 2)
    table = drv.dev.msix.table_offset
    drv.w(table + 12, 1)                                    # mask the vector
    drv.put(1, NULL_CTL)
    drv.issue()
    drv.wait()
    assert len(pc.msis) == 2 and drv.r(ioat.MSIX_PBA) == 1
    drv.w(table + 12, 0)
    assert len(pc.msis) == 3 and drv.r(ioat.MSIX_PBA) == 0
    drv.w(ioat.CHANCTRL, CHANCTRL_RUN, 2)
    drv.w(ioat.INTRCTRL, 0, 1)                               # master enable off: nothing
    drv.put(1, NULL_CTL)
    drv.issue()
    drv.wait()
    assert len(pc.msis) == 3
    drv.w(ioat.INTRCTRL, ioat.INTRCTRL_MASTER_INT_EN, 1)
    assert len(pc.msis) == 4


def test_intx_when_msix_is_off(pc):
    drv = pc.driver(0)
    drv.start()
    drv.w(ioat.INTRCTRL, ioat.INTRCTRL_MASTER_INT_EN, 1)
    line = pc.lines[drv.dev.config.get(0x3C, 1)]
    drv.put(1, NULL_CTL)
    drv.issue()
    drv.wait()
    assert line.level and drv.r(ioat.INTRCTRL, 1) & ioat.INTRCTRL_INT
    drv.w(ioat.CHANCTRL, CHANCTRL_RUN, 2)                    # the handler re-arms
    assert not line.level and pc.msis == []


# --- errors ----------------------------------------------------------------------------------

OUT = 0x7F00_0000_0000          # no RAM there


@pytest.mark.parametrize("case, bit", [
    ("src", ioat.READ_DATA_ERR), ("dst", ioat.WRITE_DATA_ERR),
    ("length", ioat.LENGTH_ERR), ("zero", ioat.LENGTH_ERR), ("op", ioat.CONTROL_ERR),
    ("next-align", ioat.NEXT_DESC_ALIGN_ERR), ("next-out", ioat.NEXT_ADDR_ERR),
    ("chain-align", ioat.CHAIN_ADDR_VALUE_ERR), ("chain-out", ioat.CHAIN_ADDR_VALUE_ERR),
    ("completion", ioat.COMPLETION_ADDR_ERR),
])
def test_errors_halt_the_channel(pc, case, bit):
    drv = pc.driver(0)
    drv.start()
    drv.enable_msix(0x60)
    ok = drv.put(8, ioat.CTL_COMPL_WRITE, DATA, DATA + 64)
    size, ctl, src, dst, nxt = 8, CTL, DATA, DATA + 128, None
    if case == "src":
        src = OUT
    elif case == "dst":
        dst = OUT
    elif case == "length":
        size = MiB + 1
    elif case == "zero":
        size = 0
    elif case == "op":
        ctl |= 0x87 << ioat.CTL_OP_SHIFT                     # XOR: not offered
    elif case == "next-align":
        pc.mem.write(ok, desc(8, ioat.CTL_COMPL_WRITE, DATA, DATA + 64, drv.addr(1) + 8))
    elif case == "next-out":
        pc.mem.write(ok, desc(8, ioat.CTL_COMPL_WRITE, DATA, DATA + 64, OUT))
    bad = drv.put(size, ctl, src, dst, nxt)
    if case.startswith("chain"):
        drv.w(ioat.CHAINADDR, (drv.ring + 8) if case == "chain-align" else 0, 4)
        drv.w(ioat.CHAINADDR + 4, 0 if case == "chain-align" else OUT >> 32, 4)
    if case == "completion":
        drv.w(ioat.CHANCMP + 4, OUT >> 32)
    drv.issue()
    assert drv.wait() == ioat.HALTED
    assert drv.chanerr == bit
    done = ok if case in ("src", "dst", "length", "zero", "op", "next-align", "next-out") else 0
    assert drv.chansts == done | ioat.HALTED
    if case != "completion":
        assert drv.written_back == done | ioat.HALTED        # ERR_COMPLETION_EN
    assert pc.msis == [(MSI_ADDRESS, 0x60)]                  # ERR_INT_EN
    assert pc.mem.read(DATA + 128, 8) == bytes(8)
    assert drv.r(ioat.CDAR, 8) in (bad, drv.addr(1) + 8, OUT, drv.ring + 8, 0, ok)
    drv.put(1, NULL_CTL)
    drv.issue()                                             # CHANERR set: no start
    assert drv.state == ioat.HALTED
    drv.reset()                                             # clears CHANERR first
    assert drv.chanerr == 0 and drv.chansts == ioat.HALTED
    drv.start()
    drv.put(1, NULL_CTL)
    drv.issue()
    assert drv.wait() == ioat.IDLE                          # usable again


def test_no_bus_master_no_start(pc):
    drv = pc.driver(0)
    drv.start()
    drv.dev.set_command(0x4, False)
    drv.put(1, NULL_CTL)
    drv.issue()
    assert drv.state == ioat.HALTED and drv.written_back == 0


# --- behind the IOMMU --------------------------------------------------------------------------

def test_translated_copy_and_a_fault_with_the_functions_requester_id():
    """Domain 7 maps the ring, the completion and the source 1:1 and the destination
    elsewhere: the copy lands in the frame the IOVA maps; an unmapped destination is
    WRITE_DATA_ERR and a fault recorded for 00:04.3."""
    pc = Pc(functions=(0, 3), iommu=True)
    try:
        rig, dev = pc.rig, pc.fns[3]
        rig.enable()
        table = rig.page()
        rig.set_context(dev.requester_id, table=table, did=7)
        drv = pc.driver(3, entries=8)
        for page in (drv.ring, drv.completion & ~0xFFF, DATA):
            rig.map(table, page, page)
        frame, iova, unmapped = rig.page(), DATA + 0x10000, DATA + 0x20000
        rig.map(table, iova, frame)
        drv.start()
        data = fill(pc.mem, DATA, 2048, 4)
        last = drv.memcpy(DATA, iova + 0x800, 2048)
        drv.issue()
        assert drv.wait() == ioat.IDLE
        assert pc.mem.read(frame + 0x800, 2048) == data
        assert pc.mem.read(iova + 0x800, 2048) == bytes(2048)
        assert drv.written_back == last | ioat.IDLE
        assert dev.rounds_native == 0 and dev.rounds_python > 0
        drv.put(16, CTL, DATA, unmapped)
        drv.issue()
        assert drv.wait() == ioat.HALTED and drv.chanerr == ioat.WRITE_DATA_ERR
        frcd = rig.iommu.read(FRCD + 8, 8)
        assert frcd >> 63 and (frcd & 0xFFFF) == 0x0023 and (frcd >> 32) & 0xFF == FR_WRITE
        assert rig.iommu.read(FRCD, 8) == unmapped
        assert rig.iommu.read(FSTS, 4) & 2                   # primary pending fault
    finally:
        pc.close()


def test_passthrough_context_runs_in_c():
    pc = Pc(functions=(0,), iommu=True)
    try:
        rig, dev = pc.rig, pc.fns[0]
        rig.enable()
        rig.set_context(dev.requester_id, tt=2, did=1)
        drv = pc.driver(0)
        drv.start()
        data = fill(pc.mem, DATA, 4096, 2)
        drv.memcpy(DATA, DATA + MiB, 4096)
        drv.issue()
        assert drv.wait() == ioat.IDLE and pc.mem.read(DATA + MiB, 4096) == data
        assert dev.rounds_native > 0 and dev.rounds_python == 0
    finally:
        pc.close()


# --- a reset during a copy ----------------------------------------------------------------------

def test_nothing_is_written_after_a_reset_returns():
    """A looping chain of 1 MiB copies with DMACOUNT far ahead; reset while it runs."""
    pc = Pc(functions=(0,), size=64 * MiB)
    try:
        drv = pc.driver(0, entries=4)
        drv.start()
        fill(pc.mem, DATA, MiB, 1)
        for i in range(4):
            drv.put(MiB, ioat.CTL_COMPL_WRITE, DATA, DATA + (2 + i) * MiB)
        drv.count = 0xFFFF
        drv.w(ioat.DMACOUNT, 0xFFFF, 2)
        time.sleep(0.01)
        assert drv.state == ioat.ACTIVE
        for i in range(4):
            pc.mem.write(DATA + (2 + i) * MiB, bytes(MiB))
        drv.w(ioat.CHANCMD, ioat.CHANCMD_RESET, 1)
        pc.mem.write(drv.completion, bytes(8))
        snapshot = pc.mem.read(DATA, 8 * MiB)
        time.sleep(0.05)
        assert pc.mem.read(DATA, 8 * MiB) == snapshot and drv.written_back == 0
        assert drv.chansts == ioat.HALTED
    finally:
        pc.close()


# --- hostile input ------------------------------------------------------------------------------

REGISTER_OFFSETS = [ioat.CHANCTRL, ioat.CHANCMD, ioat.DMACOUNT, ioat.CHAINADDR, ioat.CHAINADDR + 4,
                    ioat.CHANCMP, ioat.CHANCMP + 4, ioat.CHANERR, ioat.INTRCTRL, ioat.INTRDELAY,
                    ioat.CHANSTS, ioat.CDAR, 0x84, 0x2000, 0x200C, 0x3000]


@st.composite
def hostile_op(draw):
    kind = draw(st.sampled_from(["reg"] * 6 + ["desc", "read", "sleep"]))
    if kind == "reg":
        offset = draw(st.one_of(st.sampled_from(REGISTER_OFFSETS), st.integers(0, 0x3FFF)))
        size = draw(st.sampled_from([1, 2, 4, 8]))
        value = draw(st.one_of(st.integers(0, (1 << 64) - 1), st.sampled_from(
            [0, 1, 0xFFFF, ioat.CHANCMD_RESET, ioat.CHANCMD_SUSPEND, ioat.CHANCMD_RESUME,
             ioat.CHANCMD_ABORT, CHANCTRL_RUN, 0x20_0000, 0x20_0040, 0x7F00_0000_0000])))
        return kind, offset - offset % size, size, value
    if kind == "desc":
        slot = draw(st.integers(0, 15))
        return kind, slot, desc(
            draw(st.one_of(st.integers(0, 4096), st.sampled_from([MiB, MiB + 1, 0xFFFF_FFFF]))),
            draw(st.one_of(st.sampled_from([0, CTL, NULL_CTL]), st.integers(0, 0xFFFF_FFFF))),
            draw(st.one_of(st.integers(DATA, DATA + 2 * MiB), st.sampled_from([0, OUT, (1 << 64) - 1]))),
            draw(st.one_of(st.integers(DATA, DATA + 2 * MiB), st.sampled_from([0, OUT, (1 << 64) - 8]))),
            draw(st.one_of(st.integers(0, 15).map(lambda i: 0x20_0000 + 64 * i),
                           st.integers(0, (1 << 64) - 1)))), 0
    return kind, draw(st.integers(0, 0x100)), 4, 0


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(hostile_op(), max_size=40), native=st.booleans())
def test_hostile_register_and_descriptor_traffic(ops, native):
    """Whatever the guest writes: no exception out of the model or its thread, the state
    a CHANSTS value can hold, and once a reset returns nothing more is written."""
    errors = []
    hook, threading.excepthook = threading.excepthook, lambda args: errors.append(args.exc_value)
    pc = Pc(functions=(0,), native=native, size=8 * MiB)
    try:
        drv = pc.driver(0, entries=16)
        drv.enable_msix()
        for kind, a, b, c in ops:
            if kind == "reg":
                drv.w(a, c, b)
            elif kind == "desc":
                pc.mem.write(0x20_0000 + 64 * a, b)
            elif kind == "read":
                drv.r(a - a % 4)
            else:
                time.sleep(0.0002)
            assert drv.state in (ioat.ACTIVE, ioat.IDLE, ioat.SUSPENDED, ioat.HALTED)
        drv.w(ioat.CHANCMD, ioat.CHANCMD_RESET, 1)
        assert drv.chansts == ioat.HALTED
        snapshot = bytes(pc.mem.slots[0].buf)
        time.sleep(0.005)
        assert bytes(pc.mem.slots[0].buf) == snapshot
    finally:
        pc.close()
        threading.excepthook = hook
    assert errors == []
    assert not pc.fns[0].engine_failures


def test_translated_copies_run_in_c_from_the_iotlb():
    """With the unit's lock and IOTLB in C (a doorbell), C serves IOTLB hits: the first
    round is Python's (misses walk and fill the IOTLB), the next ones C's. An unmapped
    page invalidated page-selectively faults again (Python records it); without the
    invalidation the stale entry still serves, as on hardware; a context change stops
    C at once."""
    pc = Pc(functions=(0,), iommu=True, base=0xFED9_0000)
    try:
        rig, dev = pc.rig, pc.fns[0]
        assert rig.iommu.doorbell is not None
        rig.enable()
        table = rig.page()
        rig.set_context(dev.requester_id, table=table, did=9)
        drv = pc.driver(0)
        for page in (drv.ring, drv.completion & ~0xFFF):
            rig.map(table, page, page)
        iova, frames = 0x4000_0000, [DATA + MiB + i * 0x1000 for i in range(16)]
        for i, frame in enumerate(frames):
            rig.map(table, iova + i * 0x1000, frame if i < 8 else frames[i - 8] + 8 * 0x1000)
        drv.start()
        data = fill(pc.mem, frames[0], 8 * 0x1000, 3)

        def copy(n=0x8000, dst=iova + 0x8000, src=iova):
            last = drv.memcpy(src, dst, n)
            drv.issue()
            return drv.wait(), last

        assert copy()[0] == ioat.IDLE and pc.mem.read(frames[8], 0x8000) == data
        python, native = dev.rounds_python, dev.rounds_native
        pc.mem.write(frames[8], bytes(0x8000))
        state, last = copy()
        assert state == ioat.IDLE and pc.mem.read(frames[8], 0x8000) == data
        assert drv.written_back == last | ioat.IDLE
        assert dev.rounds_python == python and dev.rounds_native > native
        assert rig.iommu.stats()["iotlb"][9]["hits"] > 0        # C's hits, collected
        # unmap the last destination page and invalidate it: the copy faults
        leaf = rig.map(table, iova + 0xF000, 0, perms=0)
        rig.flush_page(9, iova + 0xF000)
        assert copy()[0] == ioat.HALTED and drv.chanerr == ioat.WRITE_DATA_ERR
        assert rig.iommu.read(FRCD, 8) == iova + 0xF000
        # the same without the invalidation: the stale IOTLB entry serves
        drv.start()
        rig.map(table, iova + 0xF000, frames[15])
        assert copy()[0] == ioat.IDLE                       # back in the IOTLB
        pc.mem.write(leaf, bytes(8))
        python = dev.rounds_python
        assert copy()[0] == ioat.IDLE and dev.rounds_python == python
        # a new context (pass-through), invalidated: addresses are physical at once
        rig.set_context(dev.requester_id, tt=2, did=1)
        rig.w64(0x28, 1 << 63 | 1 << 61)                    # CCMD: global
        assert copy(0x1000, DATA + 0x2000, frames[0])[0] == ioat.IDLE
        assert pc.mem.read(DATA + 0x2000, 0x1000) == data[:0x1000]
    finally:
        pc.close()


def test_a_snapshot_in_the_middle_of_a_chain_goes_on_after_restore():
    """pause() holds the channel's thread between two chunks; the state, restored into a
    function built afresh over a copy of RAM, finishes the chain exactly as the original."""
    import json
    pcs = [Pc(functions=(0,), size=16 * MiB) for _ in range(2)]
    try:
        pc, fresh = pcs
        drv = pc.driver(0, entries=4)
        drv.start()
        drv.enable_msix(0x44)
        fill(pc.mem, DATA, MiB, 6)
        for i in range(4):
            drv.put(MiB, ioat.CTL_COMPL_WRITE | (ioat.CTL_INT_EN if i == 3 else 0),
                    DATA, DATA + (1 + i) * MiB)
        drv.count = 400
        drv.w(ioat.DMACOUNT, 400, 2)
        dev = pc.fns[0]
        time.sleep(0.005)
        assert dev.pause(5.0)
        state = json.loads(json.dumps(dev.snapshot()))
        ram = bytes(pc.mem.slots[0].buf)
        assert dev.ch.count < 400 and drv.state == ioat.ACTIVE        # in the middle
        dev.resume()
        assert drv.wait() == ioat.IDLE
        fresh.mem.slots[0].buf[:] = ram
        twin = fresh.fns[0]
        twin.restore(state)
        assert twin.state == ioat.ACTIVE and twin.ch.count == state["device"]["channel"]["count"]
        twin.start()
        assert fresh.driver(0, entries=4).wait() == ioat.IDLE
        assert fresh.mem.slots[0].buf == pc.mem.slots[0].buf
        assert twin.ch.chansts == dev.ch.chansts and twin.ch.count == 400
        assert twin.pending == dev.pending and twin.attn == dev.attn
    finally:
        for p in pcs:
            p.close()
