"""PS/2 controller stub, 0xCF9 reset register and the port-0x80 debug port."""
import pytest

from akvm.devices.debugport import DEBUG_PORT, DebugPort
from akvm.devices.i8042 import (
    CONFIG_AUX_DISABLED, CONFIG_KBD_DISABLED, CONFIG_SYS, DEFAULT_CONFIG,
    STATUS_A2, STATUS_OBF, STATUS_SYS, I8042, ResetControl,
)
from akvm.base.bus import Bus


class Resets:
    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1


@pytest.fixture
def resets():
    return Resets()


@pytest.fixture
def kbc(resets):
    return I8042(reset=resets)


@pytest.fixture
def bus(kbc, resets):
    b = Bus("pio")
    kbc.register(b)
    ResetControl(reset=resets).register(b)
    DebugPort().register(b)
    return b


def status(bus):
    return bus.read(0x64, 1)


# -- status: no phantom data --------------------------------------------------

def test_idle_status_has_no_output_data(bus):
    s = status(bus)
    assert s & STATUS_OBF == 0
    assert s & STATUS_SYS
    assert s == 0x1C


def test_polling_for_keys_never_sees_data(bus):
    for _ in range(100):
        assert status(bus) & STATUS_OBF == 0
        bus.read(0x60, 1)


def test_obf_only_while_reply_queued(bus):
    bus.write(0x64, 1, 0xAA)
    assert status(bus) & STATUS_OBF
    assert bus.read(0x60, 1) == 0x55
    assert status(bus) & STATUS_OBF == 0


def test_a2_tracks_last_port_written(bus):
    bus.write(0x64, 1, 0x60)
    assert status(bus) & STATUS_A2
    bus.write(0x60, 1, DEFAULT_CONFIG)
    assert status(bus) & STATUS_A2 == 0


def test_ports_61_to_63_are_not_claimed(bus):
    for port in (0x61, 0x62, 0x63):
        assert bus.find(port) is None


# -- commands -------------------------------------------------------------------

def test_self_test(bus):
    bus.write(0x64, 1, 0xAA)
    assert bus.read(0x60, 1) == 0x55


@pytest.mark.parametrize("cmd", [0xAB, 0xA9])
def test_port_tests_pass(bus, cmd):
    bus.write(0x64, 1, cmd)
    assert bus.read(0x60, 1) == 0x00


def test_read_command_byte_is_sane(bus):
    bus.write(0x64, 1, 0x20)
    cb = bus.read(0x60, 1)
    assert cb == DEFAULT_CONFIG
    assert cb & CONFIG_SYS
    assert cb & CONFIG_KBD_DISABLED == 0


def test_write_then_read_command_byte(bus, kbc):
    bus.write(0x64, 1, 0x60)
    bus.write(0x60, 1, 0x65)
    assert kbc.config == 0x65
    bus.write(0x64, 1, 0x20)
    assert bus.read(0x60, 1) == 0x65


def test_data_write_without_command_is_not_the_command_byte(bus, kbc):
    bus.write(0x60, 1, 0xFF)               # keyboard reset, but there is no keyboard
    assert kbc.config == DEFAULT_CONFIG
    assert status(bus) & STATUS_OBF == 0   # and no reply appears


def test_disable_enable_ports(bus, kbc):
    bus.write(0x64, 1, 0xAD)
    bus.write(0x64, 1, 0xA7)
    assert kbc.config & (CONFIG_KBD_DISABLED | CONFIG_AUX_DISABLED) == \
        CONFIG_KBD_DISABLED | CONFIG_AUX_DISABLED
    bus.write(0x64, 1, 0xAE)
    bus.write(0x64, 1, 0xA8)
    assert kbc.config & (CONFIG_KBD_DISABLED | CONFIG_AUX_DISABLED) == 0
    assert status(bus) & STATUS_OBF == 0   # accepted silently


def test_unknown_command_ignored(bus, resets):
    bus.write(0x64, 1, 0xC7)
    assert status(bus) & STATUS_OBF == 0
    assert resets.count == 0


def test_empty_data_read_repeats_last_byte(bus):
    bus.write(0x64, 1, 0xAA)
    assert bus.read(0x60, 1) == 0x55
    assert bus.read(0x60, 1) == 0x55
    assert status(bus) & STATUS_OBF == 0


def test_reply_queue_is_bounded(kbc):
    for _ in range(100):
        kbc.write_command(0xAA)
    n = 0
    while kbc.read_status() & STATUS_OBF:
        kbc.read_data()
        n += 1
    assert 0 < n <= 16


# -- reset ------------------------------------------------------------------------

def test_pulse_reset_command(bus, resets, kbc):
    bus.write(0x64, 1, 0xFE)
    assert resets.count == 1
    assert kbc.resets == 1


def test_pulse_without_reset_line_does_not_reset(bus, resets):
    bus.write(0x64, 1, 0xFF)               # pulses no line
    assert resets.count == 0


def test_output_port_reset_bit(bus, resets):
    bus.write(0x64, 1, 0xD0)
    port = bus.read(0x60, 1)
    assert port & 0x01                     # reset line inactive
    bus.write(0x64, 1, 0xD1)
    bus.write(0x60, 1, port)               # unchanged: no reset
    assert resets.count == 0
    bus.write(0x64, 1, 0xD1)
    bus.write(0x60, 1, port & ~0x01)
    assert resets.count == 1


def test_reset_without_callback_only_counts():
    k = I8042()
    k.write_command(0xFE)
    assert k.resets == 1


def test_reset_callback_may_touch_the_controller(resets):
    seen = []
    k = I8042(reset=lambda: seen.append(k.read_status()))   # no lock held: no deadlock
    k.write_command(0xFE)
    assert seen and seen[0] & STATUS_OBF == 0


# -- 0xCF9 ----------------------------------------------------------------------

def test_cf9_reset_on_bit_2(bus, resets):
    bus.write(0xCF9, 1, 0x02)              # select hard reset: not yet
    assert resets.count == 0
    assert bus.read(0xCF9, 1) == 0x02
    bus.write(0xCF9, 1, 0x06)
    assert resets.count == 1
    assert bus.read(0xCF9, 1) == 0x06


def test_cf9_reads_last_written():
    r = ResetControl()
    assert r.read(0, 1) == 0
    r.write(0, 1, 0x0A)
    assert r.read(0, 1) == 0x0A
    assert r.resets == 0
    r.write(0, 1, 0x0E)
    assert r.resets == 1


# -- port 0x80 --------------------------------------------------------------------

def test_debug_port_counts_and_remembers(bus):
    dev = bus.find(DEBUG_PORT).device
    assert bus.read(0x80, 1) == 0
    for code in (0x10, 0x20, 0x30):
        bus.write(0x80, 1, code)
    assert dev.writes == 3
    assert dev.last == 0x30 and bus.read(0x80, 1) == 0x30
    assert list(dev.history) == [0x10, 0x20, 0x30]


def test_debug_port_callback_and_widths():
    got = []
    d = DebugPort(on_write=got.append, history=2)
    d.write(0, 2, 0x1234)
    d.write(0, 1, 0x1FF)
    d.write(0, 4, 0xDEADBEEF)
    assert got == [0x1234, 0xFF, 0xDEADBEEF]
    assert d.read(0, 1) == 0xEF and d.read(0, 4) == 0xDEADBEEF
    assert list(d.history) == [0xFF, 0xDEADBEEF]
