"""Intel 82540EM Gigabit Ethernet controller (8086:100e, "e1000"), as drivers find it.

Written from Intel's PCI/PCI-X Family of Gigabit Ethernet Controllers
Software Developer's Manual (8254x), register names as there. What a driver
sees:

- PCI: class 020000, revision 3, INTA#, no capabilities (INTx only); BAR0
  128 KiB of registers (32-bit accesses), BAR1 64 bytes of I/O with IOADDR
  and IODATA, the indirect way to the same registers.
- The EEPROM, a 64-word Microwire part (93C46): bit-banged through EECD
  (SK, CS, DI, DO; EE_REQ granted at once, EE_PRES) or read a word at a
  time through EERD (START, DONE, ADDR 15:8, DATA 31:16). Words 0-2 hold
  the MAC address and the words sum to 0xBABA. It is read-only: write and
  erase instructions are refused and counted.
- The PHY on MDIO address 1 (MDIC), an 82540EM internal PHY (M88 ids):
  link up, 1000 Mb/s full duplex, autonegotiation complete; a restart of
  autonegotiation completes at once and raises LSC. Other addresses, and
  registers a PHY does not have, answer with MDIC.E; writes to read-only
  registers too.
- CTRL (RST: a device reset that clears itself; PHY_RST), STATUS (link up
  follows the PHY and CTRL.SLU), CTRL_EXT (EE_RST clears itself).
- Interrupts: ICR (read clears it; a write clears the bits written), ICS
  (sets causes), IMS/IMC; INTA# is asserted while ICR & IMS is not zero.
  ITR, RDTR, RADV, TIDV and TADV are kept but do not delay anything.
- Receive: legacy descriptors from RDBAL/RDBAH/RDLEN/RDH/RDT; buffer
  size from RCTL.BSIZE/BSEX; a frame longer than a buffer spans
  descriptors (EOP on its last); frames above 1518 bytes are dropped
  unless RCTL.LPE (then up to 16384); short frames are padded to 60; the
  FCS is stored unless RCTL.SECRC; filters: RAL/RAH (16, AV), broadcast
  (BAM), multicast (MPE, or the MTA hash chosen by RCTL.MO), promiscuous
  (UPE), VLAN filter (VFE, VFTA). Status DD, EOP, IXSM (no receive
  checksum offload). Causes RXT0 and RXDMT0 (RCTL.RDMTS).
- Transmit: legacy descriptors (IC: checksum at CSO over CSS.., VLE),
  TCP/IP context descriptors and extended data descriptors (POPTS IXSM,
  TXSM; TSE: TCP segmentation with MSS, HDRLEN, PAYLEN); RS writes back
  DD; causes TXDW and TXQE. Frames go out on the TDT write.
- Multicast table (MTA), statistics registers (all clear when read; the
  64-bit ones when their high half is read), device reset.

Hostile input never raises and never reaches outside guest RAM: every
descriptor and buffer goes through the function's DmaSpace (DirectDma, or
VT-d), rings with a zero length or a head or tail beyond them do nothing,
a chain without EOP is held until it ends or grows past 64 KiB (then
dropped), zero-length descriptors are skipped, and what cannot be done is
dropped, counted in `errors` and logged once.

Frames come and go through the same backends as virtio-net's
(akvm.devices.virtio.netback, akvm.devices.usernet). Transmission runs on
the vCPU that writes TDT and only queues frames in the backend; reception
runs on the device's own thread (akvm.devices.virtio.worker), which stops
reading the backend while the ring has no free descriptor, so frames wait
there.

Snapshots (akvm.devices.state) save every register, the C data path's
included, and what is half done: see device_snapshot().
"""
from __future__ import annotations

import logging
import os
import struct
import zlib

from akvm.base.dma import DirectDma, DmaError
from akvm.base.native import ffi, lib, native_slots
from akvm.devices.pci import BarKind, PciDevice
from akvm.devices.state import pack, restore_counters, save_counters, unpack

log = logging.getLogger("akvm.e1000")

VENDOR_ID = 0x8086
DEVICE_ID = 0x100E                  # 82540EM desktop
SUBSYSTEM_ID = 0x001E
CLASS_ETHERNET = 0x020000
REVISION = 3
MMIO_SIZE = 128 * 1024
IO_SIZE = 64

# --- registers (8254x SDM 13) -----------------------------------------------------
CTRL, STATUS, EECD, EERD, CTRL_EXT, MDIC = 0x0000, 0x0008, 0x0010, 0x0014, 0x0018, 0x0020
FCAL, FCAH, FCT, VET = 0x0028, 0x002C, 0x0030, 0x0038
# The registers and bits the C data path shares are defined in devices/e1000.h.
ICR, IMS, RCTL, TCTL = lib.E1000_ICR, lib.E1000_IMS, lib.E1000_RCTL, lib.E1000_TCTL
RDBAL, RDBAH, RDLEN, RDH, RDT = (lib.E1000_RDBAL, lib.E1000_RDBAH, lib.E1000_RDLEN,
                                 lib.E1000_RDH, lib.E1000_RDT)
TDBAL, TDBAH, TDLEN, TDH, TDT = (lib.E1000_TDBAL, lib.E1000_TDBAH, lib.E1000_TDLEN,
                                 lib.E1000_TDH, lib.E1000_TDT)
STATS_START = lib.E1000_STATS
STATS_END = STATS_START + 4 * lib.E1000_STATS_COUNT
MTA, MTA_COUNT = lib.E1000_MTA, lib.E1000_MTA_COUNT
RAL0, RAH0, RAL_COUNT = lib.E1000_RAL0, lib.E1000_RAH0, lib.E1000_RAL_COUNT
ITR, ICS, IMC = 0x00C4, 0x00C8, 0x00D8
FCTTV, TXCW = 0x0170, 0x0178
TIPG, AIT = 0x0410, 0x0458
LEDCTL, PBA = 0x0E00, 0x1000
FCRTL, FCRTH = 0x2160, 0x2168
RDTR, RXDCTL, RADV, RSRPD = 0x2820, 0x2828, 0x282C, 0x2C00
TXDMAC = 0x3000
TIDV, TXDCTL, TADV, TSPMT = 0x3820, 0x3828, 0x382C, 0x3830
RXCSUM = 0x5000
VFTA = 0x5600                       # 128 registers
WUC, WUFC, WUS, MANC, IPAV = 0x5800, 0x5808, 0x5810, 0x5820, 0x5838
IP4AT, IP6AT, WUPL, WUPM = 0x5840, 0x5880, 0x5900, 0x5A00
FFLT, FFMT, FFVT = 0x5F00, 0x9000, 0x9800
IOADDR, IODATA = 0x00, 0x04          # in BAR1

# CTRL
CTRL_FD, CTRL_LRST, CTRL_SLU = 1 << 0, 1 << 3, 1 << 6
CTRL_SPEED_1000 = 2 << 8
CTRL_RST, CTRL_PHY_RST = 1 << 26, 1 << 31
# STATUS
STATUS_FD, STATUS_LU, STATUS_SPEED_1000, STATUS_ASDV_1000 = 1 << 0, 1 << 1, 2 << 6, 2 << 8
STATUS_GIO_MASTER_EN = 1 << 19
# EECD
EECD_SK, EECD_CS, EECD_DI, EECD_DO = 1 << 0, 1 << 1, 1 << 2, 1 << 3
EECD_REQ, EECD_GNT, EECD_PRES = 1 << 6, 1 << 7, 1 << 8
# EERD (82540EM layout)
EERD_START, EERD_DONE, EERD_ADDR_SHIFT, EERD_DATA_SHIFT = 1 << 0, 1 << 4, 8, 16
# CTRL_EXT
CTRL_EXT_EE_RST = 1 << 13
# MDIC
MDIC_REG_SHIFT, MDIC_PHY_SHIFT = 16, 21
MDIC_OP_WRITE, MDIC_OP_READ = 1 << 26, 2 << 26
MDIC_READY, MDIC_INT_EN, MDIC_ERROR = 1 << 28, 1 << 29, 1 << 30
# Interrupt causes (ICR, ICS, IMS, IMC)
ICR_TXDW, ICR_TXQE, ICR_RXDMT0, ICR_RXT0 = (lib.E1000_ICR_TXDW, lib.E1000_ICR_TXQE,
                                            lib.E1000_ICR_RXDMT0, lib.E1000_ICR_RXT0)
ICR_LSC, ICR_MDAC = 1 << 2, 1 << 9
ICR_VALID = 0x0001_F6DF            # the causes an 82540EM has
# RCTL
RCTL_EN, RCTL_SBP, RCTL_UPE, RCTL_MPE, RCTL_LPE = (lib.E1000_RCTL_EN, lib.E1000_RCTL_SBP,
                                                   lib.E1000_RCTL_UPE, lib.E1000_RCTL_MPE,
                                                   lib.E1000_RCTL_LPE)
RCTL_RDMTS_SHIFT, RCTL_MO_SHIFT = lib.E1000_RCTL_RDMTS_SHIFT, lib.E1000_RCTL_MO_SHIFT
RCTL_BAM, RCTL_BSIZE_SHIFT, RCTL_VFE = (lib.E1000_RCTL_BAM, lib.E1000_RCTL_BSIZE_SHIFT,
                                        lib.E1000_RCTL_VFE)
RCTL_BSEX, RCTL_SECRC = lib.E1000_RCTL_BSEX, lib.E1000_RCTL_SECRC
# TCTL
TCTL_EN, TCTL_PSP = lib.E1000_TCTL_EN, lib.E1000_TCTL_PSP
# RAH
RAH_AV = lib.E1000_RAH_AV
# Receive descriptor status / transmit command and status bits
RXD_STAT_DD, RXD_STAT_EOP, RXD_STAT_IXSM = (lib.E1000_RXD_STAT_DD, lib.E1000_RXD_STAT_EOP,
                                           lib.E1000_RXD_STAT_IXSM)
TXD_CMD_EOP, TXD_CMD_IFCS, TXD_CMD_IC, TXD_CMD_RS = (lib.E1000_TXD_CMD_EOP, lib.E1000_TXD_CMD_IFCS,
                                                     lib.E1000_TXD_CMD_IC, lib.E1000_TXD_CMD_RS)
TXD_CMD_TSE = TXD_CMD_IC            # extended descriptors: TSE where legacy has IC
TXD_CMD_DEXT, TXD_CMD_VLE = lib.E1000_TXD_CMD_DEXT, lib.E1000_TXD_CMD_VLE
TXD_STAT_DD = lib.E1000_TXD_STAT_DD
TXD_DTYP_CONTEXT, TXD_DTYP_DATA = 0, lib.E1000_TXD_DTYP_DATA
TXD_POPTS_IXSM, TXD_POPTS_TXSM = 1 << 0, 1 << 1
TUCMD_TCP, TUCMD_IP = 1 << 0, 1 << 1

# Statistics (each clears when read; 64-bit pairs when the high half is read)
MPC, GPRC, BPRC, MPRC, GPTC = (lib.E1000_MPC, lib.E1000_GPRC, lib.E1000_BPRC, lib.E1000_MPRC,
                               lib.E1000_GPTC)
GORCL, GOTCL, RNBC, ROC = lib.E1000_GORCL, lib.E1000_GOTCL, lib.E1000_RNBC, lib.E1000_ROC
GORCH, GOTCH = GORCL + 4, GOTCL + 4
TORL, TOTL, TPR, TPT = lib.E1000_TORL, lib.E1000_TOTL, lib.E1000_TPR, lib.E1000_TPT
TORH, TOTH = TORL + 4, TOTL + 4
PRC64, PTC64 = lib.E1000_PRC64, lib.E1000_PTC64   # then 127, 255, 511, 1023, 1522
MPTC, BPTC = lib.E1000_MPTC, lib.E1000_BPTC
TSCTC = 0x40F8
STATS_64 = {GORCH: GORCL, GOTCH: GOTCL, TORH: TORL, TOTH: TOTL}

# --- PHY (IEEE 802.3 clause 22 registers and the 82540EM's own) --------------------
PHY_ADDRESS = 1
PHY_CTRL, PHY_STATUS, PHY_ID1, PHY_ID2, PHY_AUTONEG_ADV, PHY_LP_ABILITY = 0, 1, 2, 3, 4, 5
PHY_AUTONEG_EXP, PHY_1000T_CTRL, PHY_1000T_STATUS, PHY_EXT_STATUS = 6, 9, 10, 15
M88_PHY_SPEC_CTRL, M88_PHY_SPEC_STATUS, M88_EXT_PHY_SPEC_CTRL = 16, 17, 20
MII_CR_RESTART_AUTO_NEG, MII_CR_AUTO_NEG_EN, MII_CR_RESET = 1 << 9, 1 << 12, 1 << 15
MII_SR_LINK_STATUS, MII_SR_AUTONEG_COMPLETE = 1 << 2, 1 << 5
NWAY_LPAR_ACKNOWLEDGE = 1 << 14
# register: (reset value, writable bits); absent registers answer with MDIC.E
PHY_REGISTERS = {
    PHY_CTRL: (0x1140, 0xFFFF),
    PHY_STATUS: (0x796D, 0),                 # link up, autonegotiation complete
    PHY_ID1: (0x0141, 0),
    PHY_ID2: (0x0C20, 0),
    PHY_AUTONEG_ADV: (0x0DE1, 0xFFFF),
    PHY_LP_ABILITY: (0x45E1, 0),
    PHY_AUTONEG_EXP: (0x0001, 0),
    PHY_1000T_CTRL: (0x0E00, 0xFFFF),
    PHY_1000T_STATUS: (0x3C00, 0),
    PHY_EXT_STATUS: (0x3000, 0),
    M88_PHY_SPEC_CTRL: (0x0360, 0xFFFF),
    M88_PHY_SPEC_STATUS: (0xAC00, 0),        # 1000 Mb/s, full duplex, resolved, link
    M88_EXT_PHY_SPEC_CTRL: (0x0D60, 0xFFFF),
}

# --- EEPROM ---------------------------------------------------------------------
EEPROM_WORDS = 64
EEPROM_SUM = 0xBABA
EEPROM_CHECKSUM_WORD = 0x3F
EEPROM_ICW1, EEPROM_SUBSYSTEM_ID, EEPROM_SUBSYSTEM_VENDOR = 0x0A, 0x0B, 0x0C
EEPROM_DEVICE_ID, EEPROM_VENDOR_ID = 0x0D, 0x0E
ICW1_SIGNATURE = 0x4000             # bits 15:14 = 01b: the image is valid
MICROWIRE_READ = 0b110              # start bit and READ opcode
MICROWIRE_ADDRESS_BITS = 6

MAX_RX_NORMAL = lib.E1000_MAX_RX_NORMAL      # with the FCS; more needs RCTL.LPE
MAX_RX_LONG = lib.E1000_MAX_RX_LONG
MIN_FRAME = lib.E1000_MIN_FRAME     # without the FCS
FCS_LEN = lib.E1000_FCS_LEN
MAX_TX_PACKET = lib.E1000_MAX_TX_PACKET      # without TSE
MAX_TX_CHAIN = 65536                # any chain, TSE included
MAX_TSO_SEGMENTS = 1024             # more (an MSS below 64 on a full chain) is dropped
VLAN_ETHERTYPE = 0x8100
SIZE_BUCKETS = (64, 127, 255, 511, 1023)    # PRC64/PTC64 .. 1522: upper bounds

# Registers that keep what is written (reset value, writable bits).
PLAIN = {
    FCAL: (0, 0xFFFF_FFFF), FCAH: (0, 0xFFFF), FCT: (0, 0xFFFF), VET: (VLAN_ETHERTYPE, 0xFFFF),
    ITR: (0, 0xFFFF), FCTTV: (0, 0xFFFF), TXCW: (0, 0xC000_FFFF), TIPG: (0, 0x3FFF_FFFF),
    AIT: (0, 0xFFFF), LEDCTL: (0x0706_8302, 0xFFFF_FFFF), PBA: (0x0010_0030, 0xFFFF),
    FCRTL: (0, 0x8000_FFF8), FCRTH: (0, 0xFFF8), RDTR: (0, 0xFFFF), RXDCTL: (0, 0x01FF_3F3F),
    RADV: (0, 0xFFFF), RSRPD: (0, 0xFFF), TXDMAC: (0, 1), TIDV: (0, 0xFFFF),
    TXDCTL: (0, 0x01FF_3F3F), TADV: (0, 0xFFFF), TSPMT: (0x0100_0400, 0xFFFF_FFFF),
    RXCSUM: (0, 0x3FF), WUC: (0, 0xF), WUFC: (0, 0xF00FF), WUS: (0, 0xF00FF),
    MANC: (0, 0x00FF_FFFF), IPAV: (0, 0x1_0001),
    **{VFTA + 4 * i: (0, 0xFFFF_FFFF) for i in range(128)},
    **{IP4AT + 8 * i: (0, 0xFFFF_FFFF) for i in range(4)},
    **{IP6AT + 4 * i: (0, 0xFFFF_FFFF) for i in range(4)},
    WUPL: (0, 0xFFF), **{WUPM + 4 * i: (0, 0xFFFF_FFFF) for i in range(32)},
    **{FFLT + 8 * i: (0, 0x7FF) for i in range(4)},
    **{FFMT + 8 * i: (0, 0xF) for i in range(128)},
    **{FFVT + 8 * i: (0, 0xFF) for i in range(128)},
}


# Registers kept in the C state (struct akvm_e1000): field, writable bits.
SHARED = {RDBAL: ("rdbal", 0xFFFF_FFF0), RDBAH: ("rdbah", 0xFFFF_FFFF),
          RDLEN: ("rdlen", 0x000F_FF80), TDBAL: ("tdbal", 0xFFFF_FFF0),
          TDBAH: ("tdbah", 0xFFFF_FFFF), TDLEN: ("tdlen", 0x000F_FF80)}


def eeprom_image(mac: bytes) -> list[int]:
    """64 words: the MAC address, the identity words, the rest erased (0xFFFF), and a
    checksum word that makes them sum to 0xBABA."""
    words = [0xFFFF] * EEPROM_WORDS
    words[0:3] = [mac[0] | mac[1] << 8, mac[2] | mac[3] << 8, mac[4] | mac[5] << 8]
    words[3:10] = [0] * 7
    words[EEPROM_ICW1] = ICW1_SIGNATURE
    words[EEPROM_SUBSYSTEM_ID] = SUBSYSTEM_ID
    words[EEPROM_SUBSYSTEM_VENDOR] = VENDOR_ID
    words[EEPROM_DEVICE_ID] = DEVICE_ID
    words[EEPROM_VENDOR_ID] = VENDOR_ID
    words[0x0F] = 0
    words[EEPROM_CHECKSUM_WORD] = (EEPROM_SUM - sum(words[:EEPROM_CHECKSUM_WORD])) & 0xFFFF
    return words


def ones_sum(data, start: int = 0) -> int:
    """The 16-bit ones' complement sum (big-endian words) of data, before complementing."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _put_checksum(packet: bytearray, start: int, end: int, at: int, seed: int = 0) -> bool:
    """Store ~sum(packet[start:end]) at `at` (the field's contents included, as the
    hardware does: software seeds it). False when the offsets do not fit the packet."""
    if not (0 <= start < end <= len(packet) and 0 <= at and at + 2 <= len(packet)):
        return False
    csum = ~ones_sum(packet[start:end], seed) & 0xFFFF
    packet[at:at + 2] = csum.to_bytes(2, "big")
    return True


class Microwire:
    """The serial EEPROM behind EECD: CS, SK, DI in; DO out (93C46, 16-bit words)."""

    def __init__(self, words: list[int]):
        self.words = words
        self.latched = 0                 # SK, CS, DI as last written
        self.shift = self.bits = 0
        self.reading = False
        self.position = 0                # the bit DO shows: word << 4 | (15 - bit)
        self.refused = 0                 # write, erase and write-enable instructions

    def do(self) -> bool:
        if not self.reading:
            return True                  # idle (and "ready" after a program cycle)
        if self.position < 0:
            return False                 # the dummy zero before the data
        word = self.words[(self.position >> 4) % EEPROM_WORDS]
        return bool(word >> (15 - (self.position & 15)) & 1)

    def write(self, eecd: int) -> None:
        old, self.latched = self.latched, eecd & (EECD_SK | EECD_CS | EECD_DI)
        if not eecd & EECD_CS:
            self.reading = False
            return
        if not old & EECD_CS:            # chip select rising: a new instruction
            self.shift = self.bits = 0
            self.reading = False
        if not eecd & EECD_SK or old & EECD_SK:
            return                       # only rising clock edges matter
        if self.reading:
            self.position += 1
            return
        self.shift = (self.shift << 1 | bool(eecd & EECD_DI)) & 0x1FF
        self.bits += 1
        if self.bits == 3 + MICROWIRE_ADDRESS_BITS:
            opcode, address = self.shift >> MICROWIRE_ADDRESS_BITS, self.shift & 0x3F
            if opcode == MICROWIRE_READ:
                self.reading = True
                self.position = address * 16 - 1
            elif opcode & 0b100:
                self.refused += 1        # a write, erase or enable: the part is read-only


class E1000(PciDevice):
    kind = "e1000"

    def __init__(self, backend, mac: bytes, name: str = "e1000"):
        super().__init__(VENDOR_ID, DEVICE_ID, CLASS_ETHERNET, revision=REVISION,
                         subsystem_vendor_id=VENDOR_ID, subsystem_id=SUBSYSTEM_ID,
                         interrupt_pin=1, name=name)
        self.add_bar(0, MMIO_SIZE, BarKind.MEM32, self)
        self.add_bar(1, IO_SIZE, BarKind.IO, _IoWindow(self))
        self.backend = backend
        self.mac = bytes(mac)
        self.eeprom = Microwire(eeprom_image(self.mac))
        c = lib.akvm_e1000_new()
        if c == ffi.NULL:
            raise MemoryError("akvm_e1000_new")
        self.handle = ffi.gc(c, lib.akvm_e1000_free)   # the C data path's state and lock
        self.s = lib.akvm_e1000_state(self.handle)     # the registers both sides use
        self.fastpath = None                 # the machine's (akvm.base.runloop.FastPath)
        self._fastpath_id = None
        self._kick = -1                      # eventfd: TDT/RDT for the backend's thread
        self._slots = None
        self.worker = None
        self._held: bytes | None = None          # a frame waiting for receive descriptors
        self._queued: list[bytes] = []           # C's unsent frames a snapshot had: start()
        self._resuming = False
        self._logged: set[str] = set()
        self.tx_frames = self.rx_frames = self.rx_dropped = self.tx_dropped = self.errors = 0
        self.bad_accesses = 0
        self.interrupts = 0
        self.phy_errors = 0
        self.autonegotiations = 0
        self._reset(phy=True)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        from akvm.devices.virtio.worker import Worker
        self.worker = getattr(self.backend, "worker", None) or Worker(self.name)
        self.backend.start(self.worker, self.receive)
        self.worker.start()
        self.worker.call(self._go_on)
        if hasattr(self.backend, "set_native") and (type(self.dma) is DirectDma
                                                    or self.dma.translated):
            self._slots = native_slots(self.dma.memory)
            if self._slots is not None:
                self.worker.call(self._go_native)

    def _go_native(self) -> None:
        """The rings in C on the backend's thread (devices/e1000.c): TDT and RDT writes
        complete in the vCPU's exit handler and wake that thread."""
        from akvm.devices.virtio.worker import closed_with
        self._kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._close_kick = closed_with(self, [self._kick])
        with self._locked():
            lib.akvm_e1000_use_ram(self.handle, self._slots, len(self._slots))
            self._use_translator()
            self.s.kick_fd = self._kick
            self.s.bus_master = int(self.bus_master)
            self.s.native = 1
        self.backend.set_native(_address("akvm_e1000_tx"), _address("akvm_e1000_rx"),
                                int(ffi.cast("uintptr_t", self.handle)), (self._kick, -1),
                                self._python_turn, self._native_interrupt, self,
                                attach=_address("akvm_e1000_attach"))
        os.eventfd_write(self._kick, 1)

    def _go_on(self) -> None:
        """What a restored snapshot had half done (device thread): the frames C had
        gathered go out, INTA# rises for causes C set before its thread could raise it,
        a held frame tries the ring again. Nothing, after a boot."""
        queued, self._queued = self._queued, []
        for frame in queued:
            self.backend.send(frame)
        with self._locked():
            self._update_irq()
        if self._held is not None:
            self._resume()

    def _use_translator(self) -> None:
        """Behind an IOMMU, the translator C may use now (akvm.iommu.fastdma; for a
        pass-through context too), or none (the coherence checker on, a context that
        faults): asked again whenever C leaves work to Python, which may be why (the
        context changed). Locks held."""
        if self.dma.translated:
            self.dma.fast_done()
            lib.akvm_e1000_use_xlate(self.handle,
                                     self.dma.fast_translator(passthrough=True) or ffi.NULL)

    def _python_turn(self) -> None:
        """C left this turn to Python (backend's thread): the rest of the transmit ring, and
        a received frame Python holds, which may have room now."""
        with self._locked():
            self._use_translator()
            self._transmit()
        if self._held is not None:
            self._resume()

    def _native_interrupt(self) -> None:
        with self._locked():
            self._update_irq()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.backend.close()
        with self._locked():
            self.s.native = 0
        if self._fastpath_id is not None:
            self.fastpath.remove(self._fastpath_id)
            self._fastpath_id = None
        if self._kick >= 0:
            self._close_kick()
            self._kick = -1

    def _locked(self):
        """The device lock and the C state's lock (always in that order)."""
        return _Locked(self)

    def bar_moved(self, bar, old, new) -> None:
        """BAR0 moved: the C exit handler follows it (lock held)."""
        super().bar_moved(bar, old, new)
        if bar.index != 0:
            return
        lib.akvm_e1000_lock(self.handle)
        self.s.bar = new or 0
        lib.akvm_e1000_unlock(self.handle)
        if self.fastpath is None:
            return
        from akvm.base.runloop import MMIO
        if self._fastpath_id is not None:
            self.fastpath.remove(self._fastpath_id)
            self._fastpath_id = None
        if new is not None:
            self._fastpath_id = self.fastpath.add(MMIO, new, bar.size, "akvm_e1000_exit", self)

    def set_command(self, bits: int, on: bool = True) -> None:
        super().set_command(bits, on)
        self._sync_bus_master()

    def _sync_bus_master(self) -> None:
        lib.akvm_e1000_lock(self.handle)
        self.s.bus_master = int(self.bus_master)
        lib.akvm_e1000_unlock(self.handle)

    def _reset(self, phy: bool = False) -> None:
        """Power-on and CTRL.RST: every MAC register to its default (PCI configuration
        stays); the address in RAL0/RAH0 comes from the EEPROM again."""
        self.regs = {offset: reset for offset, (reset, _) in PLAIN.items()}
        self.ctrl = CTRL_FD | CTRL_SLU | CTRL_SPEED_1000
        self.ctrl_ext = 0
        self.eecd_req = 0
        self.eerd = 0
        self.mdic = MDIC_READY
        s = self.s
        for field in ("icr", "ims", "rctl", "tctl", "rdh", "rdt", "tdh", "tdt", "rdbal", "rdbah",
                      "rdlen", "tdbal", "tdbah", "tdlen", "python_tx", "rx_full", "python_rx",
                      "tx_stopped"):
            setattr(s, field, 0)
        for i in range(RAL_COUNT):
            s.ra[i][0] = s.ra[i][1] = 0
        w = self.eeprom.words
        s.ra[0][0], s.ra[0][1] = w[0] | w[1] << 16, w[2] | RAH_AV
        for i in range(MTA_COUNT):
            s.mta[i] = 0
        for i in range(lib.E1000_STATS_COUNT):
            s.stats[i] = 0
        self.ioaddr = 0
        self.context = {"ipcss": 0, "ipcso": 0, "ipcse": 0, "tucss": 0, "tucso": 0, "tucse": 0,
                        "paylen": 0, "tucmd": 0, "hdrlen": 0, "mss": 0}
        self._tx_packet = bytearray()
        self._tx_first = None            # the first data descriptor's options of the packet
        self._tx_oversized = False
        if phy:
            self.phy = {reg: value for reg, (value, _) in PHY_REGISTERS.items()}
        self._sync_link()
        if self.intx_asserted:
            self.lower_intx()
            s.intx = 0

    # --- snapshots (akvm.devices.state) --------------------------------------------------

    # struct akvm_e1000 beyond RA, MTA and the statistics; link_up, bus_master and intx
    # follow from the rest, bar from BAR0, native and kick_fd from start().
    _C_STATE = ("rctl", "tctl", "icr", "ims", "rdbal", "rdbah", "rdlen", "rdh", "rdt", "tdbal",
                "tdbah", "tdlen", "tdh", "tdt", "python_tx", "python_rx", "rx_waiting", "rx_full",
                "tx_stopped", "tx_frames", "rx_frames", "rx_dropped", "exits")
    _EEPROM = ("latched", "shift", "bits", "reading", "position", "refused")
    _NIC_COUNTERS = ("tx_frames", "rx_frames", "rx_dropped", "tx_dropped", "errors",
                     "bad_accesses", "interrupts", "phy_errors", "autonegotiations")

    def pause(self, timeout: float) -> bool:
        """Hold the device's thread (the backend's, with user networking) between two
        turns, so neither Python nor C moves frames or registers while the state is read."""
        return self.worker is None or self.worker.pause(timeout)

    def resume(self) -> None:
        if self.worker is not None:
            self.worker.resume()

    def device_snapshot(self) -> dict:
        """Every register (the C data path's struct too: rings, ICR/IMS, RCTL/TCTL, RA,
        MTA, statistics), the EEPROM's Microwire state, EERD, MDIC, the PHY, the TCP/IP
        context, a packet whose descriptors have not reached EOP yet, a received frame
        held for want of descriptors, the frames C gathered for the backend's thread and
        it has not sent, and the counters. The thread is held (pause()), so C holds still."""
        with self._locked():
            s, eeprom = self.s, self.eeprom
            return {
                "c": {name: int(getattr(s, name)) for name in self._C_STATE},
                "ra": [list(pair) for pair in s.ra], "mta": list(s.mta), "stats": list(s.stats),
                "regs": {f"{offset:#06x}": value for offset, value in self.regs.items()},
                "ctrl": self.ctrl, "ctrl_ext": self.ctrl_ext, "eecd_req": self.eecd_req,
                "eerd": self.eerd, "mdic": self.mdic, "ioaddr": self.ioaddr,
                "eeprom": {name: getattr(eeprom, name) for name in self._EEPROM},
                "phy": {str(reg): value for reg, value in self.phy.items()},
                "context": dict(self.context), "tx_packet": pack(self._tx_packet),
                "tx_first": self._tx_first, "tx_oversized": self._tx_oversized,
                "held": None if self._held is None else pack(self._held),
                "queued": [pack(frame) for frame in self._queued_frames()],
                **save_counters(self, self._NIC_COUNTERS)}

    def _queued_frames(self) -> list[bytes]:
        buffer, frames = ffi.new("uint8_t[]", lib.E1000_TXQ_SLOT), []
        while (n := lib.akvm_e1000_queued(self.handle, len(frames), buffer)) >= 0:
            frames.append(bytes(ffi.buffer(buffer, n)))
        return frames

    def device_restore(self, state: dict) -> None:
        """Into a device built anew from the configuration, with a new backend: frames in
        flight on the host side (in libslirp, a TAP device, a socket, or queued for the
        backend's thread by Python) are lost. INTA# is at its level already (PciDevice);
        start() sends C's saved frames and hands the rings to C again."""
        with self._locked():
            s = self.s
            for name in self._C_STATE:
                setattr(s, name, int(state["c"][name]))
            for pair, saved in zip(s.ra, _exactly(state["ra"], RAL_COUNT, "RAL/RAH pairs")):
                pair[0], pair[1] = (int(v) for v in _exactly(saved, 2, "RAL/RAH halves"))
            for i, value in enumerate(_exactly(state["mta"], MTA_COUNT, "MTA registers")):
                s.mta[i] = int(value)
            for i, value in enumerate(_exactly(state["stats"], lib.E1000_STATS_COUNT,
                                               "statistics registers")):
                s.stats[i] = int(value)
            self.regs = {offset: int(state["regs"][f"{offset:#06x}"]) for offset in PLAIN}
            self.ctrl, self.ctrl_ext, self.eecd_req, self.eerd, self.mdic, self.ioaddr = (
                int(state[k]) for k in ("ctrl", "ctrl_ext", "eecd_req", "eerd", "mdic", "ioaddr"))
            saved = state["eeprom"]
            for name in self._EEPROM:
                setattr(self.eeprom, name, bool(saved[name]) if name == "reading" else
                        int(saved[name]))
            self.phy = {reg: int(state["phy"][str(reg)]) for reg in PHY_REGISTERS}
            self.context = {key: int(state["context"][key]) for key in self.context}
            self._tx_packet = bytearray(unpack(state["tx_packet"]))
            self._tx_first = None if state["tx_first"] is None else dict(state["tx_first"])
            self._tx_oversized = bool(state["tx_oversized"])
            self._held = None if state["held"] is None else unpack(state["held"])
            self._queued = [unpack(frame) for frame in state["queued"]]
            restore_counters(self, state, self._NIC_COUNTERS)
            self._sync_link()
            s.bus_master = int(self.bus_master)
            s.intx = int(self.intx_asserted)

    # --- BAR0: registers ---------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if size != 4 or offset & 3:
            self.bad_accesses += 1
            return 0
        with self._locked():
            return self._read(offset) & 0xFFFF_FFFF

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset & 3:
            self.bad_accesses += 1
            return
        with self._locked():
            self._write(offset, value & 0xFFFF_FFFF)

    def _read(self, offset: int) -> int:
        s = self.s
        if offset in self.regs:
            return self.regs[offset]
        if offset in SHARED:
            return getattr(s, SHARED[offset][0])
        if STATS_START <= offset < STATS_END:
            return self._read_stat(offset)
        if RAL0 <= offset < RAL0 + 8 * RAL_COUNT:
            return s.ra[(offset - RAL0) // 8][(offset & 4) >> 2]
        if MTA <= offset < MTA + 4 * MTA_COUNT:
            return s.mta[(offset - MTA) // 4]
        if offset == CTRL:
            return self.ctrl
        if offset == STATUS:
            return self._status()
        if offset == EECD:
            eeprom = self.eeprom
            return (EECD_PRES | self.eecd_req | (EECD_GNT if self.eecd_req else 0) |
                    eeprom.latched | (EECD_DO if eeprom.do() else 0))
        if offset == EERD:
            return self.eerd
        if offset == CTRL_EXT:
            return self.ctrl_ext
        if offset == MDIC:
            return self.mdic
        if offset == ICR:
            value, s.icr = s.icr, 0
            self._update_irq()
            return value
        field = {ICS: "icr", IMS: "ims", RCTL: "rctl", TCTL: "tctl", RDH: "rdh", RDT: "rdt",
                 TDH: "tdh", TDT: "tdt"}.get(offset)
        return 0 if field is None else getattr(s, field)    # unknown registers read 0

    def _write(self, offset: int, value: int) -> None:
        s = self.s
        plain = PLAIN.get(offset)
        if plain is not None:
            self.regs[offset] = value & plain[1]
            return
        if offset in SHARED:
            field, mask = SHARED[offset]
            setattr(s, field, value & mask)
            return
        if RAL0 <= offset < RAL0 + 8 * RAL_COUNT:
            pair = s.ra[(offset - RAL0) // 8]
            if offset & 4:
                pair[1] = value & (RAH_AV | 0x3_FFFF)
            else:
                pair[0] = value
            return
        if MTA <= offset < MTA + 4 * MTA_COUNT:
            s.mta[(offset - MTA) // 4] = value
            return
        if offset == CTRL:
            self._write_ctrl(value)
        elif offset == EECD:
            self.eecd_req = value & EECD_REQ
            self.eeprom.write(value)
        elif offset == EERD:
            self._write_eerd(value)
        elif offset == CTRL_EXT:
            self.ctrl_ext = value & ~CTRL_EXT_EE_RST          # the reload is done at once
        elif offset == MDIC:
            self._write_mdic(value)
        elif offset == ICR:
            s.icr &= ~value
            self._update_irq()
        elif offset == ICS:
            self._cause(value)
        elif offset == IMS:
            s.ims |= value & ICR_VALID
            self._update_irq()
        elif offset == IMC:
            s.ims &= ~value
            self._update_irq()
        elif offset == RCTL:
            s.rctl = value & 0x07FF_FFFE
            self._rings_changed(tx=False)
        elif offset == TCTL:
            s.tctl = value & 0x03FF_FFFA
            self._rings_changed(tx=True)
        elif offset == RDH:
            s.rdh = value & 0xFFFF
        elif offset == RDT:
            s.rdt = value & 0xFFFF
            self._rings_changed(tx=False)
        elif offset == TDH:
            s.tdh = value & 0xFFFF
        elif offset == TDT:
            s.tdt = value & 0xFFFF
            s.tx_stopped = 0
            self._rings_changed(tx=True)
        elif offset == STATUS or STATS_START <= offset < STATS_END:
            pass                          # read-only
        # other registers: writes are dropped

    def _rings_changed(self, tx: bool) -> None:
        """A transmit or receive register changed (locks held): C's thread looks again when
        C serves the rings (the vCPU's exit handler does this for TDT and RDT), else
        Python transmits now, or lets a waiting frame try again."""
        if self.s.native:
            os.eventfd_write(self._kick, 1)
        elif tx:
            self._transmit()
        else:
            self._resume_receive()

    def _sync_link(self) -> None:
        self.s.link_up = int(bool(self._status() & STATUS_LU))

    def _status(self) -> int:
        link = bool(self.phy[PHY_STATUS] & MII_SR_LINK_STATUS) and bool(self.ctrl & CTRL_SLU)
        return (STATUS_FD | (STATUS_LU if link else 0) | STATUS_SPEED_1000 | STATUS_ASDV_1000 |
                STATUS_GIO_MASTER_EN)

    def _write_ctrl(self, value: int) -> None:
        link_before = self._status() & STATUS_LU
        if value & CTRL_RST:
            self._reset()
            return
        if value & CTRL_PHY_RST:
            self.phy = {reg: v for reg, (v, _) in PHY_REGISTERS.items()}
            self._sync_link()
        self.ctrl = value & ~(CTRL_RST | CTRL_PHY_RST | CTRL_LRST)
        self._sync_link()
        if self._status() & STATUS_LU != link_before:
            self._cause(ICR_LSC)

    def _write_eerd(self, value: int) -> None:
        if not value & EERD_START:
            self.eerd = value & ~EERD_DONE
            return
        address = (value >> EERD_ADDR_SHIFT) & 0xFF
        word = self.eeprom.words[address % EEPROM_WORDS]
        self.eerd = word << EERD_DATA_SHIFT | address << EERD_ADDR_SHIFT | EERD_DONE

    def _write_mdic(self, value: int) -> None:
        phy, reg = (value >> MDIC_PHY_SHIFT) & 0x1F, (value >> MDIC_REG_SHIFT) & 0x1F
        op = value & (3 << 26)
        data = value & 0xFFFF
        spec = PHY_REGISTERS.get(reg)
        ok = phy == PHY_ADDRESS and spec is not None
        if ok and op == MDIC_OP_READ:
            data = self.phy[reg]
        elif ok and op == MDIC_OP_WRITE and spec[1]:
            self._phy_write(reg, data & spec[1])
        else:
            ok = False                    # no such PHY or register, a read-only one, a bad op
        if not ok:
            self.phy_errors += 1
        self.mdic = ((value & ~(MDIC_READY | MDIC_ERROR | 0xFFFF)) | data | MDIC_READY |
                     (0 if ok else MDIC_ERROR))
        if value & MDIC_INT_EN:
            self._cause(ICR_MDAC)

    def _phy_write(self, reg: int, data: int) -> None:
        if reg == PHY_CTRL:
            if data & MII_CR_RESET:
                self.phy = {r: v for r, (v, _) in PHY_REGISTERS.items()}
                data &= ~MII_CR_RESET
            restart = data & MII_CR_RESTART_AUTO_NEG and data & MII_CR_AUTO_NEG_EN
            self.phy[PHY_CTRL] = data & ~MII_CR_RESTART_AUTO_NEG
            if restart:                   # completes at once: the link is up again
                self.phy[PHY_STATUS] |= MII_SR_LINK_STATUS | MII_SR_AUTONEG_COMPLETE
                self.phy[PHY_LP_ABILITY] |= NWAY_LPAR_ACKNOWLEDGE
                self.autonegotiations += 1
                self._cause(ICR_LSC)
            return
        self.phy[reg] = data
        self._sync_link()

    # --- interrupts ----------------------------------------------------------------------

    def _cause(self, bits: int) -> None:
        self.s.icr |= bits & ICR_VALID
        self._update_irq()

    def _update_irq(self) -> None:
        """INTA# follows ICR & IMS (level); locks held."""
        want = bool(self.s.icr & self.s.ims)
        if want and not self.intx_asserted:
            self.interrupts += 1
            self.signal(0)
        elif not want and self.intx_asserted:
            self.lower_intx()
        self.s.intx = int(self.intx_asserted)

    # --- statistics ------------------------------------------------------------------------

    def _read_stat(self, offset: int) -> int:
        stats, i = self.s.stats, (offset - STATS_START) // 4
        value = stats[i]
        if offset in STATS_64:
            stats[i] = stats[(STATS_64[offset] - STATS_START) // 4] = 0
        elif offset not in STATS_64.values():
            stats[i] = 0
        return value

    def _count(self, offset: int, n: int = 1) -> None:
        stats, i = self.s.stats, (offset - STATS_START) // 4
        stats[i] = min(stats[i] + n, 0xFFFF_FFFF)

    def _count64(self, low: int, n: int) -> None:
        stats, i = self.s.stats, (low - STATS_START) // 4
        total = (stats[i + 1] << 32 | stats[i]) + n
        stats[i], stats[i + 1] = total & 0xFFFF_FFFF, total >> 32 & 0xFFFF_FFFF

    def _count_size(self, base: int, length: int) -> None:
        for i, bound in enumerate(SIZE_BUCKETS):
            if length <= bound:
                self._count(base + 4 * i)
                return
        self._count(base + 4 * len(SIZE_BUCKETS))

    # --- helpers -------------------------------------------------------------------------

    def log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning("%s: %s (logged once)", self.name, message)

    def _ring(self, tx: bool) -> tuple[int, int] | None:
        """(base, descriptors) of a ring the guest programmed sensibly, else None (logged)."""
        s, what = self.s, "transmit" if tx else "receive"
        length, head, tail = (s.tdlen, s.tdh, s.tdt) if tx else (s.rdlen, s.rdh, s.rdt)
        count = length // 16
        if not count or head >= count or tail >= count:
            self.errors += 1
            self.log_once(f"{what}-ring", f"{what} ring of {count} descriptors with head {head} "
                                          f"and tail {tail}: nothing done")
            return None
        return (s.tdbah << 32 | s.tdbal if tx else s.rdbah << 32 | s.rdbal), count

    def _dma_ok(self) -> bool:
        return self.dma is not None and self.bus_master

    # --- transmit (the vCPU that wrote TDT) --------------------------------------------------

    def _transmit(self) -> None:
        s = self.s
        if not s.tctl & TCTL_EN or s.tdh == s.tdt or s.tx_stopped or not self._dma_ok():
            return
        ring = self._ring(tx=True)
        if ring is None:
            return
        base, count = ring
        causes = 0
        while s.tdh != s.tdt:
            address = base + 16 * s.tdh
            try:
                lo, hi = struct.unpack("<QQ", self.dma.read(address, 16))
                report = self._tx_descriptor(lo, hi)
                if report:
                    self.dma.write(address + 12, bytes((hi >> 32 & 0xF | TXD_STAT_DD,)))
                    causes |= ICR_TXDW
            except DmaError as e:
                self.errors += 1
                self.log_once("tx-dma", f"transmit descriptor {s.tdh}: {e}: transmission "
                                        "stopped until the next TDT write")
                s.tx_stopped = 1            # C's turns too (e1000.c)
                break
            s.tdh = (s.tdh + 1) % count
        if s.tdh == s.tdt:
            causes |= ICR_TXQE
        s.python_tx = int(self._tx_first is not None)      # C keeps off a packet begun here
        self._cause(causes)

    def _tx_descriptor(self, lo: int, hi: int) -> bool:
        """One descriptor; returns whether its status is to be written back (RS)."""
        cmd = hi >> 24 & 0xFF
        if not cmd & TXD_CMD_DEXT:                       # legacy
            length = hi & 0xFFFF
            self._tx_data(lo, length, cmd, {"cso": hi >> 16 & 0xFF, "css": hi >> 40 & 0xFF,
                                            "special": hi >> 48 & 0xFFFF})
            return bool(cmd & TXD_CMD_RS)
        dtyp = hi >> 20 & 0xF
        if dtyp == TXD_DTYP_CONTEXT:
            c = self.context
            c["ipcss"], c["ipcso"], c["ipcse"] = lo & 0xFF, lo >> 8 & 0xFF, lo >> 16 & 0xFFFF
            c["tucss"], c["tucso"], c["tucse"] = lo >> 32 & 0xFF, lo >> 40 & 0xFF, lo >> 48 & 0xFFFF
            c["paylen"], c["tucmd"] = hi & 0xF_FFFF, cmd
            c["hdrlen"], c["mss"] = hi >> 40 & 0xFF, hi >> 48 & 0xFFFF
            if cmd & TXD_CMD_TSE:
                self._count(TSCTC)
            return bool(cmd & TXD_CMD_RS)
        if dtyp == TXD_DTYP_DATA:
            self._tx_data(lo, hi & 0xF_FFFF, cmd, {"popts": hi >> 40 & 0xFF,
                                                   "special": hi >> 48 & 0xFFFF, "extended": True})
            return bool(cmd & TXD_CMD_RS)
        self.errors += 1
        self.log_once("tx-dtyp", f"transmit descriptor of type {dtyp}: skipped")
        return bool(cmd & TXD_CMD_RS)

    def _tx_data(self, address: int, length: int, cmd: int, options: dict) -> None:
        """A data descriptor: POPTS and TSE count in a packet's first, the legacy checksum
        fields and VLE with its VLAN tag in its last (EOP)."""
        if self._tx_first is None:
            self._tx_first = dict(options, cmd=cmd)
        if length and not self._tx_oversized:
            if len(self._tx_packet) + length > MAX_TX_CHAIN:
                self._tx_oversized = True
                self._tx_packet = bytearray()
            else:
                try:
                    self._tx_packet += self.dma.read(address, length)
                except DmaError as e:
                    self._tx_oversized = True          # the packet is lost: drop it at EOP
                    self._tx_packet = bytearray()
                    self.errors += 1
                    self.log_once("tx-buffer", f"transmit buffer: {e}: packet dropped")
        if not cmd & TXD_CMD_EOP:
            return
        packet, first, oversized = self._tx_packet, self._tx_first, self._tx_oversized
        self._tx_packet, self._tx_first, self._tx_oversized = bytearray(), None, False
        if oversized or not packet:
            self.tx_dropped += 1
            if oversized:
                self.log_once("tx-size", f"a transmit chain over {MAX_TX_CHAIN} bytes, or one "
                                         "whose buffer could not be read: dropped")
            return
        vlan = options["special"] if cmd & TXD_CMD_VLE else None
        if first.get("extended"):
            if first["cmd"] & TXD_CMD_TSE:
                self._tx_segments(packet, first["popts"], vlan)
                return
            self._tx_offload(packet, first["popts"])
        elif "css" in options and cmd & TXD_CMD_IC:               # a legacy EOP descriptor
            _put_checksum(packet, options["css"], len(packet), options["cso"])
        self._tx_send(packet, vlan)

    def _tx_offload(self, packet: bytearray, popts: int) -> None:
        """POPTS.IXSM / TXSM with the last context descriptor's offsets."""
        c = self.context
        if popts & TXD_POPTS_IXSM:
            end = c["ipcse"] + 1 if c["ipcse"] else len(packet)
            _put_checksum(packet, c["ipcss"], min(end, len(packet)), c["ipcso"])
        if popts & TXD_POPTS_TXSM:
            end = c["tucse"] + 1 if c["tucse"] else len(packet)
            _put_checksum(packet, c["tucss"], min(end, len(packet)), c["tucso"])

    def _tx_segments(self, packet: bytearray, popts: int, vlan: int | None) -> None:
        """TCP segmentation: the header (HDRLEN bytes) before every MSS-sized piece of the
        payload, with the IPv4 length and id, the TCP sequence number and flags (or the UDP
        length) and the checksums done for each segment."""
        c = self.context
        hdrlen, mss, ipcss, tucss = c["hdrlen"], c["mss"], c["ipcss"], c["tucss"]
        tcp, ipv4 = c["tucmd"] & TUCMD_TCP, c["tucmd"] & TUCMD_IP
        if not (mss and tucss + (20 if tcp else 8) <= hdrlen <= len(packet) and
                ipcss + (20 if ipv4 else 40) <= hdrlen and
                (len(packet) - hdrlen) / mss <= MAX_TSO_SEGMENTS):
            self.tx_dropped += 1
            self.errors += 1
            self.log_once("tso", f"TCP segmentation context (HDRLEN {hdrlen}, MSS {mss}) does not "
                                 "fit the packet: dropped")
            return
        header, payload = packet[:hdrlen], packet[hdrlen:]
        seed = int.from_bytes(header[c["tucso"]:c["tucso"] + 2], "big") \
            if c["tucso"] + 2 <= hdrlen else 0
        seq = int.from_bytes(header[tucss + 4:tucss + 8], "big") if tcp else 0
        ip_id = int.from_bytes(header[ipcss + 4:ipcss + 6], "big") if ipv4 else 0
        flags = header[tucss + 13] if tcp else 0
        offset = 0
        while True:
            piece = payload[offset:offset + mss]
            last = offset + mss >= len(payload)
            seg = bytearray(header) + piece
            if ipv4:
                seg[ipcss + 2:ipcss + 4] = (len(seg) - ipcss).to_bytes(2, "big")
                seg[ipcss + 4:ipcss + 6] = (ip_id & 0xFFFF).to_bytes(2, "big")
                ip_id += 1
            else:                          # IPv6: the payload length
                seg[ipcss + 4:ipcss + 6] = (len(seg) - ipcss - 40).to_bytes(2, "big")
            l4_len = len(seg) - tucss
            if tcp:
                seg[tucss + 4:tucss + 8] = ((seq + offset) & 0xFFFF_FFFF).to_bytes(4, "big")
                if not last:
                    seg[tucss + 13] = flags & ~0x09          # FIN and PSH on the last only
            else:
                seg[tucss + 4:tucss + 6] = l4_len.to_bytes(2, "big")
            if popts & TXD_POPTS_IXSM and ipv4:
                seg[c["ipcso"]:c["ipcso"] + 2] = b"\0\0"
                _put_checksum(seg, ipcss, tucss, c["ipcso"])
            if popts & TXD_POPTS_TXSM:
                seg[c["tucso"]:c["tucso"] + 2] = seed.to_bytes(2, "big")
                _put_checksum(seg, tucss, len(seg), c["tucso"], l4_len)
            self._tx_send(seg, vlan)
            offset += mss
            if last:
                return

    def _tx_send(self, frame: bytearray, vlan: int | None) -> None:
        if vlan is not None and len(frame) >= 12:
            frame[12:12] = struct.pack("!HH", self.regs[VET], vlan)
        if len(frame) > MAX_TX_PACKET + 4 or len(frame) < 14:
            self.tx_dropped += 1
            self.log_once("tx-frame", f"a {len(frame)}-byte frame: dropped")
            return
        if len(frame) < MIN_FRAME and self.s.tctl & TCTL_PSP:
            frame += bytes(MIN_FRAME - len(frame))            # pad short packets
        self.backend.send(bytes(frame))
        self.tx_frames += 1
        length = max(len(frame), MIN_FRAME) + FCS_LEN
        self._count(GPTC)
        self._count(TPT)
        self._count64(GOTCL, length)
        self._count64(TOTL, length)
        if frame[0] & 1:
            self._count(BPTC if frame[:6] == b"\xff" * 6 else MPTC)
        self._count_size(PTC64, length)

    # --- receive (the device's thread) ----------------------------------------------------

    def _resume_receive(self) -> None:
        """Descriptors, RCTL or Bus Master Enable changed: if a frame waits, try again on
        the device's thread (lock held)."""
        if self._held is not None and self.worker is not None and not self._resuming:
            self._resuming = True
            self.worker.call(self._resume)

    def _resume(self) -> None:
        with self._locked():
            self._resuming = False
            self.backend.resume()
        self.receive()

    def on_config_write(self, offset: int, size: int) -> None:
        self._sync_bus_master()
        if self.s.native:
            os.eventfd_write(self._kick, 1)     # C may hold frames waiting for bus mastering
        self._resume_receive()

    def receive(self) -> None:
        """Move frames from the backend into the receive ring (device thread)."""
        if self.s.native:
            with self._locked():
                self._use_translator()      # C gave these frames back: perhaps why
        while True:
            with self._locked():
                frame = self._held if self._held is not None else self.backend.recv()
                self._held = None
                self.s.python_rx = 0
                if frame is None:
                    return
                if not self._rx_frame(frame):
                    self._held = frame          # until descriptors come: _resume_receive
                    self.s.python_rx = self.s.rx_waiting = 1   # C's frames wait behind it
                    self.backend.pause()
                    return

    def _accepts(self, frame: bytes) -> bool:
        dst = frame[:6]
        rctl = self.s.rctl
        if dst[0] & 1:
            if dst == b"\xff" * 6:
                return bool(rctl & (RCTL_BAM | RCTL_MPE))
            if rctl & RCTL_MPE:
                return True
            shift = (4, 3, 2, 0)[rctl >> RCTL_MO_SHIFT & 3]
            h = (dst[4] >> shift | dst[5] << (8 - shift)) & 0xFFF
            return bool(self.s.mta[h >> 5] >> (h & 31) & 1)
        if rctl & RCTL_UPE:
            return True
        lo, hi = int.from_bytes(dst[:4], "little"), int.from_bytes(dst[4:6], "little")
        return any(ah & RAH_AV and al == lo and ah & 0xFFFF == hi for al, ah in self.s.ra)

    def _rx_frame(self, frame: bytes) -> bool:
        """Place one frame in the ring; False to hold it until descriptors come (locks held)."""
        s = self.s
        if not s.rctl & RCTL_EN or not self._status() & STATUS_LU or len(frame) < 14:
            return True                    # the receiver is off: the frame is lost on the wire
        if not self._dma_ok():
            return False
        if not self._accepts(frame):
            return True
        if s.rctl & RCTL_VFE and frame[12:14] == self.regs[VET].to_bytes(2, "big"):
            vid = int.from_bytes(frame[14:16], "big") & 0xFFF
            if not self.regs[VFTA + 4 * (vid >> 5)] >> (vid & 31) & 1:
                return True
        limit = MAX_RX_LONG if s.rctl & RCTL_LPE else MAX_RX_NORMAL
        if len(frame) + FCS_LEN > limit and not s.rctl & RCTL_SBP:
            self._count(ROC)
            self.rx_dropped += 1
            return True
        data = frame if len(frame) >= MIN_FRAME else frame + bytes(MIN_FRAME - len(frame))
        if not s.rctl & RCTL_SECRC:
            data += zlib.crc32(data).to_bytes(4, "little")
        bsize = self._buffer_size()
        need = -(-len(data) // bsize)
        ring = self._ring(tx=False)
        if ring is None:
            self._count(MPC)
            self.rx_dropped += 1
            return True
        base, count = ring
        free = (s.rdt - s.rdh) % count
        if need > count - 1:
            self._count(ROC)
            self.rx_dropped += 1
            self.log_once("rx-fit", f"a {len(data)}-byte frame needs {need} descriptors of "
                                    f"{bsize} bytes, the ring has {count}: dropped")
            return True
        if free < need:
            if not s.rx_full:                 # once while the ring stays full
                self._count(RNBC)
            s.rx_full = 1
            return False
        try:
            head = s.rdh
            slots = []
            for i in range(need):
                address = base + 16 * ((head + i) % count)
                slots.append((address, self.dma.read_u64(address)))
            for i, (address, buffer) in enumerate(slots):
                self.dma.write(buffer, data[i * bsize:(i + 1) * bsize])
            for i, (address, _) in enumerate(slots):
                piece = min(bsize, len(data) - i * bsize)
                status = RXD_STAT_DD | RXD_STAT_IXSM | (RXD_STAT_EOP if i == need - 1 else 0)
                self.dma.write(address + 8, struct.pack("<HHBBH", piece, 0, status, 0, 0))
        except DmaError as e:
            self.errors += 1
            self.rx_dropped += 1
            self.log_once("rx-dma", f"receive descriptor or buffer: {e}: frame dropped")
            return True
        s.rdh = (head + need) % count
        s.rx_full = 0
        self.rx_frames += 1
        length = max(len(frame), MIN_FRAME) + FCS_LEN
        self._count(GPRC)
        self._count(TPR)
        self._count64(GORCL, length)
        self._count64(TORL, length)
        if frame[0] & 1:
            self._count(BPRC if frame[:6] == b"\xff" * 6 else MPRC)
        self._count_size(PRC64, length)
        causes = ICR_RXT0
        if (s.rdt - s.rdh) % count <= count >> (s.rctl >> RCTL_RDMTS_SHIFT & 3) + 1:
            causes |= ICR_RXDMT0
        self._cause(causes)
        return True

    def _buffer_size(self) -> int:
        rctl = self.s.rctl
        bsize = rctl >> RCTL_BSIZE_SHIFT & 3
        if rctl & RCTL_BSEX:
            return (16384, 16384, 8192, 4096)[bsize]     # BSEX with 00b is reserved
        return (2048, 1024, 512, 256)[bsize]

    def stats(self) -> dict:
        b, s = self.backend, self.s
        with self._locked():
            return {"tx_frames": self.tx_frames + s.tx_frames,
                    "rx_frames": self.rx_frames + s.rx_frames,
                    "dropped": self.rx_dropped + self.tx_dropped + s.rx_dropped + b.dropped,
                    "errors": self.errors, "exits_in_c": s.exits,
                    "sent_by_vcpu": s.direct, "interrupts": self.interrupts,
                    "link_up": bool(self._status() & STATUS_LU),
                    "autonegotiations": self.autonegotiations, "mdio_errors": self.phy_errors}

    def format_stats(self, s: dict | None = None) -> str:
        s = s or self.stats()
        return (f"{self.name}: {s['tx_frames']} frames out, {s['rx_frames']} in, "
                f"{s['dropped']} dropped, {s['errors']} errors; {s['exits_in_c']} TDT/RDT writes "
                f"in C ({s['sent_by_vcpu']} sent by the vCPU); {s['interrupts']} interrupts; "
                f"link {'up' if s['link_up'] else 'down'}, "
                f"{s['autonegotiations']} autonegotiations, {s['mdio_errors']} MDIO errors")


def _exactly(values: list, count: int, what: str) -> list:
    if len(values) != count:
        raise ValueError(f"{len(values)} {what} saved, {count} here")
    return values


def _address(name: str) -> int:
    """A C function's address, for a backend built as another extension module."""
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


class _Locked:
    """with: the device's lock, then the C state's lock."""

    __slots__ = ("device",)

    def __init__(self, device: E1000):
        self.device = device

    def __enter__(self):
        self.device.lock.acquire()
        lib.akvm_e1000_lock(self.device.handle)

    def __exit__(self, *exc):
        lib.akvm_e1000_unlock(self.device.handle)
        self.device.lock.release()


class _IoWindow:
    """BAR1: IOADDR selects a register, IODATA reaches it (8254x SDM 13.2)."""

    def __init__(self, device: E1000):
        self.device = device

    def read(self, offset: int, size: int) -> int:
        d = self.device
        if size != 4:
            return 0
        if offset == IOADDR:
            return d.ioaddr
        if offset == IODATA:
            return d.read(d.ioaddr & (MMIO_SIZE - 4), 4)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        d = self.device
        if size != 4:
            return
        if offset == IOADDR:
            d.ioaddr = value & (MMIO_SIZE - 4)
        elif offset == IODATA:
            d.write(d.ioaddr, 4, value)
