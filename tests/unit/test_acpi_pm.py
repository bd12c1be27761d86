"""ACPI PM1a event/control blocks and PM timer at port 0x600."""
import time

import pytest

from akvm.devices import acpi_pm
from akvm.devices.acpi_pm import AcpiPm
from akvm.base.bus import Bus
from akvm.base.irq import IrqLine
from akvm.tables import layout

STS, EN, CNT, TMR = (layout.PM1A_EVT_BLK, layout.PM1A_EVT_BLK + 2,
                     layout.PM1A_CNT_BLK, layout.PM_TMR_BLK)
SLP_EN = 1 << 13


def slp_typ(n):
    return n << 10


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def setup():
    calls = []
    clock = Clock()
    sci = IrqLine(layout.SCI_IRQ)
    pm = AcpiPm(lambda: calls.append("off"), sci=sci, clock=clock)
    bus = Bus("pio")
    bus.register(layout.ACPI_PM_BASE, layout.ACPI_PM_SIZE, pm)
    return pm, bus, calls, clock, sci


def test_layout_matches_fadt():
    assert (STS, CNT, TMR) == (0x600, 0x604, 0x608)
    assert acpi_pm.SIZE == layout.ACPI_PM_SIZE == 12


def test_poweroff_on_s5_with_slp_en(setup):
    pm, bus, calls, *_ = setup
    bus.write(CNT, 2, slp_typ(5) | SLP_EN | 1)
    assert calls == ["off"]
    assert pm.last_sleep_type == 5


def test_no_poweroff_without_slp_en(setup):
    _, bus, calls, *_ = setup
    bus.write(CNT, 2, slp_typ(5) | 1)
    assert calls == []
    assert (bus.read(CNT, 2) >> 10) & 7 == 5     # SLP_TYP is kept


@pytest.mark.parametrize("typ", [0, 1, 3, 4, 6, 7])
def test_no_poweroff_for_other_sleep_types(setup, typ):
    pm, bus, calls, *_ = setup
    bus.write(CNT, 2, slp_typ(typ) | SLP_EN | 1)
    assert calls == []
    assert pm.last_sleep_type == typ


def test_poweroff_with_byte_writes(setup):
    _, bus, calls, *_ = setup
    bus.write(CNT + 1, 1, (slp_typ(5) | SLP_EN) >> 8)
    assert calls == ["off"]


def test_pm1_cnt_reads(setup):
    _, bus, *_ = setup
    assert bus.read(CNT, 2) & 1                  # SCI_EN: always in ACPI mode
    bus.write(CNT, 2, slp_typ(1) | SLP_EN)
    value = bus.read(CNT, 2)
    assert not value & SLP_EN                    # write-only
    assert value & 1                             # SCI_EN cannot be cleared


def test_pm1_sts_write_one_to_clear(setup):
    pm, bus, *_ = setup
    pm.press_power_button()
    assert bus.read(STS, 2) & acpi_pm.PWRBTN_STS
    bus.write(STS, 2, 0)                         # writing 0 changes nothing
    assert bus.read(STS, 2) & acpi_pm.PWRBTN_STS
    bus.write(STS, 2, acpi_pm.WAK_STS)           # other bits: still set
    assert bus.read(STS, 2) & acpi_pm.PWRBTN_STS
    bus.write(STS, 2, acpi_pm.PWRBTN_STS)
    assert not bus.read(STS, 2) & acpi_pm.PWRBTN_STS


def test_pm1_en_and_sci(setup):
    pm, bus, _, _, sci = setup
    pm.press_power_button()
    assert not sci.level                         # not enabled yet
    bus.write(EN, 2, acpi_pm.PWRBTN_EN)
    assert bus.read(EN, 2) == acpi_pm.PWRBTN_EN
    assert sci.level
    bus.write(STS, 2, acpi_pm.PWRBTN_STS)
    assert not sci.level


def test_dword_access_to_event_block(setup):
    pm, bus, *_ = setup
    pm.press_power_button()
    bus.write(STS, 4, acpi_pm.PWRBTN_EN << 16)   # EN in the high half, STS untouched
    assert bus.read(STS, 4) == acpi_pm.PWRBTN_EN << 16 | acpi_pm.PWRBTN_STS
    assert bus.read(EN, 2) == acpi_pm.PWRBTN_EN


def test_reserved_bytes_read_zero(setup):
    _, bus, *_ = setup
    assert bus.read(CNT + 2, 2) == 0


def test_timer_increments(setup):
    _, bus, _, clock, _ = setup
    t0 = bus.read(TMR, 4)
    clock.t += 0.001
    t1 = bus.read(TMR, 4)
    assert t1 - t0 == pytest.approx(3579.545, abs=1)
    clock.t += 1
    assert bus.read(TMR, 4) - t1 == pytest.approx(3_579_545, abs=1)


def test_timer_is_24_bits_and_sets_tmr_sts(setup):
    _, bus, _, clock, _ = setup
    assert not bus.read(STS, 2) & acpi_pm.TMR_STS
    clock.t += (1 << 23) / acpi_pm.PM_TIMER_HZ + 0.01      # bit 23 flips
    assert bus.read(STS, 2) & acpi_pm.TMR_STS
    bus.write(STS, 2, acpi_pm.TMR_STS)
    assert not bus.read(STS, 2) & acpi_pm.TMR_STS
    for _ in range(20):
        clock.t += 0.7
        assert bus.read(TMR, 4) < 1 << 24


def test_timer_with_real_clock():
    pm = AcpiPm(lambda: None)
    a = pm.read(8, 4)
    time.sleep(0.01)
    b = pm.read(8, 4)
    assert 0.005 * 3_579_545 < (b - a) & 0xFFFFFF < 3_579_545     # about 35800 ticks
