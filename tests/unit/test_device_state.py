"""The device state protocol (akvm.devices.state): each model, driven into some state, saved,
and restored into a model built afresh, then behaves exactly as the original does for
whatever comes next. Hypothesis picks the accesses for the register-level devices."""
import copy
import json

import pytest
from hypothesis import given, settings, strategies as st

from akvm.base.dma import DirectDma
from akvm.base.irq import IrqLine
from akvm.devices.acpi_pm import AcpiPm
from akvm.devices.cmos import Cmos
from akvm.devices.debugport import DebugPort
from akvm.devices.i8042 import I8042, ResetControl
from akvm.devices.state import SnapshotUnsupported, pack, unpack
from akvm.devices.uart import Uart16550
from akvm.devices.virtio.mmio import VirtioMmio
from akvm.devices.virtio.rng import VirtioRng
from akvm.devices.virtio.spec import VIRTIO_STATUS_DRIVER_OK

from tests.unit.test_edu import Pc
from tests.unit.test_virtio_pci import Machine as PciMachine, pending
from tests.unit.virtio_driver import DATA, bring_up, new_memory
from tests.unit.vtd_tables import SID, DoorbellRig, Rig

settings_fast = settings(max_examples=60, deadline=None)


def json_round_trip(state: dict) -> dict:
    """What a snapshot file gives back."""
    return json.loads(json.dumps(state))


class Sink:
    def __init__(self):
        self.data = bytearray()

    def write(self, b):
        self.data += b


# --- the UART -----------------------------------------------------------------------

uart_op = st.one_of(
    st.tuples(st.just("r"), st.integers(0, 7)),
    st.tuples(st.just("w"), st.integers(0, 7), st.integers(0, 255)),
    st.tuples(st.just("in"), st.binary(min_size=1, max_size=20)))


def uart_apply(uart, out, op):
    if op[0] == "r":
        return uart.read(op[1], 1)
    if op[0] == "w":
        uart.write(op[1], 1, op[2])
        return None
    return uart.receive(op[1])


@settings_fast
@given(st.lists(uart_op, max_size=40), st.lists(uart_op, max_size=40))
def test_uart_continues_as_the_original(before, after):
    a_out, b_out = Sink(), Sink()
    a = Uart16550(IrqLine(4), a_out, backlog=64)
    for op in before:
        uart_apply(a, a_out, op)
    state = json_round_trip(a.snapshot())
    b = Uart16550(IrqLine(4), b_out, backlog=64)
    b.restore(state)
    assert b.snapshot() == a.snapshot()
    assert b.irq.level == a.irq.level
    a_out.data.clear()
    for op in after:
        assert uart_apply(b, b_out, op) == uart_apply(a, a_out, op), op
        assert b.irq.level == a.irq.level
    assert b_out.data == a_out.data


# --- CMOS, i8042, reset control, PM, port 0x80 ----------------------------------------

@settings_fast
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 255)), max_size=40),
       st.lists(st.tuples(st.integers(0, 1), st.integers(0, 255)), max_size=20))
def test_cmos_continues_as_the_original(writes, reads):
    clock = lambda: 1_800_000_000.0
    a = Cmos(512 << 20, 0, 2, clock=clock)
    for port, value in writes:
        a.write(port, 1, value)
    b = Cmos(1 << 20, 0, 1, clock=clock)         # whatever it was built with, the state wins
    b.restore(json_round_trip(a.snapshot()))
    for port, value in reads:
        a.write(0, 1, value & 0x7F)
        b.write(0, 1, value & 0x7F)
        assert b.read(1, 1) == a.read(1, 1)


@settings_fast
@given(st.lists(st.tuples(st.sampled_from(["cmd", "data", "read", "status"]), st.integers(0, 255)),
                max_size=30),
       st.lists(st.tuples(st.sampled_from(["cmd", "data", "read", "status"]), st.integers(0, 255)),
                max_size=30))
def test_i8042_continues_as_the_original(before, after):
    def apply(ctl, op, value):
        if op == "cmd":
            return ctl.write_command(value)
        if op == "data":
            return ctl.write_data(value)
        return ctl.read_data() if op == "read" else ctl.read_status()
    a_resets, b_resets = [], []
    a = I8042(reset=lambda: a_resets.append(1))
    for op in before:
        apply(a, *op)
    b = I8042(reset=lambda: b_resets.append(1))
    b.restore(json_round_trip(a.snapshot()))
    a_resets.clear()
    for op in after:
        assert apply(b, *op) == apply(a, *op)
    assert b.snapshot() == a.snapshot() and b_resets == a_resets


def test_reset_control_and_debug_port():
    rc = ResetControl()
    rc.write(0, 1, 0x02)
    rc2 = ResetControl()
    rc2.restore(json_round_trip(rc.snapshot()))
    assert rc2.read(0, 1) == 0x02
    dp = DebugPort()
    for v in (1, 2, 0x55):
        dp.write(0, 1, v)
    dp2 = DebugPort()
    dp2.restore(json_round_trip(dp.snapshot()))
    assert (dp2.read(0, 1), dp2.writes, list(dp2.history)) == (0x55, 3, [1, 2, 0x55])


def test_pm_timer_counts_on_from_the_saved_count():
    now = [100.0]
    a = AcpiPm(poweroff=lambda: None, clock=lambda: now[0])
    now[0] = 101.0                       # one second of timer
    a.write(2, 2, 0x0100)                # PM1_EN: power button
    a.press_power_button()
    state = json_round_trip(a.snapshot())
    now[0] = 5000.0                      # the snapshot sat on disk
    b = AcpiPm(poweroff=lambda: None, clock=lambda: now[0])
    b.restore(state)
    assert b.read(8, 4) == int(1.0 * 3_579_545) & 0xFFFFFF
    assert b.read(0, 2) & 0x0100 and b.read(2, 2) == 0x0100


# --- PCI: the edu device behind its BAR, MSI, DMA ----------------------------------------

def test_edu_comes_back_where_the_guest_put_it():
    a = Pc()
    a.edu.config_write(0x10, 4, 0xD010_0000)                 # the guest moves BAR0
    a.bar = 0xD010_0000
    a.enable_msi()
    a.w(0x20, 0x80)                                          # interrupt after factorial
    a.w(0x08, 5)
    a.mem.write(0x10_0000, b"hello edu")
    a.dma(0x10_0000, 0x40000 + 16, 9, 1)                     # RAM -> device buffer
    a.root.config_address = 0x8000_0810
    state = json_round_trip({"root": a.root.snapshot(), "edu": a.edu.snapshot()})

    b = Pc()
    b.mem.write(0, a.mem.read(0, 2 << 20))
    b.root.restore(state["root"])
    b.edu.restore(state["edu"])
    assert b.edu.bar_address(0) == 0xD010_0000
    assert b.mmio.find(0xD010_0000) is not None and b.mmio.find(0xC000_0000) is None
    b.bar = 0xD010_0000
    assert b.root.config_address == 0x8000_0810
    assert b.r(0x08) == 120 and b.r(0x24) == 1 and b.r(0x20) == 0x80
    assert b.edu.msi_enabled and b.edu.msi_sent == a.edu.msi_sent
    b.dma(0x40000 + 16, 0x20_0000, 9, 1 | 2 | 4)              # device buffer -> RAM, interrupt
    assert b.mem.read(0x20_0000, 9) == b"hello edu"
    assert b.msis == [(0xFEE0_0000, 0x44)]
    assert b.edu.snapshot()["device"]["dma_transfers"] == 2


def test_edu_intx_line_is_at_its_level_after_restore():
    a = Pc()
    a.w(0x60, 1)                                             # raise: INTx asserted
    gsi = a.edu.config.get(0x3C, 1)
    assert a.lines[gsi].level
    b = Pc()
    b.edu.restore(json_round_trip(a.edu.snapshot()))
    assert b.lines[gsi].level
    b.w(0x64, 1)                                             # acknowledged: the line drops
    assert not b.lines[gsi].level


def test_a_device_without_support_fails_the_snapshot():
    from akvm.devices.pci.device import PciDevice
    pc = Pc()
    stranger = PciDevice(0x8086, 0x0B00, 0x088000, name="ioat")
    pc.root.add(stranger)
    with pytest.raises(SnapshotUnsupported, match="ioat .*PciDevice.* no snapshot support"):
        stranger.snapshot()


# --- virtio over PCI and MMIO -------------------------------------------------------------

def test_virtio_pci_queues_msix_and_irqfds_come_back():
    from tests.unit.test_irqroutes import RecordingVm
    from akvm.base.irqroutes import GsiRoutes

    def machine():
        vm = RecordingVm()
        routes = GsiRoutes(vm)
        m = PciMachine(VirtioRng(), irqfd=routes.msi_irqfd)
        m.vm, m.routes = vm, routes
        return m

    a = machine()
    a.bring_up(msix=True)
    q = a.queues[0]
    for n in (8, 16, 24):
        q.add([(DATA + 64 * n, n, True)])
    a.notify(0)
    assert q.take_used() == [(0, 8), (1, 16), (2, 24)]
    q.add([(DATA, 32, True)])                                # made available, not yet served
    state = json_round_trip(a.pci.snapshot())

    b = machine()
    b.mem.write(0, a.mem.read(0, 2 << 20))
    b.pci.restore(state)
    assert b.pci.device.status & VIRTIO_STATUS_DRIVER_OK
    vq = b.pci.device.queues[0]
    assert (vq.last_avail, vq.used_idx, vq.active) == (3, 3, True)
    # MSI routes for the unmasked vectors again, and the queue goes on where it was.
    assert b.vm.msi == [(24, 0xFEE0_0000, 0x40), (25, 0xFEE0_0000, 0x41)]
    fds = {gsi: fd for fd, gsi, deassign in b.vm.irqfds if not deassign}
    qb = copy.copy(q)
    qb.mem = b.mem
    qb.set_used_event(3)                                     # interrupt me after the next one
    b.notify(0)
    assert qb.take_used() == [(3, 32)]
    assert pending(fds[25]) == 1
    assert b.pci.snapshot()["device"]["virtio"]["requests"] == 4
    for m in (a, b):
        m.device.close()
        m.routes.close()


def test_virtio_mmio_comes_back_with_its_line_high():
    mem = new_memory()

    def device():
        d = VirtioRng()
        t = VirtioMmio(d, IrqLine(5))
        d.set_dma(DirectDma(mem))
        return d, t

    da, ta = device()
    (qa,) = bring_up(da, mem)
    qa.add([(DATA, 8, True)])
    da.queue_notified(0)
    assert ta.irq.level and qa.take_used() == [(0, 8)]
    db, tb = device()
    tb.restore(json_round_trip(ta.snapshot()))
    assert tb.irq.level and tb.read(0x60, 4) == 1
    qa.add([(DATA, 8, True)])
    db.queue_notified(0)
    assert qa.take_used() == [(1, 8)]
    tb.write(0x64, 4, 1)                                     # InterruptACK
    assert not tb.irq.level
    da.close()
    db.close()


def test_virtio_device_without_support_fails():
    from akvm.devices.virtio.device import VirtioDevice
    with pytest.raises(SnapshotUnsupported, match="no snapshot support"):
        VirtioDevice([4], name="virtio-x").snapshot()


# --- VT-d ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rig", [Rig, DoorbellRig], ids=["python", "c-doorbell"])
def test_vtd_registers_queue_and_fault_records_come_back(rig):
    a = rig()
    a.enable(qi=True)
    a.w32(0x38, 0)                                           # FECTL: unmask fault events
    a.w32(0x3C, 0xD0)
    a.w32(0x40, 0xFEE0_0000)
    table = a.page()
    a.set_context(SID, table=table, did=4)
    a.map(table, 0x1000, a.data_page(0), perms=1)            # read-only
    for _ in range(3):
        with pytest.raises(Exception):
            a.dma().write(0x1000, b"x")                      # write faults, recorded
    a.submit((0x5 | 1 << 5, 0))                              # a wait descriptor (status write none)
    state = json_round_trip(a.iommu.snapshot())

    b = rig()
    b.mem.write(0, a.mem.read(0, 16 << 20))
    b.iommu.restore(state)
    for off, size in ((0x1C, 4), (0x20, 8), (0x34, 4), (0x38, 4), (0x80, 8), (0x88, 8), (0x90, 8),
                      (0x220, 8), (0x228, 8), (0x230, 8), (0x238, 8), (0x250, 8), (0x258, 8)):
        assert b.iommu.read(off, size) == a.iommu.read(off, size), hex(off)
    assert b.iommu.stats()["faults"] == a.iommu.stats()["faults"]
    # The caches come back empty: the next DMA walks the tables again (an IOTLB miss).
    assert b.iommu.stats()["iotlb"] == {}
    assert b.dma().read(0x1000, 4) == bytes(4)
    assert b.iommu.stats()["iotlb"][4]["misses"] == 1
    b.tail, b.queue = a.tail, a.queue
    b.submit((0x5 | 1 << 5, 0))                              # the queue goes on from IQT
    assert b.r64(0x80) == b.r64(0x88) == (a.tail + 1) % 256 << 4
    if rig is DoorbellRig:
        assert b.in_c == 1                                   # C had the restored queue


def test_pack_checks_sizes():
    assert unpack(pack(b"abc"), 3) == b"abc"
    with pytest.raises(ValueError):
        unpack(pack(b"abc"), 4)
    with pytest.raises(ValueError):
        unpack("not base64!")


# --- the e1000 ------------------------------------------------------------------------------

def microwire_clock(nic, eecd, bits):
    """Clock `bits` (a string of 0/1) into the EEPROM; the DO bits read after each edge."""
    from akvm.devices import e1000 as E
    out = []
    for bit in bits:
        eecd = eecd | E.EECD_DI if bit == "1" else eecd & ~E.EECD_DI
        nic.w(E.EECD, eecd)
        nic.w(E.EECD, eecd | E.EECD_SK)
        out.append(int(bool(nic.r(E.EECD) & E.EECD_DO)))
        nic.w(E.EECD, eecd)
    return out


def test_e1000_reads_the_same_everywhere_and_goes_on_with_what_was_half_done():
    """Rings, filters, PHY, EERD, the I/O window, a Microwire read half clocked out, a
    TCP/IP context and a packet without its EOP descriptor yet, a received frame held for
    want of descriptors, INTA# high: all come back, and the work goes on the same."""
    from akvm.devices import e1000 as E
    from tests import netframes as F
    from tests.unit.test_e1000 import MAC, Nic
    a = Nic()
    a.tx_setup()
    a.rx_setup(rctl=E.RCTL_SECRC)                            # 8 descriptors, 7 free
    a.w(E.IMS, E.ICR_RXT0 | E.ICR_TXDW)
    for reg, value in ((E.ITR, 0x1234), (E.VFTA + 8, 0xDEAD_BEEF), (E.MTA + 20, 0x10),
                       (E.RAL0 + 8, 0x1122_3344), (E.RAH0 + 8, 0x5566 | E.RAH_AV),
                       (E.MDIC, E.MDIC_OP_WRITE | 1 << 21 | E.PHY_AUTONEG_ADV << 16 | 0x01E1),
                       (E.EERD, 3 << 8 | E.EERD_START)):
        a.w(reg, value)
    a.pio.write(a.dev.bar_address(1) + E.IOADDR, 4, E.RAL0 + 8)
    eecd = E.EECD_REQ | E.EECD_CS
    a.w(E.EECD, eecd)
    first_bits = microwire_clock(a, eecd, "110000001" + "0" * 5)    # READ word 1, 5 bits out
    a.tx_desc(14 | 34 << 8 | 0 << 16 | 34 << 32 | 50 << 40, E.TXD_CMD_DEXT << 24)  # a context
    a.tx_legacy(F.eth(F.BROADCAST, b"\x02" * 6, F.ETH_IP, bytes(20)), cmd=0)     # no EOP yet
    a.tx_go()
    frames = [F.eth(MAC, b"\x02" * 6, F.ETH_IP, bytes([n]) * 100) for n in range(8)]
    a.deliver(*frames)                                       # seven fit, one is held
    assert a.dev._held == frames[7] and a.line.level and a.dev._tx_packet

    b = Nic()
    b.mem.write(0, a.mem.read(0, 16 << 20))
    b.dev.restore(json_round_trip(a.dev.snapshot()))
    assert json_round_trip(b.dev.snapshot()) == json_round_trip(a.dev.snapshot())
    assert b.line.level
    for name in ("tdt", "tx_count", "rx_count", "bufsize", "rx_next"):
        setattr(b, name, getattr(a, name))
    io = a.dev.bar_address(1)
    assert b.pio.read(io + E.IOADDR, 4) == a.pio.read(io + E.IOADDR, 4) == E.RAL0 + 8
    for offset in range(0, E.MMIO_SIZE, 4):                  # ICR and statistics clear on both
        assert b.r(offset) == a.r(offset), hex(offset)
    assert not b.line.level and not a.line.level

    b.dev._go_on()                                           # what start() does after a restore
    rest = microwire_clock(b, eecd, "0" * 11)
    assert rest == microwire_clock(a, eecd, "0" * 11)
    word = int("".join(map(str, first_bits[-5:] + rest)), 2)
    assert word == MAC[2] | MAC[3] << 8
    for nic in (a, b):
        nic.tx_legacy(bytes(range(40)), cmd=E.TXD_CMD_EOP | E.TXD_CMD_RS)
        nic.tx_go()
        assert [nic.take() for _ in range(7)] == frames[:7]
        nic.w(E.RDT, (nic.rx_next - 1) % nic.rx_count)      # room: the held frame comes in
        assert nic.take() == frames[7]
    assert b.wire.sent == a.wire.sent[-1:] and len(b.wire.sent[0]) == 14 + 20 + 40
    assert b.line.level and a.line.level
    assert json_round_trip(b.dev.snapshot()) == json_round_trip(a.dev.snapshot())


def test_e1000_frames_c_gathered_and_did_not_send_yet_are_saved():
    """The vCPU's TDT write gathered two frames in C for the backend's thread, which had
    not had its turn: a restored device sends them, and raises the INTA# C left to it."""
    from akvm.base.native import ffi, lib
    from akvm.devices import e1000 as E
    from tests.unit.test_e1000_native import BUFS, EOP, RAM, RS, TX, Side, legacy
    a = Side(native=True)
    a.mem.write(BUFS, bytes(range(256)) * 8)
    a.write(E.IMS, E.ICR_TXDW)
    for i, length in enumerate((60, 1514)):
        a.mem.write(TX + 16 * i, legacy(length, EOP | RS, BUFS))
    a.run_page.mmio(a.dev.bar_address(0) + E.TDT, 4, True, 2)
    assert lib.akvm_e1000_exit(a.dev.handle, ffi.cast("void *", a.run_page.address))
    state = json_round_trip(a.dev.snapshot())
    assert len(state["device"]["queued"]) == 2 and not a.wire.sent and not a.dev.intx_asserted

    b = Side(native=False)
    b.mem.write(0, a.mem.read(0, RAM))
    b.dev.restore(state)
    b.dev._go_on()
    a.turn()                                                 # the original's thread, meanwhile
    assert [len(f) for f in a.wire.sent] == [60, 1514] and b.wire.sent == a.wire.sent
    assert b.dev.intx_asserted and a.dev.intx_asserted
    assert b.snapshot()[2:] == a.snapshot()[2:]
