"""The MC146818 RTC / CMOS model, driven through ports 0x70/0x71 on a bus."""
import calendar

import pytest

from akvm.devices.cmos import Cmos
from akvm.base.bus import Bus

MiB = 1 << 20
GiB = 1 << 30
# Thursday 2024-02-29 13:45:07 UTC
T0 = calendar.timegm((2024, 2, 29, 13, 45, 7, 0, 0, 0))


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def clock():
    return Clock(T0 + 0.25)


def make(clock, below=GiB, above=0, cpus=1):
    cmos = Cmos(below, above, cpus, clock=clock)
    bus = Bus("pio")
    bus.register(0x70, 2, cmos)
    return cmos, bus


def rd(bus, reg, nmi_off=False):
    bus.write(0x70, 1, reg | (0x80 if nmi_off else 0))
    return bus.read(0x71, 1)


def wr(bus, reg, value):
    bus.write(0x70, 1, reg)
    bus.write(0x71, 1, value)


def test_time_in_bcd_by_default(clock):
    _, bus = make(clock)
    assert rd(bus, 0x0B) == 0x02                # 24-hour, BCD
    assert [rd(bus, r) for r in (0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32)] == \
        [0x07, 0x45, 0x13, 0x29, 0x02, 0x24, 0x20]
    assert rd(bus, 0x06) == 5                   # Thursday (1 = Sunday)


def test_time_in_binary(clock):
    _, bus = make(clock)
    wr(bus, 0x0B, 0x06)                         # DM = binary, 24-hour
    assert [rd(bus, r) for r in (0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32)] == \
        [7, 45, 13, 29, 2, 24, 20]


@pytest.mark.parametrize("hour,bcd", [(0, 0x12), (1, 0x01), (11, 0x11), (12, 0x92), (13, 0x81),
                                      (23, 0x91)])
def test_12_hour_mode(hour, bcd):
    clock = Clock(calendar.timegm((2024, 1, 1, hour, 0, 0, 0, 0, 0)))
    _, bus = make(clock)
    wr(bus, 0x0B, 0x00)                         # 12-hour, BCD
    assert rd(bus, 0x04) == bcd


def test_clock_advances(clock):
    _, bus = make(clock)
    clock.t += 60
    assert rd(bus, 0x02) == 0x46 and rd(bus, 0x00) == 0x07


def test_status_registers(clock):
    _, bus = make(clock)
    a = rd(bus, 0x0A)
    assert a == 0x26 and not a & 0x80
    assert rd(bus, 0x0C) == 0
    assert rd(bus, 0x0D) == 0x80               # VRT: valid RAM and time
    wr(bus, 0x0D, 0x00)
    assert rd(bus, 0x0D) == 0x80               # read-only


def test_status_a_never_reads_ff(clock):
    _, bus = make(clock)
    wr(bus, 0x0A, 0xFF)
    assert rd(bus, 0x0A) == 0x7F               # UIP stays clear
    for _ in range(1000):
        clock.t += 0.001
        assert not rd(bus, 0x0A) & 0x80


def test_clock_registers_never_read_ff(clock):
    """A CMOS that reads 0xFF looks absent (Akaros hangs). Only the capped
    extended-memory bytes (0x17/0x18, 0x30/0x31) may legitimately be 0xFF."""
    _, bus = make(clock, below=3 * GiB, above=64 * GiB, cpus=8)
    for mode in (0x02, 0x06, 0x00):
        wr(bus, 0x0B, mode)
        for reg in [*range(0x0E), 0x32]:
            assert rd(bus, reg) != 0xFF, f"register {reg:#x}"


def test_nmi_bit_does_not_break_indexing(clock):
    cmos, bus = make(clock)
    assert rd(bus, 0x0B, nmi_off=True) == 0x02
    assert cmos.nmi_disabled
    assert rd(bus, 0x09, nmi_off=True) == 0x24
    wr(bus, 0x40 | 0x80, 0x5A)                 # write with NMI disabled
    assert rd(bus, 0x40) == 0x5A
    assert not cmos.nmi_disabled


def mem16(bus, lo):
    return rd(bus, lo) | rd(bus, lo + 1) << 8


def test_memory_bytes_1g(clock):
    _, bus = make(clock, below=GiB, above=0, cpus=4)
    assert mem16(bus, 0x15) == 640
    assert mem16(bus, 0x17) == 0xFFFF and mem16(bus, 0x30) == 0xFFFF      # capped
    assert mem16(bus, 0x34) == (GiB - 16 * MiB) // 65536
    assert [rd(bus, r) for r in (0x5B, 0x5C, 0x5D)] == [0, 0, 0]
    assert rd(bus, 0x5F) == 3


def test_memory_bytes_above_4g(clock):
    _, bus = make(clock, below=3 * GiB, above=5 * GiB, cpus=1)
    assert mem16(bus, 0x34) == (3 * GiB - 16 * MiB) // 65536
    units = rd(bus, 0x5B) | rd(bus, 0x5C) << 8 | rd(bus, 0x5D) << 16
    assert units == 5 * GiB // 65536
    assert rd(bus, 0x5F) == 0


def test_memory_bytes_small(clock):
    _, bus = make(clock, below=8 * MiB)
    assert mem16(bus, 0x17) == 7 * 1024 and mem16(bus, 0x30) == 7 * 1024
    assert mem16(bus, 0x34) == 0


def test_at_checksum(clock):
    _, bus = make(clock, below=32 * MiB)
    assert (rd(bus, 0x2E) << 8 | rd(bus, 0x2F)) == sum(rd(bus, r) for r in range(0x10, 0x2E))


def test_set_time_with_set_bit(clock):
    _, bus = make(clock)
    wr(bus, 0x0B, 0x82)                        # SET: updates inhibited
    for reg, value in ((0x32, 0x20), (0x09, 0x30), (0x08, 0x01), (0x07, 0x02),
                       (0x04, 0x03), (0x02, 0x04), (0x00, 0x05)):
        wr(bus, reg, value)
    clock.t += 10                              # frozen while SET
    assert rd(bus, 0x00) == 0x05
    wr(bus, 0x0B, 0x02)
    assert [rd(bus, r) for r in (0x32, 0x09, 0x08, 0x07, 0x04, 0x02, 0x00)] == \
        [0x20, 0x30, 0x01, 0x02, 0x03, 0x04, 0x05]
    clock.t += 5
    assert rd(bus, 0x00) == 0x10               # runs again from the new time


def test_set_time_directly_keeps_offset(clock):
    _, bus = make(clock)
    wr(bus, 0x04, 0x22)                        # 22:45:07
    assert rd(bus, 0x04) == 0x22 and rd(bus, 0x02) == 0x45
    clock.t += 3600
    assert rd(bus, 0x04) == 0x23


def test_set_hour_in_12_hour_binary_mode(clock):
    _, bus = make(clock)
    wr(bus, 0x0B, 0x04)                        # binary, 12-hour
    wr(bus, 0x04, 0x80 | 12)                   # 12 PM = noon
    wr(bus, 0x0B, 0x06)
    assert rd(bus, 0x04) == 12


def test_nonsense_time_ignored(clock):
    _, bus = make(clock)
    wr(bus, 0x08, 0x13)                        # month 13
    assert rd(bus, 0x08) == 0x02


def test_wide_access(clock):
    cmos, _ = make(clock)
    cmos.write(0, 2, 0x5A << 8 | 0x41)         # outw 0x70: index 0x41, data 0x5A
    assert cmos.read(1, 1) == 0x5A


def cmos_rd(cmos, reg):
    """Straight to the model, without the bus that would hide an exception."""
    cmos.write(0, 1, reg)
    return cmos.read(1, 1)


def cmos_wr(cmos, reg, value):
    cmos.write(0, 1, reg)
    cmos.write(1, 1, value)


def test_a_month_13_under_set_then_the_day_of_week(clock):
    """The seven instructions that stopped the VM: SET, month 0x13, read day of week."""
    cmos, _ = make(clock)
    cmos_wr(cmos, 0x0B, 0x82)
    cmos_wr(cmos, 0x08, 0x13)
    assert cmos_rd(cmos, 0x06) == 0x05         # no such date: as last set (Thursday, 5)
    cmos_wr(cmos, 0x06, 0x03)
    assert cmos_rd(cmos, 0x06) == 0x03
    assert cmos_rd(cmos, 0x08) == 0x13
    cmos_wr(cmos, 0x0B, 0x02)                  # SET off: the nonsense date is not taken
    assert cmos_rd(cmos, 0x08) == 0x02 and cmos_rd(cmos, 0x06) == 0x05


@pytest.mark.parametrize("mode", [0x82, 0x86, 0x80, 0x84])    # BCD/binary, 24/12-hour
def test_every_byte_in_every_time_register_reads_back_a_byte(clock, mode):
    cmos, _ = make(clock)
    for reg in (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32):
        for value in range(256):
            cmos_wr(cmos, 0x0B, mode)
            cmos_wr(cmos, reg, value)
            for r in (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32):
                assert 0 <= cmos_rd(cmos, r) <= 0xFF
            cmos_wr(cmos, 0x0B, mode & ~0x80)   # and what SET off makes of it
            assert 0 <= cmos_rd(cmos, 0x06) <= 0xFF and 0 <= cmos_rd(cmos, reg) <= 0xFF
