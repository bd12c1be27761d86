"""PCI: configuration mechanism #1 and ECAM, the type 0 header, BARs, INTx, MSI, MSI-X.

Everything goes through real Bus objects the way a vCPU's port-I/O and MMIO
exits would; interrupts land in IrqLines and a recording MSI sink.
"""
import random
import threading

import pytest

from akvm.devices.pci import BarKind, PciDevice, PciError, PciHostBridge, PciRoot
from akvm.devices.pci.config import (
    BAR0, CAP_ID_MSI, CAP_ID_MSIX, CAP_PTR, COMMAND, COMMAND_BUS_MASTER,
    COMMAND_INTERRUPT_DISABLE, COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE, ConfigSpace, ConfigSpaceError,
    HEADER_TYPE, INTERRUPT_LINE, INTERRUPT_PIN, STATUS, STATUS_CAPABILITIES_LIST,
    STATUS_INTERRUPT_STATUS, STATUS_RECEIVED_MASTER_ABORT, STATUS_SIGNALED_TARGET_ABORT,
)
from akvm.devices.pci.host import CONFIG_ADDRESS, CONFIG_DATA
from akvm.base.bus import Bus
from akvm.base.irq import IrqLine

MMIO_WINDOW = (0xC000_0000, 0xE000_0000)
ECAM_BASE = 0xE000_0000
ECAM_SIZE = 256 << 20
MSI_ADDR = 0xFEE0_0000


class Regs:
    """A BAR's register file: what the device decodes behind its BAR."""

    def __init__(self, size):
        self.mem = bytearray(size)

    def read(self, offset, size):
        return int.from_bytes(self.mem[offset:offset + size], "little")

    def write(self, offset, size, value):
        self.mem[offset:offset + size] = value.to_bytes(size, "little")


class TestDevice(PciDevice):
    """1af4:beef, class ff/00/00, with one BAR of each kind, MSI and MSI-X.

    BAR0 mem32 4 KiB, BAR1 I/O 32 ports, BAR2-3 mem64 prefetchable 16 KiB,
    BAR4 mem32 8 KiB holding the MSI-X table (at 0) and PBA (at 0x1000).
    """
    __test__ = False

    def __init__(self, pin=1, msi_vectors=4, msi_maskable=True, msix_vectors=8):
        super().__init__(0x1AF4, 0xBEEF, 0xFF0000, revision=3, subsystem_vendor_id=0x1AF4,
                         subsystem_id=0x0042, interrupt_pin=pin, name="testdev")
        self.regs0 = Regs(0x1000)
        self.regs1 = Regs(32)
        self.regs2 = Regs(0x4000)
        self.moves = []
        self.add_bar(0, 0x1000, BarKind.MEM32, self.regs0, on_move=self._moved)
        self.add_bar(1, 32, BarKind.IO, self.regs1, on_move=self._moved)
        self.add_bar(2, 0x4000, BarKind.MEM64, self.regs2, prefetchable=True, on_move=self._moved)
        self.add_bar(4, 0x2000, BarKind.MEM32)
        if msi_vectors:
            self.add_msi(msi_vectors, addr64=True, maskable=msi_maskable)
        if msix_vectors:
            self.add_msix(msix_vectors, bar=4, table_offset=0, pba_offset=0x1000)

    def _moved(self, bar, old, new):
        self.moves.append((bar.index, old, new))


class Pc:
    """Buses, a PciRoot wired as the machine wires it, and interrupt recorders."""

    def __init__(self):
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.lines = {}
        self.msis = []
        self.root = PciRoot(self.pio, self.mmio, mmio_window=MMIO_WINDOW,
                            irq=self._line, msi=lambda a, d: self.msis.append((a, d)))
        self.pio.register(CONFIG_ADDRESS, 4, self.root.config_address_port, "pci-cf8")
        self.pio.register(CONFIG_DATA, 4, self.root.config_data_port, "pci-cfc")
        self.mmio.register(ECAM_BASE, ECAM_SIZE, self.root.ecam, "pci-ecam")
        self.root.add(PciHostBridge(), slot=0)

    def _line(self, gsi):
        self.lines[gsi] = IrqLine(gsi)
        return self.lines[gsi]

    # mechanism #1
    def latch(self, bus, dev, fn, reg, enable=True):
        value = bus << 16 | dev << 11 | fn << 8 | reg & 0xFC
        self.pio.write(CONFIG_ADDRESS, 4, (0x8000_0000 if enable else 0) | value)

    def cfg_read(self, bdf, reg, size=4):
        self.latch(*bdf, reg)
        return self.pio.read(CONFIG_DATA + (reg & 3), size)

    def cfg_write(self, bdf, reg, size, value):
        self.latch(*bdf, reg)
        self.pio.write(CONFIG_DATA + (reg & 3), size, value)

    # ECAM
    def ecam_addr(self, bdf, reg):
        bus, dev, fn = bdf
        return ECAM_BASE + (bus << 20 | dev << 15 | fn << 12 | reg)

    def ecam_read(self, bdf, reg, size=4):
        return self.mmio.read(self.ecam_addr(bdf, reg), size)

    def ecam_write(self, bdf, reg, size, value):
        self.mmio.write(self.ecam_addr(bdf, reg), size, value)

    def find_caps(self, bdf):
        caps = []
        if self.cfg_read(bdf, STATUS, 2) & STATUS_CAPABILITIES_LIST:
            ptr = self.cfg_read(bdf, CAP_PTR, 1) & ~3
            while ptr and len(caps) < 48:
                caps.append((self.cfg_read(bdf, ptr, 1), ptr))
                ptr = self.cfg_read(bdf, ptr + 1, 1) & ~3
        return caps


HB = (0, 0, 0)


@pytest.fixture
def pc():
    return Pc()


@pytest.fixture
def dev(pc):
    d = TestDevice()
    addr = pc.root.add(d)
    d.bdf = tuple(addr)
    return d


# --- the host bridge and mechanism #1 ------------------------------------------------

def test_host_bridge_identity(pc):
    assert pc.cfg_read(HB, 0x00) == 0x29C0_8086
    assert pc.cfg_read(HB, 0x08) >> 8 == 0x060000          # class 06/00/00
    assert pc.cfg_read(HB, 0x0C) >> 16 & 0xFF == 0x00       # header type 0, single function
    assert pc.cfg_read(HB, INTERRUPT_PIN, 1) == 0
    assert pc.find_caps(HB) == []


def test_absent_device_function_and_bus_read_all_ones(pc, dev):
    assert pc.cfg_read((0, 7, 0), 0) == 0xFFFF_FFFF
    assert pc.cfg_read((0, 7, 0), 0, 2) == 0xFFFF
    assert pc.cfg_read((0, 0, 3), 0) == 0xFFFF_FFFF         # absent function of a present device
    assert pc.cfg_read((0, dev.bdf[1], 1), 0x08) == 0xFFFF_FFFF
    assert pc.cfg_read((5, 0, 0), 0) == 0xFFFF_FFFF
    assert pc.cfg_read((255, 31, 7), 0xFC, 1) == 0xFF
    pc.cfg_write((0, 7, 0), COMMAND, 2, 0xFFFF)             # goes nowhere
    assert pc.cfg_read((0, 7, 0), COMMAND, 2) == 0xFFFF


def test_byte_word_dword_lanes_of_config_data(pc, dev):
    bdf = dev.bdf
    assert pc.cfg_read(bdf, 0x00, 4) == 0xBEEF_1AF4
    pc.latch(*bdf, 0x00)
    assert pc.pio.read(CONFIG_DATA, 1) == 0xF4
    assert pc.pio.read(CONFIG_DATA + 1, 1) == 0x1A
    assert pc.pio.read(CONFIG_DATA + 2, 2) == 0xBEEF
    assert pc.pio.read(CONFIG_DATA + 3, 1) == 0xBE
    assert pc.pio.read(CONFIG_DATA + 1, 2) == 0xEF1A
    assert pc.pio.read(CONFIG_DATA + 2, 4) == 0xFFFF_FFFF   # crosses the dword: no decode
    # byte writes into lanes 0 and 1 of dword 0x0C (cache line size, latency timer)
    pc.latch(*bdf, 0x0C)
    pc.pio.write(CONFIG_DATA + 0, 1, 0x10)
    pc.pio.write(CONFIG_DATA + 1, 1, 0x40)
    assert pc.cfg_read(bdf, 0x0C) & 0xFFFF == 0x4010
    # a word write to the upper half of dword 0x04 reaches STATUS, not COMMAND
    pc.cfg_write(bdf, COMMAND, 2, COMMAND_BUS_MASTER)
    pc.latch(*bdf, 0x04)
    pc.pio.write(CONFIG_DATA + 2, 2, 0xFFFF)
    assert pc.cfg_read(bdf, COMMAND, 2) == COMMAND_BUS_MASTER


def test_latch_without_enable_reaches_nothing(pc):
    pc.latch(*HB, 0, enable=False)
    assert pc.pio.read(CONFIG_DATA, 4) == 0xFFFF_FFFF
    pc.pio.write(CONFIG_DATA, 4, 0)                          # ignored
    assert pc.cfg_read(HB, 0) == 0x29C0_8086


def test_config_address_register(pc):
    pc.pio.write(CONFIG_ADDRESS, 4, 0xFFFF_FFFF)
    assert pc.pio.read(CONFIG_ADDRESS, 4) == 0x80FF_FFFC    # 30:24 and 1:0 read as zero
    pc.latch(*HB, 0x08)
    pc.pio.write(CONFIG_ADDRESS, 1, 0)                       # not a dword: ordinary I/O
    pc.pio.write(CONFIG_ADDRESS + 2, 2, 0)
    assert pc.pio.read(CONFIG_ADDRESS, 4) == 0x8000_0008


def test_non_dword_config_address_accesses_reach_legacy_io(pc):
    class Reset:
        value = 0

        def read(self, offset, size):
            return self.value

        def write(self, offset, size, value):
            self.value = value

    reset = Reset()
    pc.root.config_address_port.legacy_io.register(0xCF9, 1, reset)
    pc.latch(*HB, 0x08)
    pc.pio.write(0xCF9, 1, 0x06)
    assert reset.value == 0x06
    assert pc.pio.read(0xCF9, 1) == 0x06
    assert pc.pio.read(CONFIG_ADDRESS, 4) == 0x8000_0008
    assert pc.pio.read(0xCFA, 1) == 0xFF                     # nothing there


def test_ecam_decode_equals_mechanism_1(pc, dev):
    for bdf in (HB, dev.bdf, (0, 9, 0), (0, 0, 5), (3, 1, 0)):
        for reg in (0x00, 0x04, 0x08, 0x0C, 0x10, 0x2C, 0x34, 0x3C, 0x40, 0xFC):
            assert pc.ecam_read(bdf, reg) == pc.cfg_read(bdf, reg), (bdf, reg)
            assert pc.ecam_read(bdf, reg + 2, 2) == pc.cfg_read(bdf, reg + 2, 2)
            assert pc.ecam_read(bdf, reg + 1, 1) == pc.cfg_read(bdf, reg + 1, 1)
    # writes land in the same place
    pc.ecam_write(dev.bdf, INTERRUPT_LINE, 1, 0x0B)
    assert pc.cfg_read(dev.bdf, INTERRUPT_LINE, 1) == 0x0B
    # extended space is ECAM-only; a qword is two dwords
    assert pc.ecam_read(dev.bdf, 0x100) == 0
    assert pc.ecam_read(dev.bdf, 0x00, 8) == pc.cfg_read(dev.bdf, 0) | pc.cfg_read(dev.bdf, 4) << 32
    assert pc.ecam_read((0, 9, 0), 0x800) == 0xFFFF_FFFF


def test_read_only_fields_stay_read_only(pc, dev):
    bdf = dev.bdf
    before = {reg: pc.cfg_read(bdf, reg) for reg in (0x00, 0x08, 0x2C, 0x34)}
    for reg in before:
        pc.cfg_write(bdf, reg, 4, 0xFFFF_FFFF)
        pc.cfg_write(bdf, reg, 4, 0)
    assert {reg: pc.cfg_read(bdf, reg) for reg in before} == before
    pc.cfg_write(bdf, HEADER_TYPE, 1, 0xFF)
    assert pc.cfg_read(bdf, HEADER_TYPE, 1) == 0
    pc.cfg_write(bdf, INTERRUPT_PIN, 1, 4)
    assert pc.cfg_read(bdf, INTERRUPT_PIN, 1) == 1
    pc.cfg_write(HB, 0x00, 4, 0)
    assert pc.cfg_read(HB, 0x00) == 0x29C0_8086
    # STATUS: Capabilities List is read-only, error bits are write-1-to-clear
    dev.config.set_bits(STATUS, 2, STATUS_RECEIVED_MASTER_ABORT | STATUS_SIGNALED_TARGET_ABORT)
    pc.cfg_write(bdf, STATUS, 2, 0)
    status = pc.cfg_read(bdf, STATUS, 2)
    assert status & STATUS_RECEIVED_MASTER_ABORT and status & STATUS_SIGNALED_TARGET_ABORT
    pc.cfg_write(bdf, STATUS, 2, STATUS_RECEIVED_MASTER_ABORT | STATUS_CAPABILITIES_LIST)
    status = pc.cfg_read(bdf, STATUS, 2)
    assert not status & STATUS_RECEIVED_MASTER_ABORT
    assert status & STATUS_SIGNALED_TARGET_ABORT
    assert status & STATUS_CAPABILITIES_LIST


# --- BARs ------------------------------------------------------------------------------

def _size(pc, bdf, reg):
    old = pc.cfg_read(bdf, reg)
    pc.cfg_write(bdf, reg, 4, 0xFFFF_FFFF)
    sized = pc.cfg_read(bdf, reg)
    pc.cfg_write(bdf, reg, 4, old)
    return sized


def test_bar_sizing(pc, dev):
    bdf = dev.bdf
    assert _size(pc, bdf, BAR0) == 0xFFFF_F000                      # 4 KiB, mem32
    assert _size(pc, bdf, BAR0 + 4) == 0xFFFF_FFE1                  # 32 ports, I/O
    assert _size(pc, bdf, BAR0 + 8) == 0xFFFF_C00C                  # 16 KiB, mem64, prefetchable
    assert _size(pc, bdf, BAR0 + 12) == 0xFFFF_FFFF                 # its upper half
    assert _size(pc, bdf, BAR0 + 16) == 0xFFFF_E000                 # 8 KiB, mem32
    assert _size(pc, bdf, BAR0 + 20) == 0                           # unimplemented
    assert _size(pc, bdf, 0x30) == 0                                # no expansion ROM
    # the values were restored: the BARs decode where firmware put them
    assert dev.bar_address(0) == pc.cfg_read(bdf, BAR0) & ~0xF


def test_firmware_placed_bars_in_windows(pc, dev):
    mem = [dev.bar_address(i) for i in (0, 2, 4)]
    assert all(MMIO_WINDOW[0] <= a < MMIO_WINDOW[1] for a in mem)
    assert all(a % dev.bars[i].size == 0 for a, i in zip(mem, (0, 2, 4)))
    io = dev.bar_address(1)
    assert 0xC000 <= io < 0x10000 and io % 32 == 0
    cmd = pc.cfg_read(dev.bdf, COMMAND, 2)
    assert cmd & COMMAND_MEMORY_SPACE and cmd & COMMAND_IO_SPACE
    pc.mmio.write(mem[0] + 0x10, 4, 0x1234_5678)
    assert dev.regs0.read(0x10, 4) == 0x1234_5678
    pc.pio.write(io + 4, 2, 0xABCD)
    assert dev.regs1.read(4, 2) == 0xABCD


def test_relocation_moves_the_range(pc, dev):
    bdf = dev.bdf
    old = dev.bar_address(0)
    new = 0xD000_0000
    pc.cfg_write(bdf, BAR0, 4, new)
    assert dev.bar_address(0) == new
    assert pc.mmio.find(old) is None
    pc.mmio.write(old, 4, 0xDEAD)
    assert pc.mmio.unclaimed_writes == 1
    pc.mmio.write(new + 8, 4, 0xBEEF)
    assert dev.regs0.read(8, 4) == 0xBEEF
    assert dev.moves[-1] == (0, old, new)
    # 64-bit BAR above 4 GiB
    pc.cfg_write(bdf, BAR0 + 8, 4, 0x0000_0000)
    pc.cfg_write(bdf, BAR0 + 12, 4, 0x0000_0008)
    assert dev.bar_address(2) == 0x8_0000_0000
    pc.mmio.write(0x8_0000_0000 + 0x3FFC, 4, 7)
    assert dev.regs2.read(0x3FFC, 4) == 7
    # I/O BAR
    pc.cfg_write(bdf, BAR0 + 4, 4, 0xD000)
    assert pc.cfg_read(bdf, BAR0 + 4) == 0xD001
    pc.pio.write(0xD000, 1, 0x5A)
    assert dev.regs1.mem[0] == 0x5A


def test_relocation_onto_a_busy_range_is_not_decoded(pc, dev):
    pc.mmio.register(0xD100_0000, 0x1000, Regs(0x1000), "other")
    pc.cfg_write(dev.bdf, BAR0, 4, 0xD100_0000)             # no exception: the guest's mistake
    assert dev.bar_address(0) is None
    pc.cfg_write(dev.bdf, BAR0, 4, 0xD200_0000)
    assert dev.bar_address(0) == 0xD200_0000


def test_decode_enable_bits(pc, dev):
    bdf = dev.bdf
    mem, io = dev.bar_address(0), dev.bar_address(1)
    pc.cfg_write(bdf, COMMAND, 2, COMMAND_IO_SPACE)          # memory decode off
    assert dev.bar_address(0) is None and pc.mmio.find(mem) is None
    assert pc.mmio.read(mem, 4) == 0xFFFF_FFFF
    assert dev.bar_address(1) == io
    pc.cfg_write(bdf, COMMAND, 2, COMMAND_MEMORY_SPACE)      # I/O decode off
    assert dev.bar_address(0) == mem and pc.pio.find(io) is None
    assert {(1, io, None), (0, None, mem)} <= set(dev.moves[-3:])
    # sizing with decode off moves nothing
    pc.cfg_write(bdf, COMMAND, 2, 0)
    n = len(dev.moves)
    assert _size(pc, bdf, BAR0) == 0xFFFF_F000
    assert len(dev.moves) == n


# --- capabilities ----------------------------------------------------------------------

def test_capability_list_walk(pc, dev):
    caps = pc.find_caps(dev.bdf)
    assert [cid for cid, _ in caps] == [CAP_ID_MSI, CAP_ID_MSIX]
    assert all(0x40 <= off < 0x100 and off % 4 == 0 for _, off in caps)
    assert caps == dev.config.capabilities()
    assert dev.config.find_capability(CAP_ID_MSIX) == dev.msix.offset


def test_config_space_masks_and_lists():
    c = ConfigSpace()
    c.set(0x40, 4, 0x1122_3344)
    c.set_wmask(0x40, 4, 0x0000_FF0F)
    c.write(0x40, 4, 0xFFFF_FFFF)
    assert c.read(0x40, 4) == 0x1122_FF4F
    c.set(0x44, 1, 0xF0)
    c.set_w1cmask(0x44, 1, 0x30)
    c.write(0x44, 1, 0x10)
    assert c.read(0x44, 1) == 0xE0
    assert c.read(0xFFE, 4) == 0xFFFF_FFFF                  # past the end
    a = c.add_capability(0x09, 5)
    b = c.add_capability(0x01, 8)
    assert c.capabilities() == [(0x09, a), (0x01, b)] and b == a + 8
    e1 = c.add_extended_capability(0x0001, 1, 8)
    e2 = c.add_extended_capability(0x000B, 1, 12)
    assert c.extended_capabilities() == [(0x0001, 0x100), (0x000B, e2)] and e1 == 0x100
    c.set(b + 1, 1, a)                                      # a loop the guest cannot make
    assert len(c.capabilities()) <= 48


def test_capability_at_a_given_offset_and_pcie():
    d = PciDevice(0x8086, 0x1234, 0x088000)
    d.config.place_next_capability(0x90)
    off = d.add_pcie(0x9)
    assert off == 0x90 and d.config.capabilities() == [(0x10, 0x90)]
    assert d.config.get(0x92, 2) == 0x92                    # version 2, RC integrated endpoint
    d.config.write(0x98, 2, 0)                              # Device Control is the driver's
    assert d.config.read(0x98, 2) == 0
    d.config.set(0x9A, 2, 0x0F)
    d.config.write(0x9A, 2, 0x05)                            # Device Status: RW1C
    assert d.config.read(0x9A, 2) == 0x0A
    for bad in (0x40, 0x91, 0x100):                         # before the last, unaligned, past
        with pytest.raises(ConfigSpaceError):
            d.config.place_next_capability(bad)


# --- MSI -------------------------------------------------------------------------------

def _program_msi(pc, dev, data=0x4040, mme=0, enable=True):
    off = dev.msi.offset
    pc.cfg_write(dev.bdf, COMMAND, 2, pc.cfg_read(dev.bdf, COMMAND, 2) | COMMAND_BUS_MASTER)
    pc.cfg_write(dev.bdf, off + 4, 4, MSI_ADDR | 0x3)       # bits 1:0 are reserved
    pc.cfg_write(dev.bdf, off + 8, 4, 0)
    pc.cfg_write(dev.bdf, off + 0xC, 2, data)
    pc.cfg_write(dev.bdf, off + 2, 2, (mme << 4) | (1 if enable else 0))


def test_msi_capability_registers(pc, dev):
    off = dev.msi.offset
    control = pc.cfg_read(dev.bdf, off + 2, 2)
    assert control == (2 << 1) | (1 << 7) | (1 << 8)        # 4 vectors, 64-bit, maskable
    pc.cfg_write(dev.bdf, off + 2, 2, 0xFFFF)
    assert pc.cfg_read(dev.bdf, off + 2, 2) == control | 0x71
    pc.cfg_write(dev.bdf, off + 4, 4, 0xFFFF_FFFF)
    assert pc.cfg_read(dev.bdf, off + 4) == 0xFFFF_FFFC
    pc.cfg_write(dev.bdf, off + 0x10, 4, 0xFFFF_FFFF)       # Mask Bits: one per vector
    assert pc.cfg_read(dev.bdf, off + 0x10) == 0xF
    pc.cfg_write(dev.bdf, off + 0x14, 4, 0xFFFF_FFFF)       # Pending Bits: read-only
    assert pc.cfg_read(dev.bdf, off + 0x14) == 0


def test_msi_signal_delivers(pc, dev):
    _program_msi(pc, dev)
    assert dev.signal(0)
    assert pc.msis == [(MSI_ADDR, 0x4040)]
    assert not pc.lines[dev.config.get(INTERRUPT_LINE, 1)].level


def test_msi_multiple_messages(pc, dev):
    _program_msi(pc, dev, data=0x4041, mme=2)               # 4 vectors: data bits 1:0 are ours
    dev.signal(3)
    dev.signal(1)
    assert pc.msis == [(MSI_ADDR, 0x4043), (MSI_ADDR, 0x4041)]
    _program_msi(pc, dev, data=0x4040, mme=0)               # one vector: everything shares it
    dev.signal(3)
    assert pc.msis[-1] == (MSI_ADDR, 0x4040)


def test_msi_mask_and_pending(pc, dev):
    _program_msi(pc, dev, data=0x50, mme=2)
    off = dev.msi.offset
    pc.cfg_write(dev.bdf, off + 0x10, 4, 0b0010)            # mask vector 1
    assert not dev.signal(1)
    assert pc.msis == []
    assert pc.cfg_read(dev.bdf, off + 0x14) == 0b0010
    pc.cfg_write(dev.bdf, off + 0x10, 4, 0)
    assert pc.msis == [(MSI_ADDR, 0x51)]
    assert pc.cfg_read(dev.bdf, off + 0x14) == 0


def test_msi_needs_bus_master(pc, dev):
    _program_msi(pc, dev)
    pc.cfg_write(dev.bdf, COMMAND, 2, pc.cfg_read(dev.bdf, COMMAND, 2) & ~COMMAND_BUS_MASTER)
    assert not dev.signal(0)
    assert pc.msis == [] and dev.msi_dropped == 1


# --- MSI-X -----------------------------------------------------------------------------

def _table(dev):
    return dev.bar_address(4)


def _program_msix_entry(pc, dev, vector, data, mask=False):
    base = _table(dev) + 16 * vector
    pc.mmio.write(base + 0, 4, MSI_ADDR | vector << 12)
    pc.mmio.write(base + 4, 4, 0)
    pc.mmio.write(base + 8, 4, data)
    pc.mmio.write(base + 12, 4, 1 if mask else 0)


def _enable_msix(pc, dev, function_mask=False):
    off = dev.msix.offset
    pc.cfg_write(dev.bdf, COMMAND, 2, pc.cfg_read(dev.bdf, COMMAND, 2) | COMMAND_BUS_MASTER)
    pc.cfg_write(dev.bdf, off + 2, 2, 0x8000 | (0x4000 if function_mask else 0))


def test_msix_capability_and_table(pc, dev):
    off = dev.msix.offset
    assert pc.cfg_read(dev.bdf, off + 2, 2) == 7                   # table size N-1
    assert pc.cfg_read(dev.bdf, off + 4) == 0x0000 | 4             # table at 0 in BAR4
    assert pc.cfg_read(dev.bdf, off + 8) == 0x1000 | 4             # PBA at 0x1000 in BAR4
    pc.cfg_write(dev.bdf, off + 4, 4, 0xFFFF_FFFF)                 # read-only
    assert pc.cfg_read(dev.bdf, off + 4) == 4
    table = _table(dev)
    for v in range(8):                                             # every vector starts masked
        assert pc.mmio.read(table + 16 * v + 12, 4) == 1
    _program_msix_entry(pc, dev, 2, 0x4062)
    assert pc.mmio.read(table + 32, 8) == MSI_ADDR | 2 << 12
    assert pc.mmio.read(table + 40, 4) == 0x4062
    pc.mmio.write(table + 44, 4, 0xFFFF_FFFE)                      # reserved bits
    assert pc.mmio.read(table + 44, 4) == 0
    pc.mmio.write(table + 0x1000, 8, 0xFF)                         # PBA is read-only
    assert pc.mmio.read(table + 0x1000, 8) == 0


def test_msix_signal_mask_and_pba(pc, dev):
    _enable_msix(pc, dev)
    _program_msix_entry(pc, dev, 2, 0x4062, mask=True)
    assert not dev.signal(2)
    assert pc.msis == []
    pba = _table(dev) + 0x1000
    assert pc.mmio.read(pba, 8) == 1 << 2
    pc.mmio.write(_table(dev) + 32 + 12, 4, 0)                     # unmask vector 2
    assert pc.msis == [(MSI_ADDR | 2 << 12, 0x4062)]
    assert pc.mmio.read(pba, 8) == 0
    assert dev.signal(2)
    assert len(pc.msis) == 2


def test_msix_function_mask(pc, dev):
    _program_msix_entry(pc, dev, 5, 0x4065)
    _enable_msix(pc, dev, function_mask=True)
    assert not dev.signal(5)
    assert pc.mmio.read(_table(dev) + 0x1000, 8) == 1 << 5
    _enable_msix(pc, dev, function_mask=False)
    assert pc.msis == [(MSI_ADDR | 5 << 12, 0x4065)]
    with pytest.raises(PciError):
        dev.signal(8)


def test_msix_takes_precedence_over_msi(pc, dev):
    _program_msi(pc, dev, data=0x40)
    _program_msix_entry(pc, dev, 0, 0x70)
    _enable_msix(pc, dev)
    dev.signal(0)
    assert pc.msis == [(MSI_ADDR, 0x70)]


# --- INTx ------------------------------------------------------------------------------

def test_intx_when_msi_is_off(pc, dev):
    slot = dev.bdf[1]
    gsi = pc.root.intx_gsi(slot, 1)
    assert 16 <= gsi < 24
    assert pc.cfg_read(dev.bdf, INTERRUPT_LINE, 1) == gsi
    line = pc.lines[gsi]
    assert dev.signal(0)
    assert line.level
    assert pc.cfg_read(dev.bdf, STATUS, 2) & STATUS_INTERRUPT_STATUS
    dev.lower_intx()
    assert not line.level
    assert not pc.cfg_read(dev.bdf, STATUS, 2) & STATUS_INTERRUPT_STATUS
    assert pc.msis == []


def test_intx_disable_and_msi_enable_gate_the_pin(pc, dev):
    line = pc.lines[pc.root.intx_gsi(dev.bdf[1], 1)]
    dev.signal(0)
    cmd = pc.cfg_read(dev.bdf, COMMAND, 2)
    pc.cfg_write(dev.bdf, COMMAND, 2, cmd | COMMAND_INTERRUPT_DISABLE)
    assert not line.level
    assert pc.cfg_read(dev.bdf, STATUS, 2) & STATUS_INTERRUPT_STATUS   # still requested
    pc.cfg_write(dev.bdf, COMMAND, 2, cmd)
    assert line.level
    _program_msi(pc, dev)                                               # MSI on: INTx off
    assert not line.level


def test_intx_routes_and_shared_lines(pc):
    a, b = TestDevice(pin=1), TestDevice(pin=2, msi_vectors=0, msix_vectors=0)
    pc.root.add(a, slot=3)
    pc.root.add(b, slot=2)                                  # INTB# of slot 2 = INTA# of slot 3
    gsi = pc.root.intx_gsi(3, 1)
    assert pc.root.intx_gsi(2, 2) == gsi
    routes = {(r.device, r.pin): r.ioapic_pin for r in pc.root.intx_routes()}
    assert routes == {(3, 0): gsi, (2, 1): gsi}
    assert all(r.level_triggered and r.active_high and r.inti_flags == 0xD
               for r in pc.root.intx_routes())
    line = pc.lines[gsi]
    a.signal()
    b.signal()
    a.lower_intx()
    assert line.level                                       # wired-OR: b still asserts
    b.lower_intx()
    assert not line.level
    assert line.raised == 1


# --- topology --------------------------------------------------------------------------

def test_slots_and_functions(pc):
    d1, d2 = TestDevice(pin=0), TestDevice(pin=0)
    assert tuple(pc.root.add(d1)) == (0, 1, 0)
    assert tuple(pc.root.add(d2, slot=1, function=2)) == (0, 1, 2)
    assert pc.cfg_read((0, 1, 0), HEADER_TYPE, 1) == 0x80   # multi-function
    assert pc.cfg_read((0, 1, 2), 0) == 0xBEEF_1AF4
    with pytest.raises(PciError):
        pc.root.add(TestDevice(), slot=1)
    with pytest.raises(PciError):
        pc.root.add(d1, slot=5)                             # attached already
    assert [str(a) for a, _ in pc.root.devices()] == ["00:00.0", "00:01.0", "00:01.2"]


def test_bad_device_declarations():
    d = PciDevice(1, 2, 0)
    with pytest.raises(PciError):
        d.add_bar(0, 0x1800)                                # not a power of two
    with pytest.raises(PciError):
        d.add_bar(5, 0x1000, BarKind.MEM64)                 # needs BAR5 and BAR6
    d.add_bar(0, 0x1000, BarKind.MEM64)
    with pytest.raises(PciError):
        d.add_bar(1, 0x1000)                                # upper half of BAR0
    with pytest.raises(PciError):
        d.add_msix(64, bar=0, table_offset=0, pba_offset=0x200)   # table overlaps PBA
    with pytest.raises(PciError):
        d.add_msi(3)


# --- the guest is untrusted ------------------------------------------------------------

def test_random_config_and_bar_writes_never_raise(pc, dev):
    rng = random.Random(1234)
    for _ in range(4000):
        bdf = rng.choice([HB, dev.bdf, (0, 9, 0)])
        size = rng.choice([1, 2, 4])
        reg = rng.randrange(0, 0x1000 - size)
        value = rng.getrandbits(8 * size)
        if rng.random() < 0.5:
            pc.ecam_write(bdf, reg, size, value)
        else:
            pc.cfg_write(bdf, reg & 0xFF, size, value)
        if rng.random() < 0.1 and dev.bar_address(4) is not None:
            pc.mmio.write(dev.bar_address(4) + rng.randrange(0, 0x2000 - 8),
                          rng.choice([1, 2, 4, 8]), rng.getrandbits(32))
        if rng.random() < 0.05:
            dev.signal(rng.randrange(8))
            dev.lower_intx()
    assert pc.cfg_read(dev.bdf, 0) == 0xBEEF_1AF4
    assert pc.cfg_read(HB, 0) == 0x29C0_8086


def test_concurrent_config_accesses(pc, dev):
    """ECAM and mechanism #1 from several threads: every access is whole."""
    errors = []

    def worker(seed):
        rng = random.Random(seed)
        for _ in range(500):
            if rng.random() < 0.5:
                v = pc.ecam_read(HB, 0)
            else:
                with pc.root.lock:                           # a guest's own lock around CF8/CFC
                    v = pc.cfg_read(HB, 0)
            if v != 0x29C0_8086:
                errors.append(v)
            pc.ecam_write(dev.bdf, INTERRUPT_LINE, 1, seed)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
