"""MC146818 real-time clock and CMOS RAM at ports 0x70 (index) / 0x71 (data).

Akaros reads the wall clock here at boot: it spins while status A's UIP bit
is set and hangs on a CMOS that reads 0xFF, so UIP is never set (an update
is instantaneous here) and every register reads a real value. The clock is
host UTC plus an offset the guest can change by writing the time registers.
The memory-size bytes follow the IBM AT / SeaBIOS conventions.

No interrupts are generated (IRQ 8 is not wired): status C always reads 0.
"""
from __future__ import annotations

import threading
import time

from akvm.devices.state import pack, unpack

# Registers (MC146818 datasheet)
RTC_SECONDS = 0x00
RTC_SECONDS_ALARM = 0x01
RTC_MINUTES = 0x02
RTC_MINUTES_ALARM = 0x03
RTC_HOURS = 0x04
RTC_HOURS_ALARM = 0x05
RTC_DAY_OF_WEEK = 0x06
RTC_DAY_OF_MONTH = 0x07
RTC_MONTH = 0x08
RTC_YEAR = 0x09
RTC_STATUS_A = 0x0A
RTC_STATUS_B = 0x0B
RTC_STATUS_C = 0x0C
RTC_STATUS_D = 0x0D
RTC_CENTURY = 0x32              # the FADT's CENTURY field points here

# Status A: UIP (bit 7, read-only), DV2-0 (time base), RS3-0 (rate)
STATUS_A_UIP = 0x80
STATUS_A_DEFAULT = 0x26         # 32.768 kHz time base, 1024 Hz rate
# Status B
STATUS_B_SET = 0x80             # updates inhibited while the guest sets the time
STATUS_B_DM = 0x04              # data mode: 1 = binary, 0 = BCD
STATUS_B_24H = 0x02             # 1 = 24-hour mode
STATUS_B_DEFAULT = STATUS_B_24H
# Status D
STATUS_D_VRT = 0x80             # valid RAM and time (battery good)

HOUR_PM = 0x80                  # in 12-hour mode

# CMOS memory bytes (IBM AT, SeaBIOS/QEMU)
CMOS_BASE_MEM_LO, CMOS_BASE_MEM_HI = 0x15, 0x16          # KiB below 1 MiB
CMOS_EXT_MEM_LO, CMOS_EXT_MEM_HI = 0x17, 0x18            # KiB above 1 MiB
CMOS_CHECKSUM_HI, CMOS_CHECKSUM_LO = 0x2E, 0x2F          # sum of 0x10..0x2D
CMOS_EXT_MEM2_LO, CMOS_EXT_MEM2_HI = 0x30, 0x31          # copy of 0x17/0x18
CMOS_MEM_ABOVE_16M_LO, CMOS_MEM_ABOVE_16M_HI = 0x34, 0x35  # 64 KiB units
CMOS_MEM_ABOVE_4G = 0x5B                                 # 3 bytes, 64 KiB units
CMOS_NR_CPUS_MINUS_1 = 0x5F

NMI_DISABLE = 0x80              # bit 7 of the index port
CMOS_SIZE = 128

_TIME_REGS = (RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH,
              RTC_MONTH, RTC_YEAR, RTC_CENTURY)

KiB = 1024
MiB = 1024 * KiB


def to_bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


class Cmos:
    """The RTC + CMOS RAM, registered as one port range at 0x70, size 2."""

    def __init__(self, ram_size_below_4g: int, ram_size_above_4g: int, cpus: int,
                 clock=time.time):
        self.clock = clock
        self.offset = 0.0               # guest time - host time, seconds
        self.index = 0
        self.nmi_disabled = False
        self.ram = bytearray(CMOS_SIZE)
        self.ram[RTC_STATUS_A] = STATUS_A_DEFAULT
        self.ram[RTC_STATUS_B] = STATUS_B_DEFAULT
        self.ram[RTC_STATUS_D] = STATUS_D_VRT
        self._frozen: dict[str, int] | None = None   # time fields while SET is on
        self._lock = threading.Lock()                 # vCPU threads share index + data
        self._set_memory_size(ram_size_below_4g, ram_size_above_4g, cpus)

    # --- memory-size bytes -------------------------------------------------------

    def _put16(self, index: int, value: int) -> None:
        self.ram[index] = value & 0xFF
        self.ram[index + 1] = (value >> 8) & 0xFF

    def _set_memory_size(self, below_4g: int, above_4g: int, cpus: int) -> None:
        self._put16(CMOS_BASE_MEM_LO, 640)
        ext_kib = min(max(below_4g - 1 * MiB, 0) // KiB, 0xFFFF)
        self._put16(CMOS_EXT_MEM_LO, ext_kib)
        self._put16(CMOS_EXT_MEM2_LO, ext_kib)
        above_16m = min(max(below_4g - 16 * MiB, 0) // (64 * KiB), 0xFFFF)
        self._put16(CMOS_MEM_ABOVE_16M_LO, above_16m)
        high = min(max(above_4g, 0) // (64 * KiB), 0xFFFFFF)
        self.ram[CMOS_MEM_ABOVE_4G:CMOS_MEM_ABOVE_4G + 3] = high.to_bytes(3, "little")
        self.ram[CMOS_NR_CPUS_MINUS_1] = max(cpus - 1, 0) & 0xFF
        total = sum(self.ram[0x10:0x2E])
        self.ram[CMOS_CHECKSUM_HI] = (total >> 8) & 0xFF
        self.ram[CMOS_CHECKSUM_LO] = total & 0xFF

    # --- the clock -----------------------------------------------------------------

    def _now_fields(self) -> dict[str, int]:
        t = time.gmtime(int(self.clock() + self.offset))
        return dict(year=t.tm_year, month=t.tm_mon, day=t.tm_mday, hour=t.tm_hour,
                    minute=t.tm_min, second=t.tm_sec)

    def _fields(self) -> dict[str, int]:
        return dict(self._frozen) if self._frozen is not None else self._now_fields()

    def _set_offset(self, f: dict[str, int]) -> None:
        import calendar     # here: 2 ms at start-up, and guests seldom set the clock
        try:
            when = calendar.timegm((f["year"], f["month"], f["day"], f["hour"],
                                    f["minute"], f["second"], 0, 0, 0))
            time.gmtime(when)           # rejects out-of-range dates
        except (ValueError, OverflowError):
            return                      # nonsense time: keep the old one
        self.offset = when - int(self.clock())

    def _encode(self, value: int) -> int:
        return value if self.ram[RTC_STATUS_B] & STATUS_B_DM else to_bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.ram[RTC_STATUS_B] & STATUS_B_DM else from_bcd(value)

    def _encode_hour(self, hour: int) -> int:
        if self.ram[RTC_STATUS_B] & STATUS_B_24H:
            return self._encode(hour)
        pm = HOUR_PM if hour >= 12 else 0
        return self._encode(hour % 12 or 12) | pm

    def _decode_hour(self, value: int) -> int:
        if self.ram[RTC_STATUS_B] & STATUS_B_24H:
            return self._decode(value)
        hour = self._decode(value & ~HOUR_PM) % 12
        return hour + 12 if value & HOUR_PM else hour

    def _read_time(self, reg: int) -> int:
        f = self._fields()
        if reg == RTC_SECONDS:
            return self._encode(f["second"])
        if reg == RTC_MINUTES:
            return self._encode(f["minute"])
        if reg == RTC_HOURS:
            return self._encode_hour(f["hour"])
        if reg == RTC_DAY_OF_WEEK:      # 1 = Sunday
            import calendar     # (as in _set_offset)
            weekday = calendar.weekday(f["year"], f["month"], f["day"])  # 0 = Monday
            return self._encode((weekday + 1) % 7 + 1)
        if reg == RTC_DAY_OF_MONTH:
            return self._encode(f["day"])
        if reg == RTC_MONTH:
            return self._encode(f["month"])
        if reg == RTC_YEAR:
            return self._encode(f["year"] % 100)
        return self._encode(f["year"] // 100)       # RTC_CENTURY

    def _write_time(self, reg: int, value: int) -> None:
        f = self._fields()
        if reg == RTC_SECONDS:
            f["second"] = self._decode(value)
        elif reg == RTC_MINUTES:
            f["minute"] = self._decode(value)
        elif reg == RTC_HOURS:
            f["hour"] = self._decode_hour(value)
        elif reg == RTC_DAY_OF_MONTH:
            f["day"] = self._decode(value)
        elif reg == RTC_MONTH:
            f["month"] = self._decode(value)
        elif reg == RTC_YEAR:
            f["year"] = f["year"] // 100 * 100 + self._decode(value)
        elif reg == RTC_CENTURY:
            f["year"] = self._decode(value) * 100 + f["year"] % 100
        else:
            return                      # day of week follows from the date
        if self._frozen is not None:
            self._frozen = f
        else:
            self._set_offset(f)

    # --- registers ---------------------------------------------------------------------

    def read_register(self, reg: int) -> int:
        if reg in _TIME_REGS:
            return self._read_time(reg)
        if reg == RTC_STATUS_A:
            return self.ram[reg] & ~STATUS_A_UIP
        if reg == RTC_STATUS_C:
            self.ram[reg] = 0           # read clears the flags
            return 0
        if reg == RTC_STATUS_D:
            return STATUS_D_VRT
        return self.ram[reg]

    def write_register(self, reg: int, value: int) -> None:
        value &= 0xFF
        if reg in _TIME_REGS:
            self._write_time(reg, value)
        elif reg == RTC_STATUS_A:
            self.ram[reg] = value & ~STATUS_A_UIP
        elif reg == RTC_STATUS_B:
            self._write_status_b(value)
        elif reg in (RTC_STATUS_C, RTC_STATUS_D):
            pass                        # read-only
        else:
            self.ram[reg] = value

    def _write_status_b(self, value: int) -> None:
        was_set = self.ram[RTC_STATUS_B] & STATUS_B_SET
        if value & STATUS_B_SET and not was_set:
            self._frozen = self._now_fields()       # the guest is about to set the time
        self.ram[RTC_STATUS_B] = value
        if was_set and not value & STATUS_B_SET:
            frozen, self._frozen = self._frozen, None
            self._set_offset(frozen)

    # --- snapshots (akvm.devices.state) ---------------------------------------------------
    # The clock is saved as its offset from host time, so after a restore it shows
    # host time plus the same offset: the guest's wall clock does not stop while saved.

    def snapshot(self) -> dict:
        with self._lock:
            return {"index": self.index, "nmi_disabled": self.nmi_disabled, "ram": pack(self.ram),
                    "offset": self.offset, "frozen": self._frozen}

    def restore(self, state: dict) -> None:
        with self._lock:
            self.index = int(state["index"]) & 0x7F
            self.nmi_disabled = bool(state["nmi_disabled"])
            self.ram[:] = unpack(state["ram"], CMOS_SIZE)
            self.offset = float(state["offset"])
            frozen = state["frozen"]
            self._frozen = None if frozen is None else {k: int(v) for k, v in frozen.items()}

    # --- bus interface (offset 0 = port 0x70, 1 = port 0x71) ------------------------------

    def _read_byte(self, offset: int) -> int:
        if offset == 0:
            return self.index | (NMI_DISABLE if self.nmi_disabled else 0)
        if offset == 1:
            return self.read_register(self.index)
        return 0xFF

    def _write_byte(self, offset: int, value: int) -> None:
        if offset == 0:
            self.index = value & 0x7F
            self.nmi_disabled = bool(value & NMI_DISABLE)
        elif offset == 1:
            self.write_register(self.index, value)

    def read(self, offset: int, size: int) -> int:
        with self._lock:
            return sum(self._read_byte(offset + i) << (8 * i) for i in range(size))

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            for i in range(size):
                self._write_byte(offset + i, (value >> (8 * i)) & 0xFF)
