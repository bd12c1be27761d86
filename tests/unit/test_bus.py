"""The port-I/O / MMIO bus: dispatch by range, overlap refusal, unclaimed accesses."""
import pytest

from akvm.base.bus import Bus, BusError


class Recorder:
    def __init__(self):
        self.writes = []

    def read(self, offset, size):
        return 0x1000 + offset

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


def test_dispatch_passes_offset_relative_to_base():
    bus, dev = Bus("pio"), Recorder()
    bus.register(0x3F8, 8, dev)
    assert bus.read(0x3FA, 2) == 0x1002
    bus.write(0x3FF, 1, 0x55)
    assert dev.writes == [(7, 1, 0x55)]


@pytest.mark.parametrize("base,size", [(0x3F8, 8), (0x3F0, 9), (0x3FF, 1), (0x3F0, 0x100)])
def test_overlap_refused(base, size):
    bus = Bus("pio")
    bus.register(0x3F8, 8, Recorder(), "com1")
    with pytest.raises(BusError, match="overlaps com1"):
        bus.register(base, size, Recorder())


def test_adjacent_ranges_allowed_and_distinct():
    bus, a, b = Bus("mmio"), Recorder(), Recorder()
    bus.register(0x1000, 0x1000, a)
    bus.register(0x2000, 0x1000, b)
    bus.register(0x0, 0x1000, Recorder())
    bus.write(0x1FFF, 4, 1)
    bus.write(0x2000, 4, 2)
    assert a.writes == [(0xFFF, 4, 1)] and b.writes == [(0, 4, 2)]


@pytest.mark.parametrize("size,expected", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF), (8, 2**64 - 1)])
def test_unclaimed_reads_all_ones_and_counted(size, expected):
    bus = Bus("mmio")
    assert bus.read(0xFEBF0000, size) == expected
    assert bus.unclaimed_reads == 1


def test_unclaimed_writes_ignored_and_counted():
    bus = Bus("pio")
    bus.register(0x80, 1, Recorder())
    bus.write(0x81, 1, 0)
    bus.write(0x2F8, 1, 0)
    assert bus.unclaimed_writes == 2 and bus.accesses == 2


def test_unregister_frees_the_range():
    bus = Bus("mmio")
    rng = bus.register(0xC0000000, 0x1000, Recorder())
    bus.unregister(rng)
    assert bus.read(0xC0000000, 4) == 0xFFFFFFFF
    bus.register(0xC0000000, 0x1000, Recorder())


def test_empty_range_refused():
    with pytest.raises(BusError):
        Bus("pio").register(0x80, 0, Recorder())


class Broken:
    """A device model with a bug on register 2."""

    def __init__(self):
        self.writes = []

    def read(self, offset, size):
        if offset == 2:
            raise ValueError("month must be in 1..12")
        return 0x1234_5678_9ABC

    def write(self, offset, size, value):
        if offset == 2:
            raise KeyError(value)
        self.writes.append(offset)


def test_a_device_error_is_answered_counted_and_logged_once(caplog):
    bus, dev = Bus("pio"), Broken()
    bus.register(0x70, 4, dev, "cmos")
    for _ in range(3):
        assert bus.read(0x72, 1) == 0xFF            # all ones for the access's size
        assert bus.read(0x72, 4) == 0xFFFF_FFFF
        bus.write(0x72, 1, 7)                       # dropped
    bus.write(0x71, 1, 7)
    assert dev.writes == [1]                        # the device goes on working
    assert bus.device_errors == 9
    errors = [r for r in caplog.records if r.name == "akvm.bus"]
    assert len(errors) == 2                         # one per register and kind
    assert "cmos" in errors[0].getMessage() and "offset 0x2" in errors[0].getMessage()


def test_a_read_is_cut_to_its_size():
    bus = Bus("mmio")
    bus.register(0x1000, 8, Broken())
    assert bus.read(0x1000, 1) == 0xBC
    assert bus.read(0x1000, 4) == 0x5678_9ABC


def test_a_guest_cannot_flood_the_log(caplog):
    from akvm.base.bus import LOGGED_LIMIT

    class Always:
        def read(self, offset, size):
            raise RuntimeError(offset)

        def write(self, offset, size, value):
            raise RuntimeError(offset)
    bus = Bus("mmio")
    bus.register(0, 1 << 20, Always())
    for offset in range(0, 1 << 20, 4096):
        bus.read(offset, 4)
    assert bus.device_errors == 256
    assert len([r for r in caplog.records if r.name == "akvm.bus"]) == LOGGED_LIMIT + 1
