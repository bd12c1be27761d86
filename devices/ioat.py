"""Intel I/OAT ("Crystal Beach DMA", CBDMA) version 3.3, as on Skylake-SP (8086:2021).

One PCI function per channel, as the real part has them (slot 4, functions
0-7, class 0x088000, revision 4): BAR0 is 16 KiB of 64-bit memory with the
device registers at 0x00, channel 0's at 0x80, the MSI-X table (one vector)
at 0x2000 and its PBA at 0x3000. Configuration space has MSI-X at 0x80, a
PCI Express capability (root-complex integrated endpoint) at 0x90, power
management at 0xE0 and, in the extended space, the uncorrectable-error and
internal channel-error registers (CHANERR_INT at 0x180, RW1C) drivers read.

The channel runs 64-byte descriptors from CHAINADDR, following each one's
`next`, until its count of completed descriptors equals DMACOUNT (16 bits;
a v3 driver appends by writing a larger count): memcpy (operation 0) and
NULL descriptors, with interrupt-on-completion, completion write (CHANSTS
to the CHANCMP address) and fence (every descriptor completes in order
here). DMACAPABILITY offers nothing beyond memcpy: no XOR, PQ, DCA.

The descriptor engine works on the channel's own thread, so a long copy
never holds a vCPU: the DMACOUNT write that gives it work makes the channel
ACTIVE before it returns (drivers wait only microseconds for that) and
wakes the thread. The engine is C (devices/ioat.c) while the function's
DMA reaches guest RAM directly (no IOMMU, or a pass-through context);
`run_python` is its twin and serves translated DMA: every descriptor fetch,
source, destination and completion write goes through the function's
DmaSpace, so a failed translation is recorded by the IOMMU with this
function's requester id, and halts the channel with the CHANERR bit of
the access that failed (READ_DATA_ERR, WRITE_DATA_ERR, NEXT_ADDR_ERR,
CHAIN_ADDR_VALUE_ERR, COMPLETION_ADDR_ERR). Malformed descriptors halt it
too (CONTROL_ERR, LENGTH_ERR, NEXT_DESC_ALIGN_ERR); nothing the guest
writes raises out of the model.

CHANCMD's suspend, abort and reset stop the engine within one chunk
(AKVM_IOAT_CHUNK bytes) and return only once it has stopped: nothing is
written to guest memory after a reset returns. Interrupts follow CHANCTRL's
INT_REARM: a completion (or an error, with ERR_INT_EN) sets ATTNSTATUS and
sends MSI-X vector 0 (or asserts INTx) if the channel is armed and
INTRCTRL's master enable is set; writing CHANCTRL with INT_REARM clears
ATTNSTATUS (lowering INTx) and sends what came while disarmed.
"""
from __future__ import annotations

import logging
import threading

from akvm.base.dma import DmaError
from akvm.base.native import ffi, lib, native_slots
from akvm.devices.pci import BarKind, PciDevice
from akvm.devices.pci.config import PCIE_TYPE_RC_INTEGRATED_ENDPOINT, CAP_ID_PM

log = logging.getLogger("akvm.ioat")

VENDOR_ID = 0x8086
DEVICE_ID = 0x2021                  # Sky Lake-E CBDMA Registers
CLASS_CODE = 0x088000               # system peripheral, other
REVISION = 0x04
BAR_SIZE = 16 * 1024
MSIX_TABLE = 0x2000
MSIX_PBA = 0x3000
CAP_MSIX, CAP_PCIE, CAP_PM = 0x80, 0x90, 0xE0
PM_CAP_LENGTH = 8
PM_PMC = 0x02
PM_PMCSR = 0x04
PM_PMC_VERSION_3 = 0x0003
PM_PMCSR_POWER_STATE = 0x0003
PM_PMCSR_NO_SOFT_RESET = 0x0008

DEFAULT_SLOT = 4
FUNCTIONS = 8
CBVER_3_3 = 0x33
DEFAULT_XFERCAP = 20                # log2: 1 MiB per descriptor

# --- BAR0: device registers (one channel per function) -------------------------------
CHANCNT = 0x00                      # 8: channels
XFERCAP = 0x01                      # 8: log2 of the largest transfer
GENCTRL = 0x02                      # 8
INTRCTRL = 0x03                     # 8
ATTNSTATUS = 0x04                   # 32: a channel's interrupt is pending
CBVER = 0x08                        # 8
PERPORTOFFSET = 0x0A                # 16
INTRDELAY = 0x0C                    # 16
CSSTATUS = 0x0E                     # 16
DMACAPABILITY = 0x10                # 32
DCAOFFSET = 0x14                    # 16

INTRCTRL_MASTER_INT_EN = 0x01
INTRCTRL_INT_STATUS = 0x02          # RO: ATTNSTATUS is not zero
INTRCTRL_INT = 0x04                 # RO: INT_STATUS and MASTER_INT_EN
INTRCTRL_MSIX_VECTOR_CONTROL = 0x08
INTRDELAY_DELAY = 0x3FFF            # microseconds (no coalescing offered: bit 15 clear)

# --- BAR0: channel 0's registers ---------------------------------------------------------
CHANNEL0 = 0x80
CHANCTRL = 0x80                     # 16
DMACOMP = 0x82                      # 16: v1/v2 compatibility, reads 0
CHANCMD = 0x84                      # 8
DMACOUNT = 0x86                     # 16
CHANSTS = 0x88                      # 64
CHAINADDR = 0x90                    # 64
CHANCMP = 0x98                      # 64
CDAR = 0xA0                         # 64: the current descriptor's address
CHANERR = 0xA8                      # 32, RW1C
CHANERRMSK = 0xAC                   # 32
DCACTRL = 0xB0                      # 32

CHANCMD_START = 0x01                # v1 (ignored)
CHANCMD_APPEND = 0x02               # v1/v2 (ignored: DMACOUNT appends)
CHANCMD_SUSPEND = 0x04
CHANCMD_ABORT = 0x08
CHANCMD_RESUME = 0x10
CHANCMD_RESET = 0x20

CHANCTRL_INT_REARM = lib.AKVM_IOAT_CHANCTRL_INT_REARM
CHANCTRL_ERR_COMPLETION_EN = lib.AKVM_IOAT_CHANCTRL_ERR_COMPLETION_EN
CHANCTRL_ANY_ERR_ABORT_EN = lib.AKVM_IOAT_CHANCTRL_ANY_ERR_ABORT_EN
CHANCTRL_ERR_INT_EN = lib.AKVM_IOAT_CHANCTRL_ERR_INT_EN

# --- configuration space error registers (extended space) --------------------------------
DMAUNCERRSTS = 0x148                # 32, RW1C
DMAUNCERRMSK = 0x14C
DMAUNCERRSEV = 0x150
DMAUNCERRPTR = 0x154                # 8
DMAGLBERRPTR = 0x160                # 8
CHANERR_INT = 0x180                 # 32, RW1C: the channel's errors
CHANERRMSK_INT = 0x184
CHANERRSEV_INT = 0x188
CHANERRPTR = 0x18C                  # 8
DMAUNCERRSEV_DEFAULT = 0x98         # as a real SKX part reads
CHANERR_INT_BITS = 0x0007_FFFF

# --- the engine (devices/ioat.h) -------------------------------------------------------------
DESC_SIZE = lib.AKVM_IOAT_DESC_SIZE
DESC_ALIGN = lib.AKVM_IOAT_DESC_ALIGN
DESC_READ = lib.AKVM_IOAT_DESC_READ
CTL_INT_EN = lib.AKVM_IOAT_CTL_INT_EN
CTL_COMPL_WRITE = lib.AKVM_IOAT_CTL_COMPL_WRITE
CTL_FENCE = lib.AKVM_IOAT_CTL_FENCE
CTL_NULL = lib.AKVM_IOAT_CTL_NULL
CTL_OP_SHIFT = lib.AKVM_IOAT_CTL_OP_SHIFT
OP_COPY = lib.AKVM_IOAT_OP_COPY
ADDR_MASK = lib.AKVM_IOAT_CHANSTS_ADDR_MASK
STATE_MASK = lib.AKVM_IOAT_CHANSTS_STATE_MASK
ACTIVE, IDLE, SUSPENDED, HALTED = (lib.AKVM_IOAT_ACTIVE, lib.AKVM_IOAT_IDLE,
                                   lib.AKVM_IOAT_SUSPENDED, lib.AKVM_IOAT_HALTED)
CHUNK = lib.AKVM_IOAT_CHUNK
ROUND_BYTES = lib.AKVM_IOAT_ROUND_BYTES
ROUND_DESCRIPTORS = lib.AKVM_IOAT_ROUND_DESCRIPTORS
INLINE_BYTES = lib.AKVM_IOAT_INLINE_BYTES
INLINE_DESCRIPTORS = lib.AKVM_IOAT_INLINE_DESCRIPTORS
DONE, INTERRUPT, ERROR, STOPPED, PYTHON, ROUND = (
    lib.AKVM_IOAT_DONE, lib.AKVM_IOAT_INTERRUPT, lib.AKVM_IOAT_ERROR, lib.AKVM_IOAT_STOPPED,
    lib.AKVM_IOAT_PYTHON, lib.AKVM_IOAT_ROUND)

CHANERR_NAMES = {
    lib.AKVM_IOAT_CHANERR_SRC_ADDR_ERR: "SRC_ADDR_ERR",
    lib.AKVM_IOAT_CHANERR_DEST_ADDR_ERR: "DEST_ADDR_ERR",
    lib.AKVM_IOAT_CHANERR_NEXT_ADDR_ERR: "NEXT_ADDR_ERR",
    lib.AKVM_IOAT_CHANERR_NEXT_DESC_ALIGN_ERR: "NEXT_DESC_ALIGN_ERR",
    lib.AKVM_IOAT_CHANERR_CHAIN_ADDR_VALUE_ERR: "CHAIN_ADDR_VALUE_ERR",
    lib.AKVM_IOAT_CHANERR_CHANCMD_ERR: "CHANCMD_ERR",
    lib.AKVM_IOAT_CHANERR_READ_DATA_ERR: "READ_DATA_ERR",
    lib.AKVM_IOAT_CHANERR_WRITE_DATA_ERR: "WRITE_DATA_ERR",
    lib.AKVM_IOAT_CHANERR_CONTROL_ERR: "CONTROL_ERR",
    lib.AKVM_IOAT_CHANERR_LENGTH_ERR: "LENGTH_ERR",
    lib.AKVM_IOAT_CHANERR_COMPLETION_ADDR_ERR: "COMPLETION_ADDR_ERR",
}
READ_DATA_ERR = lib.AKVM_IOAT_CHANERR_READ_DATA_ERR
WRITE_DATA_ERR = lib.AKVM_IOAT_CHANERR_WRITE_DATA_ERR
NEXT_ADDR_ERR = lib.AKVM_IOAT_CHANERR_NEXT_ADDR_ERR
NEXT_DESC_ALIGN_ERR = lib.AKVM_IOAT_CHANERR_NEXT_DESC_ALIGN_ERR
CHAIN_ADDR_VALUE_ERR = lib.AKVM_IOAT_CHANERR_CHAIN_ADDR_VALUE_ERR
CONTROL_ERR = lib.AKVM_IOAT_CHANERR_CONTROL_ERR
LENGTH_ERR = lib.AKVM_IOAT_CHANERR_LENGTH_ERR
COMPLETION_ADDR_ERR = lib.AKVM_IOAT_CHANERR_COMPLETION_ADDR_ERR


def format_chanerr(bits: int) -> str:
    names = [name for bit, name in CHANERR_NAMES.items() if bits & bit]
    rest = bits & ~sum(CHANERR_NAMES)
    return "|".join(names + ([f"{rest:#x}"] if rest else [])) or "0"


def new_channel(xfercap: int = DEFAULT_XFERCAP):
    """A channel as after power-on: HALTED, nothing loaded."""
    ch = ffi.new("struct akvm_ioat_chan *")
    ch.xfercap = xfercap
    ch.chansts = HALTED
    ch.from_chainaddr = 1
    return ch


def run_native(ch, slots, nslots: int, xlate=ffi.NULL, max_bytes: int = ROUND_BYTES,
               max_descriptors: int = ROUND_DESCRIPTORS) -> int:
    """The C engine (GIL released): DONE, INTERRUPT, ERROR, STOPPED, PYTHON or ROUND.
    `xlate`: a struct akvm_dma_xlate * when the DMA is translated."""
    return lib.akvm_ioat_run(ch, slots, nslots, xlate, max_bytes, max_descriptors)


# --- the Python twin -------------------------------------------------------------------------

def _fail(ch, dma, bits: int) -> int:
    """Halt with `bits`; the error completion write if CHANCTRL asks for it."""
    sts = (ch.chansts & ADDR_MASK) | HALTED
    if ch.chanctrl & CHANCTRL_ERR_COMPLETION_EN:
        try:
            dma.write_u64(ch.chancmp, sts)
        except DmaError:
            bits |= COMPLETION_ADDR_ERR
    ch.loaded = 0
    ch.chansts = sts
    lib.akvm_ioat_chanerr(ch, bits, 0)
    return ERROR


def _fetch(ch, dma) -> int | None:
    """Fetch and check the descriptor at `next`: None when it is loaded."""
    if ch.next % DESC_ALIGN:
        return _fail(ch, dma, CHAIN_ADDR_VALUE_ERR if ch.from_chainaddr else NEXT_DESC_ALIGN_ERR)
    try:
        d = dma.read(ch.next, DESC_READ)
    except DmaError:
        return _fail(ch, dma, CHAIN_ADDR_VALUE_ERR if ch.from_chainaddr else NEXT_ADDR_ERR)
    size = int.from_bytes(d[0:4], "little")
    ctl = int.from_bytes(d[4:8], "little")
    if not ctl & CTL_NULL:
        if ctl >> CTL_OP_SHIFT != OP_COPY:
            return _fail(ch, dma, CONTROL_ERR)
        if size == 0 or size > 1 << ch.xfercap:
            return _fail(ch, dma, LENGTH_ERR)
    ch.cur = ch.next
    ch.size, ch.ctl = size, ctl
    ch.src = int.from_bytes(d[8:16], "little")
    ch.dst = int.from_bytes(d[16:24], "little")
    ch.link = int.from_bytes(d[24:32], "little")
    ch.done = 0
    ch.loaded = 1
    return None


def _pieces(views: list[memoryview], offset: int, n: int) -> list[memoryview]:
    """The slices of `views` (one buffer cut in pieces) covering [offset, offset + n)."""
    out = []
    for v in views:
        if offset >= len(v):
            offset -= len(v)
            continue
        take = min(len(v) - offset, n)
        out.append(v[offset:offset + take])
        n -= take
        offset = 0
        if not n:
            break
    return out


def _copy(dst: list[memoryview], src: list[memoryview], offset: int, n: int) -> None:
    """[offset, offset + n) of src into dst, as one memmove."""
    s, d = _pieces(src, offset, n), _pieces(dst, offset, n)
    if len(s) == 1 and len(d) == 1:
        d[0][:] = s[0]
        return
    data = b"".join(s)
    at = 0
    for piece in d:
        piece[:] = data[at:at + len(piece)]
        at += len(piece)


def run_python(ch, dma, max_bytes: int = ROUND_BYTES,
               max_descriptors: int = ROUND_DESCRIPTORS) -> int:
    """akvm_ioat_run() through a DmaSpace: the same steps, checks, budget and results
    (PYTHON excepted), the IOMMU translating and recording faults where there is one."""
    round_bytes = round_descriptors = 0
    while True:
        if ch.stop:
            return STOPPED
        if not ch.loaded:
            if ch.count == ch.dmacount & 0xFFFF:
                ch.chansts = (ch.chansts & ADDR_MASK) | IDLE
                return DONE
            if round_bytes >= max_bytes or round_descriptors >= max_descriptors:
                return ROUND
            r = _fetch(ch, dma)
            if r is not None:
                return r
            round_descriptors += 1
        if not ch.ctl & CTL_NULL and ch.done < ch.size:
            try:
                src = dma.views(ch.src, ch.size, False)
            except DmaError:
                return _fail(ch, dma, READ_DATA_ERR)
            try:
                dst = dma.views(ch.dst, ch.size, True)
            except DmaError:
                return _fail(ch, dma, WRITE_DATA_ERR)
            while ch.done < ch.size:
                if ch.stop:
                    return STOPPED
                if round_bytes >= max_bytes:
                    return ROUND
                n = min(CHUNK, ch.size - ch.done)
                _copy(dst, src, ch.done, n)
                ch.done += n
                ch.bytes += n
                round_bytes += n
        count = (ch.count + 1) & 0xFFFF
        sts = ch.cur | (ACTIVE if count != ch.dmacount & 0xFFFF else IDLE)
        if ch.ctl & CTL_COMPL_WRITE:
            try:
                dma.write_u64(ch.chancmp, sts)
            except DmaError:
                return _fail(ch, dma, COMPLETION_ADDR_ERR)
        ch.chansts = sts
        ch.count = count
        ch.next = ch.link
        ch.from_chainaddr = 0
        ch.loaded = 0
        ch.descriptors += 1
        if ch.ctl & CTL_INT_EN:
            return INTERRUPT


# --- the PCI function ---------------------------------------------------------------------------

def _ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class IoatFunction(PciDevice):
    """One CBDMA function: its registers, its channel and the channel's thread.

    `native=False` keeps the engine in Python (the twin tests); the thread
    starts at the first doorbell and close() ends it.
    """

    def __init__(self, function: int = 0, *, xfercap: int = DEFAULT_XFERCAP, native: bool = True):
        super().__init__(VENDOR_ID, DEVICE_ID, CLASS_CODE, revision=REVISION,
                         subsystem_vendor_id=VENDOR_ID, subsystem_id=0, interrupt_pin=1,
                         name=f"ioat.{function}")
        self.add_bar(0, BAR_SIZE, BarKind.MEM64, self)
        c = self.config
        c.place_next_capability(CAP_MSIX)
        self.add_msix(1, bar=0, table_offset=MSIX_TABLE, pba_offset=MSIX_PBA)
        c.place_next_capability(CAP_PCIE)
        self.add_pcie(PCIE_TYPE_RC_INTEGRATED_ENDPOINT)
        c.place_next_capability(CAP_PM)
        pm = c.add_capability(CAP_ID_PM, PM_CAP_LENGTH)
        c.set(pm + PM_PMC, 2, PM_PMC_VERSION_3)
        c.set(pm + PM_PMCSR, 2, PM_PMCSR_NO_SOFT_RESET)
        c.set_wmask(pm + PM_PMCSR, 2, PM_PMCSR_POWER_STATE)
        c.set_w1cmask(DMAUNCERRSTS, 4, 0xFFFF_FFFF)
        c.set_wmask(DMAUNCERRMSK, 4, 0xFFFF_FFFF)
        c.set(DMAUNCERRSEV, 4, DMAUNCERRSEV_DEFAULT)
        c.set_wmask(DMAUNCERRSEV, 4, 0xFFFF_FFFF)
        c.set_w1cmask(CHANERR_INT, 4, CHANERR_INT_BITS)
        c.set_wmask(CHANERRMSK_INT, 4, CHANERR_INT_BITS)
        c.set_wmask(CHANERRSEV_INT, 4, CHANERR_INT_BITS)

        self.native = native
        self.ch = new_channel(xfercap)
        self.cv = threading.Condition()      # the channel's lock; signals the thread
        self.running = False                 # the thread is in the engine, without the lock
        self.closing = False
        self._thread: threading.Thread | None = None
        self.chainaddr = 0
        self.chain_dirty = False             # CHAINADDR written since the last doorbell took it
        self.genctrl = self.intrctrl = self.intrdelay = 0
        self.chanerrmsk = self.dcactrl = 0
        self.armed = False                   # CHANCTRL.INT_REARM: the next event interrupts
        self.attn = False                    # ATTNSTATUS bit 0
        self.pending = False                 # an event came while disarmed or masked
        self.interrupts = 0                  # sent
        self.errors = 0
        self.engine_failures = 0             # bugs caught (logged): the channel halted
        self.rounds_native = self.rounds_python = 0
        self.held = 0                        # pause() calls not yet resumed (snapshots)
        self._registers = self._register_table()

    # --- the register file -------------------------------------------------------------

    def _register_table(self) -> dict[int, tuple[int, int, object, object]]:
        """Byte offset -> (register offset, width, read(), write(value, lanes))."""
        ch = self.ch
        table = {}

        def reg(offset, width, read, write=None):
            for i in range(width):
                table[offset + i] = (offset, width, read, write)

        def const(value):
            return lambda: value

        def field(name):
            def write(value, lanes):
                setattr(self, name, (getattr(self, name) & ~lanes) | (value & lanes))
            return (lambda: getattr(self, name)), write

        reg(CHANCNT, 1, const(1))
        reg(XFERCAP, 1, const(ch.xfercap))
        reg(GENCTRL, 1, *field("genctrl"))
        reg(INTRCTRL, 1, self._read_intrctrl, self._write_intrctrl)
        reg(ATTNSTATUS, 4, lambda: int(self.attn))
        reg(CBVER, 1, const(CBVER_3_3))
        reg(PERPORTOFFSET, 2, const(0))
        reg(INTRDELAY, 2, lambda: self.intrdelay, self._write_intrdelay)
        reg(CSSTATUS, 2, const(0))
        reg(DMACAPABILITY, 4, const(0))
        reg(DCAOFFSET, 2, const(0))
        reg(CHANCTRL, 2, lambda: ch.chanctrl, self._write_chanctrl)
        reg(DMACOMP, 2, const(0))
        reg(CHANCMD, 1, const(0), self._write_chancmd)
        reg(DMACOUNT, 2, lambda: ch.dmacount, self._write_dmacount)
        reg(CHANSTS, 8, lambda: ch.chansts)
        reg(CHAINADDR, 8, lambda: self.chainaddr, self._write_chainaddr)
        reg(CHANCMP, 8, lambda: ch.chancmp, self._write_chancmp)
        reg(CDAR, 8, lambda: ch.cur if ch.loaded else ch.next)
        reg(CHANERR, 4, lambda: ch.chanerr,
            lambda value, lanes: lib.akvm_ioat_chanerr(ch, 0, value & lanes))
        reg(CHANERRMSK, 4, *field("chanerrmsk"))
        reg(DCACTRL, 4, *field("dcactrl"))
        return table

    def _registers_in(self, offset: int, size: int):
        seen = set()
        for o in range(offset, offset + size):
            r = self._registers.get(o)
            if r is not None and r[0] not in seen:
                seen.add(r[0])
                yield r

    def read(self, offset: int, size: int) -> int:
        """BAR0 below the MSI-X structures: 1, 2, 4 or 8 bytes, naturally aligned;
        unimplemented bytes read 0."""
        if size not in (1, 2, 4, 8) or offset % size:
            return _ones(size)
        value = 0
        with self.cv:
            for start, width, read, _ in self._registers_in(offset, size):
                lo, hi = max(start, offset), min(start + width, offset + size)
                part = (read() >> (8 * (lo - start))) & _ones(hi - lo)
                value |= part << (8 * (lo - offset))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4, 8) or offset % size:
            return
        with self.cv:
            for start, width, _, write in self._registers_in(offset, size):
                if write is None:
                    continue
                lo, hi = max(start, offset), min(start + width, offset + size)
                part = (value >> (8 * (lo - offset))) & _ones(hi - lo)
                shift = 8 * (lo - start)
                write(part << shift, _ones(hi - lo) << shift)

    def _read_intrctrl(self) -> int:
        status = INTRCTRL_INT_STATUS if self.attn else 0
        active = INTRCTRL_INT if status and self.intrctrl & INTRCTRL_MASTER_INT_EN else 0
        return self.intrctrl | status | active

    def _write_intrctrl(self, value: int, lanes: int) -> None:
        writable = (INTRCTRL_MASTER_INT_EN | INTRCTRL_MSIX_VECTOR_CONTROL) & lanes
        self.intrctrl = (self.intrctrl & ~writable) | (value & writable)
        if not self.intrctrl & INTRCTRL_MASTER_INT_EN:
            self.lower_intx()
        elif self.pending and self.armed:
            self._interrupt()

    def _write_intrdelay(self, value: int, lanes: int) -> None:
        lanes &= INTRDELAY_DELAY
        self.intrdelay = (self.intrdelay & ~lanes) | (value & lanes)

    def _write_chanctrl(self, value: int, lanes: int) -> None:
        ch = self.ch
        ch.chanctrl = (ch.chanctrl & ~lanes) | (value & lanes)
        if value & lanes & CHANCTRL_INT_REARM:
            self.attn = False
            self.lower_intx()
            self.armed = True
            if self.pending and self.intrctrl & INTRCTRL_MASTER_INT_EN:
                self._interrupt()

    def _write_chainaddr(self, value: int, lanes: int) -> None:
        self.chainaddr = (self.chainaddr & ~lanes) | (value & lanes)
        self.chain_dirty = True

    def _write_chancmp(self, value: int, lanes: int) -> None:
        self.ch.chancmp = (self.ch.chancmp & ~lanes) | (value & lanes)

    @property
    def state(self) -> int:
        return self.ch.chansts & STATE_MASK

    def _set_state(self, state: int) -> None:
        self.ch.chansts = (self.ch.chansts & ADDR_MASK) | state

    def _write_dmacount(self, value: int, lanes: int) -> None:
        """The doorbell: count up to DMACOUNT, from CHAINADDR if it was written since."""
        ch = self.ch
        ch.dmacount = (ch.dmacount & ~lanes) | (value & lanes)
        if self.running:
            return                          # the engine reads DMACOUNT as it goes
        if self.chain_dirty:
            self.chain_dirty = False
            ch.next, ch.count, ch.loaded, ch.from_chainaddr = self.chainaddr, 0, 0, 1
        if ch.chanerr or not self.bus_master or self.state == SUSPENDED:
            return
        if ch.loaded or ch.count != ch.dmacount:
            self._set_state(ACTIVE)
            # A short burst right here (a chunk, a few descriptors) spares a handoff
            # to the channel's thread; the rest is the thread's.
            self._after(self._engine(INLINE_BYTES, INLINE_DESCRIPTORS))
            if self._runnable():
                self._wake()

    def _write_chancmd(self, value: int, lanes: int) -> None:
        ch = self.ch
        if value & CHANCMD_RESET:
            self._stop_engine()
            ch.loaded = ch.count = ch.dmacount = ch.done = 0
            ch.next, ch.from_chainaddr = self.chainaddr, 1
            self.chain_dirty = False
            ch.chansts = HALTED
            self.attn = self.pending = False
            self.lower_intx()
        elif value & CHANCMD_ABORT:
            self._stop_engine()
            ch.loaded = 0
            self._set_state(HALTED)
        elif value & CHANCMD_SUSPEND:
            if self.state in (ACTIVE, IDLE):
                self._stop_engine()
                self._set_state(SUSPENDED)
        elif value & CHANCMD_RESUME:
            if self.state == SUSPENDED:
                self._set_state(ACTIVE)
                self._wake()

    # --- the channel's thread -------------------------------------------------------------

    def _stop_engine(self) -> None:
        """Wait (cv held) until the thread is out of the engine; it will not go back in
        before the caller has set the state."""
        ch = self.ch
        ch.stop += 1
        while self.running:
            self.cv.wait()
        ch.stop -= 1

    def _wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, daemon=True,
                                            name=f"ioat-{self.address or self.name}")
            self._thread.start()
        self.cv.notify_all()

    def _runnable(self) -> bool:
        return self.state == ACTIVE and not self.ch.stop and not self.held and self.bus_master

    def _serve(self) -> None:
        while True:
            with self.cv:
                while not self.closing and not self._runnable():
                    self.cv.wait()
                if self.closing:
                    return
                self.running = True
            result = self._engine(ROUND_BYTES, ROUND_DESCRIPTORS)
            with self.cv:
                self.running = False
                self.cv.notify_all()
                self._after(result)

    def _engine(self, max_bytes: int, max_descriptors: int) -> int:
        """One round: C while the DMA reaches RAM directly or through a translator in C,
        Python for what C leaves (one descriptor, then C again) and for the rest."""
        ch, dma = self.ch, self.dma
        try:
            if self.native:
                xlate = dma.fast_translator() or (ffi.NULL if dma.untranslated() else None)
                slots = native_slots(dma.memory) if xlate is not None else None
                if slots is not None:
                    self.rounds_native += 1
                    result = run_native(ch, slots, len(dma.memory.slots), xlate, max_bytes,
                                        max_descriptors)
                    if xlate:
                        dma.fast_done()
                    if result != PYTHON:
                        return result
                    max_descriptors = 1
            self.rounds_python += 1
            return run_python(ch, dma, max_bytes, max_descriptors)
        except Exception as e:          # a bug must not kill the thread or the VMM
            self.engine_failures += 1
            log.error("%s %s: engine failed: %r", self.address, self.name, e)
            ch.loaded = 0
            ch.chansts = (ch.chansts & ADDR_MASK) | HALTED
            return ERROR

    def _after(self, result: int) -> None:
        """What a round's result means for the registers (cv held)."""
        ch = self.ch
        if result == ERROR:
            self.errors += 1
            log.debug("%s %s: channel halted at descriptor %#x: CHANERR %s", self.address,
                      self.name, ch.next, format_chanerr(ch.chanerr))
            with self.lock:
                self.config.set_bits(CHANERR_INT, 4, ch.chanerr & CHANERR_INT_BITS)
            if ch.chanctrl & CHANCTRL_ERR_INT_EN:
                self._event()
            return
        if result == INTERRUPT:
            self._event()
        if result in (DONE, INTERRUPT) and not ch.stop and (ch.loaded or ch.count != ch.dmacount):
            self._set_state(ACTIVE)         # DMACOUNT moved after the engine looked

    def _event(self) -> None:
        """A completion or error that interrupts (cv held)."""
        self.attn = True
        self.pending = True
        if self.armed and self.intrctrl & INTRCTRL_MASTER_INT_EN:
            self._interrupt()

    def _interrupt(self) -> None:
        self.pending = False
        self.armed = False
        self.interrupts += 1
        self.signal(0)

    def wait_idle(self, timeout: float) -> bool:
        """Until the channel is not ACTIVE (or `timeout` seconds): for tests."""
        with self.cv:
            return self.cv.wait_for(lambda: not self.running and not self._runnable(), timeout)

    def close(self) -> None:
        """Stop the thread (after the chunk it is copying); no memory access afterwards."""
        with self.cv:
            self.closing = True
            self.ch.stop += 1
            self.cv.notify_all()
            while self.running:
                self.cv.wait()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    # --- snapshots (akvm.devices.state) -----------------------------------------------

    _CHANNEL = ("next", "chansts", "chancmp", "cur", "src", "dst", "link", "size", "ctl", "done",
                "loaded", "from_chainaddr", "count", "dmacount", "chanerr", "chanctrl", "xfercap",
                "descriptors", "bytes")
    _REGISTERS = ("chainaddr", "chain_dirty", "genctrl", "intrctrl", "intrdelay", "chanerrmsk",
                  "dcactrl", "armed", "attn", "pending", "interrupts", "errors",
                  "engine_failures", "rounds_native", "rounds_python")

    def pause(self, timeout: float) -> bool:
        """Hold the channel's thread out of the engine (between two chunks) until resume():
        True once it is out. Its copy in progress goes on from there."""
        with self.cv:
            self.held += 1
            self.ch.stop += 1
            out = self.cv.wait_for(lambda: not self.running, timeout)
            self.ch.stop -= 1
            return out

    def resume(self) -> None:
        with self.cv:
            self.held -= 1
            self.cv.notify_all()

    def device_snapshot(self) -> dict:
        with self.cv:
            return {"channel": {name: int(getattr(self.ch, name)) for name in self._CHANNEL},
                    **{name: int(getattr(self, name)) for name in self._REGISTERS}}

    def device_restore(self, state: dict) -> None:
        with self.cv:
            for name in self._CHANNEL:
                setattr(self.ch, name, int(state["channel"][name]))
            for name in self._REGISTERS:
                value = int(state[name])
                setattr(self, name, bool(value) if isinstance(getattr(self, name), bool) else value)

    def start(self) -> None:
        """The machine runs: a copy a restored snapshot had going on goes on."""
        with self.cv:
            if self._runnable():
                self._wake()

    def stats(self) -> dict:
        ch = self.ch
        return {"address": str(self.address), "descriptors": ch.descriptors, "bytes": ch.bytes,
                "errors": self.errors, "interrupts": self.interrupts,
                "rounds_in_c": self.rounds_native, "rounds_in_python": self.rounds_python}

    def format_stats(self, d: dict | None = None) -> str:
        d = d or self.stats()
        return (f"ioat {d['address']}: {d['descriptors']} descriptors, {d['bytes']} bytes, "
                f"{d['errors']} errors, {d['interrupts']} interrupts; engine rounds "
                f"{d['rounds_in_c']} in C, {d['rounds_in_python']} in Python")
