"""ACPI fixed-hardware PM registers (ACPI 6.3 section 4.8): PM1a event and
control blocks and the PM timer, as the FADT describes them.

One 12-byte I/O range at port 0x600 (vmm/tables/layout.py):

    offset 0x0  PM1_STS  16 bits, write 1 to clear
    offset 0x2  PM1_EN   16 bits
    offset 0x4  PM1_CNT  16 bits (SCI_EN, SLP_TYP, SLP_EN)
    offset 0x6  reserved (reads 0)
    offset 0x8  PM_TMR   32 bits, read-only, 24-bit counter at 3.579545 MHz

It exists so that an OS can power the machine off the ACPI way: writing
SLP_TYP = 5 (the DSDT's \\_S5_) with SLP_EN calls poweroff().
There is no SMI_CMD, so the machine is always in ACPI mode: SCI_EN reads 1.
"""
from __future__ import annotations

import threading
import time

PM1_STS = 0x0
PM1_EN = 0x2
PM1_CNT = 0x4
PM_TMR = 0x8
SIZE = 12

# PM1_STS / PM1_EN bits (Tables 4-16, 4-17)
TMR_STS = 1 << 0
BM_STS = 1 << 4
GBL_STS = 1 << 5
PWRBTN_STS = 1 << 8
SLPBTN_STS = 1 << 9
RTC_STS = 1 << 10
PCIEXP_WAKE_STS = 1 << 14
WAK_STS = 1 << 15
TMR_EN = TMR_STS
GBL_EN = GBL_STS
PWRBTN_EN = PWRBTN_STS
SLPBTN_EN = SLPBTN_STS
RTC_EN = RTC_STS
PM1_EN_MASK = TMR_EN | GBL_EN | PWRBTN_EN | SLPBTN_EN | RTC_EN

# PM1_CNT bits (Table 4-18)
SCI_EN = 1 << 0
BM_RLD = 1 << 1
GBL_RLS = 1 << 2               # write-only
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 0b111 << SLP_TYP_SHIFT
SLP_EN = 1 << 13               # write-only
SLP_TYP_S5 = 5

PM_TIMER_HZ = 3_579_545
PM_TIMER_MASK = 0xFF_FFFF      # 24 bits: the FADT leaves TMR_VAL_EXT clear
PM_TIMER_MSB = 1 << 23         # TMR_STS is set each time this bit flips


class AcpiPm:
    """PM1a_EVT_BLK + PM1a_CNT_BLK + PM_TMR_BLK in one port range.

    `poweroff` is called on an S5 request. `sci` (optional, an IrqLine) is
    raised while an enabled status bit is set and SCI_EN is on; the timer
    carry (TMR_STS) is only noticed when PM1_STS is read, so it raises no SCI.
    Accesses from several vCPU threads are serialized by a lock; poweroff()
    is called outside it.
    """

    def __init__(self, poweroff, sci=None, clock=time.monotonic):
        self.poweroff = poweroff
        self.sci = sci
        self.clock = clock
        self.t0 = clock()
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = SCI_EN
        self._last_msb = 0
        self.last_sleep_type: int | None = None  # SLP_TYP last written with SLP_EN
        self._lock = threading.Lock()
        self._sleep_requested = False

    # --- state ----------------------------------------------------------------

    def timer(self) -> int:
        ticks = int((self.clock() - self.t0) * PM_TIMER_HZ)
        return ticks & PM_TIMER_MASK

    def _poll_timer(self) -> None:
        msb = self.timer() & PM_TIMER_MSB
        if msb != self._last_msb:
            self._last_msb = msb
            self.pm1_sts |= TMR_STS

    def _update_sci(self) -> None:
        if self.sci is not None:
            self.sci.set_level(bool(self.pm1_cnt & SCI_EN and self.pm1_sts & self.pm1_en))

    def press_power_button(self) -> None:
        """The fixed-feature power button: sets PWRBTN_STS (an SCI if enabled)."""
        with self._lock:
            self.pm1_sts |= PWRBTN_STS
            self._update_sci()

    # --- snapshots (akvm.devices.state) ------------------------------------------------
    # The PM timer is saved as its count: after a restore it counts on from there,
    # as if no time had passed while the snapshot was on disk.

    def snapshot(self) -> dict:
        with self._lock:
            return {"pm1_sts": self.pm1_sts, "pm1_en": self.pm1_en, "pm1_cnt": self.pm1_cnt,
                    "last_msb": self._last_msb, "last_sleep_type": self.last_sleep_type,
                    "elapsed": self.clock() - self.t0}

    def restore(self, state: dict) -> None:
        with self._lock:
            self.pm1_sts = int(state["pm1_sts"]) & 0xFFFF
            self.pm1_en = int(state["pm1_en"]) & PM1_EN_MASK
            self.pm1_cnt = int(state["pm1_cnt"]) & 0xFFFF | SCI_EN
            self._last_msb = int(state["last_msb"]) & PM_TIMER_MSB
            sleep = state["last_sleep_type"]
            self.last_sleep_type = None if sleep is None else int(sleep)
            self.t0 = self.clock() - float(state["elapsed"])
            self._update_sci()

    # --- registers ------------------------------------------------------------------

    def _registers(self) -> dict[int, tuple[int, int]]:
        """offset -> (width in bytes, current value) for reads."""
        self._poll_timer()
        return {PM1_STS: (2, self.pm1_sts), PM1_EN: (2, self.pm1_en),
                PM1_CNT: (2, self.pm1_cnt & ~(SLP_EN | GBL_RLS)), PM_TMR: (4, self.timer())}

    def read(self, offset: int, size: int) -> int:
        with self._lock:
            regs = self._registers()
        value = 0
        for i in range(size):
            byte = 0
            for base, (width, reg) in regs.items():
                if base <= offset + i < base + width:
                    byte = (reg >> (8 * (offset + i - base))) & 0xFF
            value |= byte << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            for base, apply in ((PM1_STS, self._write_sts), (PM1_EN, self._write_en),
                                (PM1_CNT, self._write_cnt)):
                mask = data = 0
                for i in range(size):
                    pos = offset + i - base
                    if 0 <= pos < 2:
                        mask |= 0xFF << (8 * pos)
                        data |= ((value >> (8 * i)) & 0xFF) << (8 * pos)
                if mask:
                    apply(mask, data)
            self._update_sci()
            power_off = self.last_sleep_type == SLP_TYP_S5 and self._sleep_requested
            self._sleep_requested = False
        if power_off:
            self.poweroff()

    def _write_sts(self, mask: int, data: int) -> None:
        self.pm1_sts &= ~(data & mask)

    def _write_en(self, mask: int, data: int) -> None:
        self.pm1_en = (self.pm1_en & ~mask) | (data & mask & PM1_EN_MASK)

    def _write_cnt(self, mask: int, data: int) -> None:
        keep = SCI_EN                   # always in ACPI mode
        writable = (BM_RLD | SLP_TYP_MASK) & mask
        self.pm1_cnt = (self.pm1_cnt & ~writable) | (data & writable) | keep
        if mask & SLP_EN and data & SLP_EN:
            self.last_sleep_type = (self.pm1_cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT
            self._sleep_requested = True
