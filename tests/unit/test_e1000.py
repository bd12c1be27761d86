"""The e1000 (82540EM) model driven through its BARs on a real MMIO bus, the way a guest
driver would: EEPROM (EECD bit-banging as Akaros does it, and EERD), the PHY over MDIC,
reset, interrupts, transmit (legacy, offloads, TSO, VLAN), receive (buffer sizes, long
frames, filters, FCS), statistics, VT-d, and hostile input."""
import collections
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from akvm.devices import e1000 as E
from akvm.devices.pci import PciRoot
from akvm.devices.pci.config import COMMAND_BUS_MASTER, COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE
from akvm.base.bus import Bus
from akvm.base.dma import DirectDma
from akvm.base.irq import IrqLine
from akvm.iommu.dmaspace import TranslatedDma
from tests import netframes as F
from akvm.iommu.vtd import FRCD as E_FRCD
from tests.unit.vtd_tables import R, Rig

MAC = bytes.fromhex("525400123456")
MMIO_WINDOW = (0xC000_0000, 0xE000_0000)
TX_RING, RX_RING = 0x10000, 0x20000
TX_BUFS, RX_BUFS = 0x800000, 0xA00000       # above the IOMMU tables (from 1 MiB)


class Wire:
    """A backend: what the device sends is kept, what the test puts in comes out of recv()."""

    def __init__(self):
        self.sent = []
        self.incoming = collections.deque()
        self.dropped = 0
        self.paused = False

    def start(self, worker, on_frames):
        pass

    def pause(self):
        self.paused = True

    def resume(self):
        self.paused = False

    def recv(self):
        return self.incoming.popleft() if self.incoming else None

    def send(self, frame):
        self.sent.append(frame)

    def close(self):
        pass


class InlineWorker:
    """The device's thread, run inline: call() now."""

    def call(self, fn):
        fn()


class Nic:
    """One e1000 on PCI bus 0 with 16 MiB of RAM, optionally behind VT-d."""

    def __init__(self, iommu=False):
        self.rig = Rig()
        self.mem = self.rig.mem
        self.mmio, self.pio = Bus("mmio"), Bus("pio")
        self.lines = {}
        dma = (lambda rid: TranslatedDma(self.rig.iommu, rid)) if iommu else \
            (lambda rid: DirectDma(self.mem))
        self.root = PciRoot(self.pio, self.mmio, mmio_window=MMIO_WINDOW, irq=self._line, dma=dma)
        self.wire = Wire()
        self.dev = E.E1000(self.wire, MAC)
        self.dev.worker = InlineWorker()
        self.root.add(self.dev)
        self.dev.set_command(COMMAND_BUS_MASTER | COMMAND_MEMORY_SPACE | COMMAND_IO_SPACE)
        self.bar = self.dev.bar_address(0)
        self.line = self.lines[self.dev.irq.gsi]

    def _line(self, gsi):
        return self.lines.setdefault(gsi, IrqLine(gsi))

    def r(self, reg):
        return self.mmio.read(self.bar + reg, 4)

    def w(self, reg, value):
        self.mmio.write(self.bar + reg, 4, value)

    # --- a driver ------------------------------------------------------------------

    def tx_setup(self, count=16):
        self.w(E.TDBAL, TX_RING)
        self.w(E.TDBAH, 0)
        self.w(E.TDLEN, count * 16)
        self.w(E.TDH, 0)
        self.w(E.TDT, 0)
        self.w(E.TCTL, E.TCTL_EN)
        self.tdt = 0
        self.tx_count = count

    def tx_desc(self, lo, hi):
        self.mem.write(TX_RING + 16 * self.tdt, struct.pack("<QQ", lo, hi))
        self.tdt = (self.tdt + 1) % self.tx_count

    def tx_legacy(self, data, cmd=E.TXD_CMD_EOP | E.TXD_CMD_RS, cso=0, css=0, special=0, at=None):
        at = TX_BUFS + 0x4000 * self.tdt if at is None else at
        self.mem.write(at, data)
        self.tx_desc(at, len(data) | cso << 16 | cmd << 24 | css << 40 | special << 48)

    def tx_go(self):
        self.w(E.TDT, self.tdt)

    def rx_setup(self, count=8, rctl=0, bufsize=2048):
        self.w(E.RDBAL, RX_RING)
        self.w(E.RDBAH, 0)
        self.w(E.RDLEN, count * 16)
        for i in range(count):
            self.mem.write(RX_RING + 16 * i, struct.pack("<QQ", RX_BUFS + i * 0x4000, 0))
        self.w(E.RDH, 0)
        self.w(E.RDT, count - 1)
        self.w(E.RCTL, E.RCTL_EN | E.RCTL_BAM | rctl)
        self.rx_count, self.bufsize, self.rx_next = count, bufsize, 0

    def rx_desc(self, i):
        length, csum, status, errors, special = struct.unpack(
            "<HHBBH", self.mem.read(RX_RING + 16 * i + 8, 8))
        return length, status, errors

    def deliver(self, *frames):
        self.wire.incoming.extend(frames)
        self.dev.receive()

    def take(self):
        """The next received frame (joined across descriptors up to EOP), or None."""
        data = b""
        while True:
            length, status, _ = self.rx_desc(self.rx_next)
            if not status & E.RXD_STAT_DD:
                return None
            data += self.mem.read(RX_BUFS + self.rx_next * 0x4000, length)
            self.mem.write(RX_RING + 16 * self.rx_next + 8, bytes(8))
            self.rx_next = (self.rx_next + 1) % self.rx_count
            if status & E.RXD_STAT_EOP:
                return data


@pytest.fixture
def nic():
    return Nic()


# --- identity --------------------------------------------------------------------------------

def test_pci_identity(nic):
    d = nic.dev
    assert (d.vendor_id, d.device_id, d.class_code, d.interrupt_pin) == (0x8086, 0x100E, 0x020000, 1)
    assert d.config.get(0x08, 1) == 3
    assert d.bars[0].size == 128 * 1024 and d.bars[1].size == 64 and d.bars[1].is_io
    assert d.msi is None and d.msix is None and not d.config.get(0x06, 2) & 0x10
    assert nic.bar is not None and d.bar_address(1) is not None


def test_io_bar_reaches_the_registers(nic):
    io = nic.dev.bar_address(1)
    nic.pio.write(io + E.IOADDR, 4, E.RAL0)
    assert nic.pio.read(io + E.IODATA, 4) == int.from_bytes(MAC[:4], "little")
    nic.pio.write(io + E.IOADDR, 4, E.IMS)
    nic.pio.write(io + E.IODATA, 4, E.ICR_RXT0)
    assert nic.r(E.IMS) == E.ICR_RXT0


# --- EEPROM ------------------------------------------------------------------------------------

def microwire_read(nic, address, bits=6):
    """Akaros's at93c46io sequence: 'S :9DCc;' with (READ << bits | address), then ':16COc;',
    then 'sic': every step one EECD write."""
    eecd = nic.r(E.EECD)
    eecd |= E.EECD_CS
    nic.w(E.EECD, eecd)
    instruction = E.MICROWIRE_READ << bits | address
    for bit in range(bits + 2, -1, -1):
        eecd = eecd | E.EECD_DI if instruction >> bit & 1 else eecd & ~E.EECD_DI
        nic.w(E.EECD, eecd)
        nic.w(E.EECD, eecd | E.EECD_SK)
        nic.w(E.EECD, eecd)
    word = 0
    for _ in range(16):
        nic.w(E.EECD, eecd | E.EECD_SK)
        word = word << 1 | bool(nic.r(E.EECD) & E.EECD_DO)
        nic.w(E.EECD, eecd)
    for bit in (E.EECD_CS, E.EECD_DI, E.EECD_SK):
        eecd &= ~bit
        nic.w(E.EECD, eecd)
    return word


def test_eeprom_by_bit_banging_as_akaros_reads_it(nic):
    eecd = nic.r(E.EECD)
    assert eecd & E.EECD_PRES and not eecd & (E.EECD_GNT | 0x200 | 0x2000)   # 64 words, Microwire
    nic.w(E.EECD, eecd | E.EECD_REQ)
    assert nic.r(E.EECD) & E.EECD_GNT
    words = [microwire_read(nic, a) for a in range(64)]
    nic.w(E.EECD, nic.r(E.EECD) & ~E.EECD_REQ)
    assert sum(words) & 0xFFFF == 0xBABA
    assert b"".join(w.to_bytes(2, "little") for w in words[:3]) == MAC
    assert words[0x0D] == 0x100E and words[0x0E] == 0x8086
    assert not nic.r(E.EECD) & E.EECD_GNT


def test_eeprom_through_eerd(nic):
    words = []
    for a in range(64):
        nic.w(E.EERD, a << 8 | E.EERD_START)
        v = nic.r(E.EERD)
        assert v & E.EERD_DONE and (v >> 8) & 0xFF == a
        words.append(v >> 16)
    assert words == E.eeprom_image(MAC) and sum(words) & 0xFFFF == 0xBABA


def test_eeprom_refuses_writes(nic):
    before = list(nic.dev.eeprom.words)
    eecd = E.EECD_CS
    nic.w(E.EECD, eecd)
    for bit in "101000011":                 # WRITE word 3
        eecd = eecd | E.EECD_DI if bit == "1" else eecd & ~E.EECD_DI
        nic.w(E.EECD, eecd)
        nic.w(E.EECD, eecd | E.EECD_SK)
        nic.w(E.EECD, eecd)
    nic.w(E.EECD, 0)
    assert nic.dev.eeprom.words == before and nic.dev.eeprom.refused == 1
    assert nic.r(E.EECD) & E.EECD_DO        # ready, as after a program cycle


# --- PHY -----------------------------------------------------------------------------------------

def mdic(nic, op, phy, reg, data=0):
    nic.w(E.MDIC, op | phy << 21 | reg << 16 | data)
    v = nic.r(E.MDIC)
    assert v & E.MDIC_READY
    return v


def test_phy_at_address_1_link_up_autonegotiation_complete(nic):
    v = mdic(nic, E.MDIC_OP_READ, 1, E.PHY_STATUS)
    assert not v & E.MDIC_ERROR and v & 0xFFFF & (E.MII_SR_LINK_STATUS | E.MII_SR_AUTONEG_COMPLETE)
    ids = [mdic(nic, E.MDIC_OP_READ, 1, r) & 0xFFFF for r in (E.PHY_ID1, E.PHY_ID2)]
    assert ids == [0x0141, 0x0C20]
    for phy in (0, 2, 31):                                  # nobody there
        assert mdic(nic, E.MDIC_OP_READ, phy, E.PHY_STATUS) & E.MDIC_ERROR
    assert mdic(nic, E.MDIC_OP_READ, 1, 7) & E.MDIC_ERROR   # no such register
    assert mdic(nic, E.MDIC_OP_WRITE, 1, E.PHY_STATUS, 0) & E.MDIC_ERROR   # read-only
    assert mdic(nic, E.MDIC_OP_READ, 1, E.PHY_STATUS) & 0xFFFF == 0x796D
    mdic(nic, E.MDIC_OP_WRITE, 1, E.PHY_AUTONEG_ADV, 0x01E1)
    assert mdic(nic, E.MDIC_OP_READ, 1, E.PHY_AUTONEG_ADV) & 0xFFFF == 0x01E1
    assert nic.dev.phy_errors == 5


def test_restarting_autonegotiation_signals_a_link_change(nic):
    nic.w(E.IMS, E.ICR_LSC)
    bmcr = mdic(nic, E.MDIC_OP_READ, 1, E.PHY_CTRL) & 0xFFFF
    mdic(nic, E.MDIC_OP_WRITE, 1, E.PHY_CTRL, bmcr | E.MII_CR_AUTO_NEG_EN | E.MII_CR_RESTART_AUTO_NEG)
    assert not mdic(nic, E.MDIC_OP_READ, 1, E.PHY_CTRL) & E.MII_CR_RESTART_AUTO_NEG  # self-clearing
    assert nic.line.level and nic.r(E.ICR) == E.ICR_LSC and not nic.line.level
    assert nic.r(E.STATUS) & E.STATUS_LU
    mdic(nic, E.MDIC_OP_READ | E.MDIC_INT_EN, 1, E.PHY_ID1)
    assert nic.r(E.ICR) == E.ICR_MDAC


# --- CTRL, STATUS, reset ---------------------------------------------------------------------------

def test_reset_clears_itself_and_the_mac(nic):
    status = nic.r(E.STATUS)
    assert status & (E.STATUS_LU | E.STATUS_FD) == E.STATUS_LU | E.STATUS_FD
    assert (status >> 6) & 3 == 2                           # 1000 Mb/s
    nic.w(E.IMS, 0xFF)
    nic.rx_setup()
    nic.w(E.RAL0, 0x11223344)
    nic.w(E.CTRL, E.CTRL_RST)
    assert not nic.r(E.CTRL) & E.CTRL_RST
    assert (nic.r(E.IMS), nic.r(E.RCTL), nic.r(E.RDLEN), nic.r(E.RDT)) == (0, 0, 0, 0)
    assert nic.r(E.RAL0) == int.from_bytes(MAC[:4], "little")
    assert nic.r(E.RAH0) == int.from_bytes(MAC[4:], "little") | E.RAH_AV
    nic.w(E.CTRL, 0)                                        # what Akaros's reset leaves: SLU off
    assert not nic.r(E.STATUS) & E.STATUS_LU
    nic.w(E.CTRL, E.CTRL_SLU)
    assert nic.r(E.STATUS) & E.STATUS_LU and nic.r(E.ICR) & E.ICR_LSC
    nic.w(E.CTRL_EXT, E.CTRL_EXT_EE_RST | 0x40)
    assert nic.r(E.CTRL_EXT) == 0x40


def test_unknown_registers_and_odd_accesses(nic):
    assert nic.r(0x1FFFC) == 0
    nic.w(0x1FFFC, 0xFFFF_FFFF)
    assert nic.mmio.read(nic.bar + E.STATUS, 2) == 0 and nic.dev.bad_accesses == 1
    nic.mmio.write(nic.bar + E.IMS + 1, 4, 0xFF)
    assert nic.r(E.IMS) == 0 and nic.dev.bad_accesses == 2


# --- interrupts --------------------------------------------------------------------------------------

def test_interrupt_causes_mask_and_level(nic):
    nic.w(E.ICS, E.ICR_TXDW | E.ICR_RXT0)
    assert not nic.line.level                               # masked
    nic.w(E.IMS, E.ICR_RXT0)
    assert nic.line.level and nic.dev.intx_asserted
    nic.w(E.IMC, E.ICR_RXT0)
    assert not nic.line.level
    nic.w(E.IMS, E.ICR_RXT0 | E.ICR_TXDW)
    nic.w(E.ICR, E.ICR_RXT0)                                # writing clears those bits
    assert nic.r(E.ICS) == E.ICR_TXDW and nic.line.level
    assert nic.r(E.ICR) == E.ICR_TXDW                       # reading clears all of it
    assert nic.r(E.ICR) == 0 and not nic.line.level
    nic.w(E.ITR, 500)
    assert nic.r(E.ITR) == 500


# --- transmit --------------------------------------------------------------------------------------

def udp_frame(payload=b"x" * 100):
    return F.eth(F.BROADCAST, MAC, F.ETH_IP, F.udp("10.0.2.15", "10.0.2.2", 1234, 5678, payload))


def test_transmit_a_chain_of_legacy_descriptors(nic):
    nic.tx_setup()
    nic.w(E.IMS, E.ICR_TXDW)
    frame = udp_frame()
    nic.tx_legacy(frame[:50], cmd=0)
    nic.tx_legacy(b"", cmd=0)                               # a zero-length one is skipped
    nic.tx_legacy(frame[50:])
    nic.tx_go()
    assert nic.wire.sent == [frame]
    assert nic.r(E.TDH) == 3 and nic.r(E.ICR) == E.ICR_TXDW | E.ICR_TXQE
    assert nic.mem.read(TX_RING + 2 * 16 + 12, 1)[0] & E.TXD_STAT_DD
    assert not nic.mem.read(TX_RING + 12, 1)[0] & E.TXD_STAT_DD      # no RS there
    assert (nic.r(E.GPTC), nic.r(E.GPTC)) == (1, 0)          # read-to-clear
    assert nic.r(E.GOTCL) == len(frame) + 4 and nic.r(E.GOTCH) == 0
    assert nic.r(E.GOTCL) == 0                               # the high half cleared both
    assert nic.r(E.BPTC) == 1 and nic.r(E.PTC64 + 8) == 1    # 128-255 bytes


def test_a_chain_without_eop_waits_for_its_end(nic):
    nic.tx_setup()
    frame = udp_frame()
    nic.tx_legacy(frame[:40], cmd=0)
    nic.tx_go()
    assert nic.wire.sent == [] and nic.r(E.TDH) == 1
    nic.tx_legacy(frame[40:])
    nic.tx_go()
    assert nic.wire.sent == [frame]


def tcp_frame(payload, flags=F.TCP_ACK | F.TCP_PSH | F.TCP_FIN):
    return F.eth(F.BROADCAST, MAC, F.ETH_IP,
                 F.tcp("10.0.2.15", "10.0.2.2", 40000, 80, 1000, 1, flags, payload))


def zero_checksums(frame, seed_l4=True):
    """The frame as a driver hands it for offload: IP checksum 0, TCP checksum = the
    pseudo-header sum (without the length when TSO will add it)."""
    f = bytearray(frame)
    f[24:26] = b"\0\0"
    src, dst = f[26:30], f[30:34]
    length = 0 if not seed_l4 else len(f) - 34
    pseudo = E.ones_sum(src + dst + struct.pack("!BBH", 0, 6, length))
    f[50:52] = pseudo.to_bytes(2, "big")
    return bytes(f)


def context(ipcss=14, ipcso=24, ipcse=33, tucss=34, tucso=50, tucse=0, paylen=0, tucmd=0,
            hdrlen=0, mss=0):
    lo = ipcss | ipcso << 8 | ipcse << 16 | tucss << 32 | tucso << 40 | tucse << 48
    hi = paylen | E.TXD_DTYP_CONTEXT << 20 | (tucmd | E.TXD_CMD_DEXT) << 24 | hdrlen << 40 | mss << 48
    return lo, hi


def test_checksum_offload_with_a_context_descriptor(nic):
    nic.tx_setup()
    frame = tcp_frame(b"offloaded" * 20)
    nic.tx_desc(*context(tucmd=E.TUCMD_TCP | E.TUCMD_IP))
    data = zero_checksums(frame)
    nic.mem.write(TX_BUFS, data)
    cmd = E.TXD_CMD_EOP | E.TXD_CMD_DEXT | E.TXD_CMD_RS
    nic.tx_desc(TX_BUFS, len(data) | E.TXD_DTYP_DATA << 20 | cmd << 24 |
                (E.TXD_POPTS_IXSM | E.TXD_POPTS_TXSM) << 40)
    nic.tx_go()
    assert nic.wire.sent == [frame]                         # both checksums as the sender's


def test_legacy_checksum_insertion(nic):
    nic.tx_setup()
    frame = udp_frame(b"legacy")
    f = bytearray(frame)
    f[40:42] = E.ones_sum(f[26:34] + struct.pack("!BBH", 0, 17, len(f) - 34)).to_bytes(2, "big")
    nic.tx_legacy(bytes(f), cmd=E.TXD_CMD_EOP | E.TXD_CMD_IC, css=34, cso=40)
    nic.tx_go()
    assert nic.wire.sent == [frame]


def test_tcp_segmentation(nic):
    nic.tx_setup()
    payload = bytes(range(256)) * 16                        # 4096 bytes
    whole = tcp_frame(payload)
    hdr = zero_checksums(whole[:54], seed_l4=False)
    nic.tx_desc(*context(tucmd=E.TUCMD_TCP | E.TUCMD_IP | E.TXD_CMD_TSE, paylen=len(payload),
                         hdrlen=54, mss=1000))
    nic.mem.write(TX_BUFS, hdr + payload)
    dcmd = E.TXD_CMD_EOP | E.TXD_CMD_DEXT | E.TXD_CMD_TSE
    nic.tx_desc(TX_BUFS, (54 + len(payload)) | E.TXD_DTYP_DATA << 20 | dcmd << 24 |
                (E.TXD_POPTS_IXSM | E.TXD_POPTS_TXSM) << 40)
    nic.tx_go()
    segs = [F.parse(s) for s in nic.wire.sent]
    assert [len(s.payload) for s in segs] == [1000, 1000, 1000, 1000, 96]
    assert b"".join(s.payload for s in segs) == payload
    assert [s.seq for s in segs] == [1000 + i * 1000 for i in range(5)]
    assert [s.flags for s in segs] == [F.TCP_ACK] * 4 + [F.TCP_ACK | F.TCP_PSH | F.TCP_FIN]
    ids = [int.from_bytes(s[18:20], "big") for s in nic.wire.sent]
    assert ids == [ids[0] + i for i in range(5)]
    for raw in nic.wire.sent:                               # lengths and checksums per segment
        assert int.from_bytes(raw[16:18], "big") == len(raw) - 14
        assert E.ones_sum(raw[14:34]) == 0xFFFF
        assert E.ones_sum(raw[34:], E.ones_sum(raw[26:34] + struct.pack("!BBH", 0, 6, len(raw) - 34))) == 0xFFFF
    assert nic.r(E.TSCTC) == 1


def test_vlan_tag_insertion(nic):
    nic.tx_setup()
    frame = udp_frame()
    nic.tx_legacy(frame, cmd=E.TXD_CMD_EOP | E.TXD_CMD_VLE, special=0x0123)
    nic.tx_go()
    assert nic.wire.sent == [frame[:12] + b"\x81\x00\x01\x23" + frame[12:]]


def test_transmit_waits_for_tctl_en_and_bus_master(nic):
    nic.tx_setup()
    nic.w(E.TCTL, 0)
    nic.tx_legacy(udp_frame())
    nic.tx_go()
    assert nic.wire.sent == [] and nic.r(E.TDH) == 0
    nic.dev.set_command(COMMAND_BUS_MASTER, False)
    nic.w(E.TCTL, E.TCTL_EN)
    assert nic.wire.sent == []
    nic.dev.set_command(COMMAND_BUS_MASTER, True)
    nic.w(E.TCTL, E.TCTL_EN)
    assert len(nic.wire.sent) == 1


# --- receive ---------------------------------------------------------------------------------------

def test_receive_pads_short_frames_and_stores_the_fcs(nic):
    nic.rx_setup()
    nic.w(E.IMS, E.ICR_RXT0)
    arp = F.eth(F.BROADCAST, b"\x02" * 6, F.ETH_ARP, F.arp_request(b"\x02" * 6, "10.0.2.2", "10.0.2.15"))
    nic.deliver(arp)
    got = nic.take()
    padded = arp + bytes(60 - len(arp))
    assert got == padded + zlib.crc32(padded).to_bytes(4, "little")
    assert nic.rx_desc(0) == (0, 0, 0)                      # taken
    assert nic.line.level and nic.r(E.ICR) & E.ICR_RXT0
    assert nic.r(E.RDH) == 1 and nic.r(E.GPRC) == 1 and nic.r(E.BPRC) == 1
    assert nic.r(E.PRC64) == 1 and nic.r(E.GORCL) == 64
    nic.w(E.RCTL, nic.r(E.RCTL) | E.RCTL_SECRC)
    nic.deliver(arp)
    assert nic.take() == padded


def test_a_frame_spans_small_buffers(nic):
    nic.rx_setup(rctl=3 << E.RCTL_BSIZE_SHIFT | E.RCTL_SECRC)       # 256-byte buffers
    frame = F.eth(MAC, b"\x02" * 6, F.ETH_IP, bytes(range(256)) * 3)
    nic.deliver(frame)
    assert [nic.rx_desc(i)[:2] for i in range(4)] == [
        (256, 5), (256, 5), (256, 5), (len(frame) - 768, 7)]        # DD|IXSM, EOP on the last
    assert nic.take() == frame and nic.r(E.RDH) == 4


def test_buffer_sizes():
    d = E.E1000(Wire(), MAC)
    sizes = {}
    for bsex in (0, E.RCTL_BSEX):
        for bsize in range(1, 4):
            d.s.rctl = bsex | bsize << E.RCTL_BSIZE_SHIFT
            sizes[(bool(bsex), bsize)] = d._buffer_size()
    assert sizes == {(False, 1): 1024, (False, 2): 512, (False, 3): 256,
                     (True, 1): 16384, (True, 2): 8192, (True, 3): 4096}


def test_long_frames_need_lpe(nic):
    nic.rx_setup(rctl=E.RCTL_BSEX | 1 << E.RCTL_BSIZE_SHIFT)        # 16 KiB buffers
    big = F.eth(MAC, b"\x02" * 6, F.ETH_IP, bytes(3000))
    nic.deliver(big)
    assert nic.take() is None and nic.r(E.ROC) == 1
    nic.w(E.RCTL, nic.r(E.RCTL) | E.RCTL_LPE)
    nic.deliver(big)
    assert len(nic.take()) == len(big) + 4
    nic.deliver(F.eth(MAC, b"\x02" * 6, F.ETH_IP, bytes(1500)))    # 1518 with the FCS: fine
    assert nic.take() is not None


def test_receive_filters(nic):
    nic.rx_setup(rctl=E.RCTL_SECRC)
    other = F.eth(b"\x02\x00\x00\x00\x00\x09", b"\x02" * 6, F.ETH_IP, bytes(60))
    multicast = F.eth(b"\x01\x00\x5e\x00\x00\xfb", b"\x02" * 6, F.ETH_IP, bytes(60))
    nic.deliver(other, multicast)
    assert nic.take() is None
    # The MTA hash with MO = 00: bits 47:36 of the address.
    h = (multicast[4] >> 4 | multicast[5] << 4) & 0xFFF
    nic.w(E.MTA + 4 * (h >> 5), 1 << (h & 31))
    nic.deliver(multicast)
    assert nic.take() == multicast and nic.r(E.MPRC) == 1
    nic.w(E.RAL0 + 8, int.from_bytes(other[:4], "little"))
    nic.w(E.RAH0 + 8, int.from_bytes(other[4:6], "little") | E.RAH_AV)
    nic.deliver(other)
    assert nic.take() == other
    nic.w(E.RAH0 + 8, 0)
    nic.w(E.RCTL, nic.r(E.RCTL) | E.RCTL_UPE)
    nic.deliver(other)
    assert nic.take() == other
    nic.w(E.RCTL, nic.r(E.RCTL) & ~E.RCTL_BAM)
    nic.deliver(F.eth(F.BROADCAST, b"\x02" * 6, F.ETH_IP, bytes(60)))
    assert nic.take() is None


def test_without_descriptors_frames_wait_in_the_backend(nic):
    nic.rx_setup(count=8, rctl=E.RCTL_SECRC)               # the smallest ring: 128 bytes
    nic.w(E.IMS, E.ICR_RXDMT0)
    frames = [F.eth(MAC, b"\x02" * 6, F.ETH_IP, bytes([i]) * 60) for i in range(9)]
    nic.deliver(*frames)
    assert nic.wire.paused and nic.r(E.RDH) == 7 and nic.r(E.RNBC) == 1
    assert nic.r(E.ICR) & E.ICR_RXDMT0
    got = [nic.take() for _ in range(7)]
    nic.w(E.RDT, 6)                                         # seven more: the thread goes on
    got += [nic.take(), nic.take()]
    assert got == frames and not nic.wire.paused


def test_receiver_off_or_link_down_drops(nic):
    nic.rx_setup()
    nic.w(E.RCTL, 0)
    nic.deliver(udp_frame())
    assert nic.take() is None and not nic.wire.paused and not nic.wire.incoming
    nic.w(E.RCTL, E.RCTL_EN | E.RCTL_BAM)
    nic.w(E.CTRL, 0)
    nic.deliver(udp_frame())
    assert nic.take() is None


# --- behind VT-d ------------------------------------------------------------------------------------

def test_dma_through_the_iommu_and_its_faults():
    nic = Nic(iommu=True)
    rig = nic.rig
    rig.enable()
    table = rig.page()
    rig.set_context(nic.dev.requester_id, table=table, did=5)
    iova_ring, iova_buf = 0x4000_0000, 0x4010_0000
    rig.map(table, iova_ring, TX_RING)
    rig.map(table, iova_buf, TX_BUFS, perms=R)
    frame = udp_frame()
    nic.mem.write(TX_BUFS, frame)
    nic.mem.write(TX_RING, struct.pack("<QQ", iova_buf, len(frame) | (E.TXD_CMD_EOP | E.TXD_CMD_RS) << 24))
    nic.mem.write(TX_RING + 16, struct.pack("<QQ", 0x5000_0000, 60 | E.TXD_CMD_EOP << 24))  # unmapped
    nic.w(E.TDBAL, iova_ring)
    nic.w(E.TDLEN, 128)
    nic.w(E.TCTL, E.TCTL_EN)
    nic.w(E.TDT, 2)
    assert nic.wire.sent == [frame] and nic.r(E.TDH) == 2
    assert nic.mem.read(TX_RING + 12, 1)[0] & E.TXD_STAT_DD
    assert nic.dev.errors == 1 and nic.dev.tx_dropped == 1
    assert rig.iommu.faults.recorded == 1
    assert rig.r64(E_FRCD) & ~0xFFF == 0x5000_0000


# --- hostile input ---------------------------------------------------------------------------------

REGS = [E.CTRL, E.EECD, E.EERD, E.CTRL_EXT, E.MDIC, E.ICR, E.ICS, E.IMS, E.IMC, E.RCTL, E.TCTL,
        E.RDBAL, E.RDBAH, E.RDLEN, E.RDH, E.RDT, E.TDBAL, E.TDBAH, E.TDLEN, E.TDH, E.TDT,
        E.GORCH, E.TOTH, E.RAL0, E.RAH0, E.MTA, E.VFTA, E.VET, E.ITR]
SMALL_RAM = 1 << 20
H_TX, H_RX = 0x1000, 0x2000                 # where the rings start out


H_DATA = 0x4000                             # a TCP/IPv4 frame lies here


def descriptor():
    """16 bytes a hostile driver could write: legacy, context and data descriptors with
    any fields (buffers in RAM, at its end or far past it; zero, small and huge lengths;
    any command bits, MSS, HDRLEN and offsets), or plain noise."""
    address = st.sampled_from([H_DATA, H_DATA + 7, SMALL_RAM - 8, SMALL_RAM, 1 << 40]) | \
        st.integers(0, SMALL_RAM)
    length = st.sampled_from([0, 1, 14, 54, 60, 1514, 4000, 0xFFFF]) | st.integers(0, 0xFFFF)
    byte = st.integers(0, 255)
    legacy = st.builds(lambda a, n, cso, cmd, css, sp: struct.pack(
        "<QQ", a, n | cso << 16 | cmd << 24 | css << 40 | sp << 48),
        address, length, byte, byte.map(lambda c: c & ~E.TXD_CMD_DEXT), byte, st.integers(0, 0xFFFF))
    context = st.builds(lambda f, paylen, tucmd, hdrlen, mss: struct.pack(
        "<QQ", f, paylen | (tucmd | E.TXD_CMD_DEXT) << 24 | hdrlen << 40 | mss << 48),
        st.integers(0, 2**64 - 1) | st.just(14 | 24 << 8 | 33 << 16 | 34 << 32 | 50 << 40),
        st.integers(0, 0xF_FFFF), byte, st.sampled_from([54]) | byte,
        st.sampled_from([0, 1, 64, 536, 1460]) | st.integers(0, 0xFFFF))
    data = st.builds(lambda a, n, dcmd, popts: struct.pack(
        "<QQ", a, n | E.TXD_DTYP_DATA << 20 | (dcmd | E.TXD_CMD_DEXT) << 24 | popts << 40),
        address, length, byte, byte)
    return legacy | context | data | st.binary(min_size=16, max_size=16)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.tuples(st.just("w"), st.sampled_from(REGS) | st.integers(0, 0x1FFFF).map(lambda x: x & ~3),
              st.integers(0, 0xFFFF_FFFF)),
    st.tuples(st.just("r"), st.sampled_from(REGS), st.just(0)),
    st.tuples(st.just("tx"), st.integers(0, 7), descriptor()),
    st.tuples(st.just("tx"), st.integers(0, 7), descriptor()),
    st.tuples(st.just("rxd"), st.integers(0, 7), descriptor()),
    st.tuples(st.just("tdt"), st.integers(0, 7) | st.sampled_from([8, 20, 0xFFFF]), st.just(0)),
    st.tuples(st.just("tdt"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("rdt"), st.integers(0, 7) | st.sampled_from([8, 20, 0xFFFF]), st.just(0)),
    st.tuples(st.just("rx"), st.integers(0, 3), st.binary(max_size=3000) | st.just(bytes(20000))),
), max_size=60))
def test_hostile_programming_never_raises_or_escapes_ram(ops):
    """From a driver-like start (rings of 8 in RAM, both directions on), random register
    writes (rings anywhere, any length, heads and tails beyond them), random descriptors
    (context, TSE, chains without EOP, zero and huge lengths, buffers past RAM) and random
    frames: the device never raises, reaches only the 1 MiB of RAM there is (DirectDma
    refuses the rest), and sends only frames of sane sizes."""
    from akvm.base.memory import GuestMemory
    mem = GuestMemory.from_bytearray(SMALL_RAM)
    wire = Wire()
    dev = E.E1000(wire, MAC)
    dev.worker = InlineWorker()
    root = PciRoot(None, Bus("mmio"), mmio_window=MMIO_WINDOW, io_window=None,
                   irq=lambda gsi: IrqLine(gsi), dma=lambda rid: DirectDma(mem))
    root.add(dev)
    dev.set_command(COMMAND_BUS_MASTER | COMMAND_MEMORY_SPACE)
    mem.write(H_DATA, F.eth(F.BROADCAST, MAC, F.ETH_IP, F.tcp("10.0.2.15", "10.0.2.2", 1, 2, 3, 4,
                                                            F.TCP_ACK, bytes(3000))))
    for reg, value in ((E.TDBAL, H_TX), (E.TDLEN, 128), (E.TCTL, E.TCTL_EN), (E.RDBAL, H_RX),
                       (E.RDLEN, 128), (E.RDT, 7), (E.RCTL, E.RCTL_EN | E.RCTL_UPE | E.RCTL_BAM)):
        dev.write(reg, 4, value)
    for op, a, b in ops:
        if op == "w":
            dev.write(a, 4, b)
        elif op == "r":
            dev.read(a, 4)
        elif op == "tx":
            mem.write(H_TX + 16 * a, b)
        elif op == "rxd":
            mem.write(H_RX + 16 * a, b)
        elif op == "tdt":
            dev.write(E.TDT, 4, a)
        elif op == "rdt":
            dev.write(E.RDT, 4, a)
        else:
            wire.incoming.append(b)
            dev.receive()
        assert 0 <= dev.s.tdh < 0x10000 and 0 <= dev.s.rdh < 0x10000
    assert all(14 <= len(f) <= E.MAX_TX_PACKET + 4 for f in wire.sent)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 0xF_FFFF), st.integers(0, 255),
       st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 255),
       st.integers(0, 3000), st.booleans())
def test_hostile_segmentation_contexts(fields, paylen, tucmd, hdrlen, mss, popts, size, tse):
    """Any TCP/IP context (offsets past the packet, HDRLEN beyond it, MSS 0 or 1, IPv6 or
    UDP) before a data descriptor with TSE or checksum options: frames of sane sizes or a
    counted drop, never an exception."""
    nic = Nic()
    nic.tx_setup()
    packet = tcp_frame(bytes(size))
    nic.mem.write(TX_BUFS, packet)
    nic.tx_desc(fields, paylen | (tucmd | E.TXD_CMD_DEXT) << 24 | hdrlen << 40 | mss << 48)
    dcmd = E.TXD_CMD_EOP | E.TXD_CMD_DEXT | (E.TXD_CMD_TSE if tse else 0)
    nic.tx_desc(TX_BUFS, len(packet) | E.TXD_DTYP_DATA << 20 | dcmd << 24 | popts << 40)
    nic.tx_go()
    assert nic.r(E.TDH) == 2
    assert len(nic.wire.sent) <= E.MAX_TSO_SEGMENTS
    assert all(14 <= len(f) <= E.MAX_TX_PACKET + 4 for f in nic.wire.sent)
    assert nic.wire.sent or nic.dev.tx_dropped == 1


def test_on_user_networking_c_and_python_take_turns():
    """The rings served in C on libslirp's thread: a plain ARP request goes out by C,
    a packet with a legacy checksum insertion is Python's turn, and C takes the next
    plain one again; each answer lands in the receive ring."""
    import time
    from tests.unit.test_usernet import slirp_or_skip
    backend = slirp_or_skip()()
    nic = Nic.__new__(Nic)
    nic.rig = Rig()
    nic.mem, nic.mmio, nic.pio, nic.lines, nic.wire = nic.rig.mem, Bus("mmio"), Bus("pio"), {}, backend
    nic.root = PciRoot(nic.pio, nic.mmio, mmio_window=MMIO_WINDOW, irq=nic._line,
                       dma=lambda rid: DirectDma(nic.mem))
    nic.dev = E.E1000(backend, MAC)
    nic.root.add(nic.dev)
    nic.dev.set_command(COMMAND_BUS_MASTER | COMMAND_MEMORY_SPACE)
    nic.bar = nic.dev.bar_address(0)
    nic.dev.start()
    try:
        nic.rx_setup(count=32, rctl=E.RCTL_SECRC)
        nic.tx_setup()

        def answer(predicate):
            end = time.monotonic() + 5
            while time.monotonic() < end:
                frame = nic.take()
                if frame is not None and predicate(F.parse(frame)):
                    return F.parse(frame)
                time.sleep(0.005)
            raise AssertionError("no answer came")

        assert wait_native(nic.dev)
        nic.tx_legacy(F.eth(F.BROADCAST, MAC, F.ETH_ARP, F.arp_request(MAC, "10.0.2.15", "10.0.2.2")))
        nic.tx_go()
        assert answer(lambda f: f.ethertype == F.ETH_ARP).arp_op == 2
        gateway = b"\x52\x55\x0a\x00\x02\x02"
        ping = bytearray(F.eth(gateway, MAC, F.ETH_IP, F.icmp_echo("10.0.2.15", "10.0.2.2", 9, 1)))
        ping[36:38] = b"\0\0"                                  # the device fills it in
        nic.tx_legacy(bytes(ping), cmd=E.TXD_CMD_EOP | E.TXD_CMD_IC | E.TXD_CMD_RS, css=34, cso=36)
        nic.tx_go()
        assert answer(lambda f: f.proto == F.IP_ICMP).icmp_type == 0
        nic.tx_legacy(F.eth(gateway, MAC, F.ETH_IP, F.icmp_echo("10.0.2.15", "10.0.2.2", 9, 2)))
        nic.tx_go()
        assert answer(lambda f: f.proto == F.IP_ICMP).icmp_type == 0
        stats = nic.dev.stats()
        assert stats["tx_frames"] == 3 and stats["rx_frames"] >= 3
        assert nic.dev.tx_frames == 1                          # the one Python sent
    finally:
        nic.dev.close()


def wait_native(dev, timeout=5.0):
    import time
    end = time.monotonic() + timeout
    while not dev.s.native and time.monotonic() < end:
        time.sleep(0.005)
    return bool(dev.s.native)
