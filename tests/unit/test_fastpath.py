"""The C run loop's table against its Python twins: Bus for unclaimed accesses,
DebugPort for port 0x80 (a handler registered like any device's)."""
import ctypes

from hypothesis import given, settings, strategies as st

from tests.conftest import examples

from akvm.devices.debugport import DebugPort, DebugPortShortcut
from akvm.base import kvm
from akvm.base.bus import Bus
from akvm.base.runloop import PIO, FastPath

PAGE = 4096
DATA_OFFSET = 1024


class Claimed:
    def read(self, offset, size):
        return 0x5A

    def write(self, offset, size, value):
        pass


class RunPage:
    """A kvm_run page in host memory, filled in as KVM would before returning to userspace."""

    def __init__(self):
        self.buf = (ctypes.c_char * PAGE)()
        self.address = ctypes.addressof(self.buf)
        self.run = kvm.kvm_run.from_address(self.address)

    def io(self, port, size, out, value=0, count=1):
        self.run.exit_reason = kvm.KVM_EXIT_IO
        io = self.run.exit.io
        io.direction, io.size, io.port, io.count, io.data_offset = int(out), size, port, count, DATA_OFFSET
        ctypes.memmove(self.address + DATA_OFFSET, (value).to_bytes(size, "little") * count, size * count)

    def io_data(self, size, count=1):
        return ctypes.string_at(self.address + DATA_OFFSET, size * count)

    def mmio(self, addr, size, write, value=0):
        self.run.exit_reason = kvm.KVM_EXIT_MMIO
        m = self.run.exit.mmio
        m.phys_addr, m.len, m.is_write = addr, size, int(write)
        ctypes.memmove(m.data, (value).to_bytes(8, "little"), 8)


def machine_buses():
    pio, mmio = Bus("pio"), Bus("mmio")
    pio.register(0x3F8, 8, Claimed(), "com1")
    pio.register(0xCF8, 4, Claimed(), "pci")
    mmio.register(0xE0000000, 0x10000000, Claimed(), "ecam")
    return pio, mmio


def test_claimed_accesses_go_back_to_python():
    pio, mmio = machine_buses()
    fp, page = FastPath(pio, mmio), RunPage()
    page.io(0x3F8, 1, out=True, value=0x41)
    assert not fp.complete(page.address)
    page.io(0xCFB, 2, out=False)            # straddles into the claimed range
    assert not fp.complete(page.address)
    page.mmio(0xE0001000, 4, write=False)
    assert not fp.complete(page.address)


def test_unclaimed_reads_are_all_ones_like_bus():
    pio, mmio = machine_buses()
    fp, page = FastPath(pio, mmio), RunPage()
    page.io(0x2F8, 1, out=False, count=3)
    assert fp.complete(page.address)
    assert page.io_data(1, 3) == b"\xff" * 3 == pio.read(0x2F8, 1).to_bytes(1, "little") * 3
    page.mmio(0xFEBF0000, 4, write=False)
    assert fp.complete(page.address)
    assert bytes(page.run.exit.mmio.data)[:4] == mmio.read(0xFEBF0000, 4).to_bytes(4, "little")
    assert fp.stats()["unclaimed_reads"] == (3, 1)


def test_ranges_follow_bus_changes():
    pio, mmio = machine_buses()
    fp, page = FastPath(pio, mmio), RunPage()
    page.mmio(0xC0000000, 4, write=True)
    assert fp.complete(page.address)
    rng = mmio.register(0xC0000000, 0x1000, Claimed(), "bar0")
    assert not fp.complete(page.address)
    mmio.unregister(rng)
    assert fp.complete(page.address)


def test_debug_port_like_debugport():
    pio, mmio = machine_buses()
    fp, page, twin = FastPath(pio, mmio), RunPage(), DebugPort()
    twin.register(pio)                              # as the machine has it
    shortcut = DebugPortShortcut(fp)
    for v in (0x12, 0x34, 0xFF):
        page.io(0x80, 1, out=True, value=v)
        assert fp.complete(page.address)
        twin.write(0, 1, v)
    page.io(0x80, 1, out=False)
    assert fp.complete(page.address)
    assert page.io_data(1)[0] == twin.read(0, 1) == 0xFF
    assert shortcut.stats()["writes"] == twin.writes == 3
    page.io(0x80, 2, out=True, value=0x1234)        # not a byte: DebugPort's
    assert not fp.complete(page.address)


def test_removed_handler_gets_no_more_exits():
    pio, mmio = machine_buses()
    fp, page = FastPath(pio, mmio), RunPage()
    shortcut = DebugPortShortcut(fp, port=0x3F8)    # inside a claimed range: the handler first
    page.io(0x3F8, 1, out=True, value=7)
    assert fp.complete(page.address) and shortcut.stats()["writes"] == 1
    fp.remove(shortcut.hid)
    assert not fp.complete(page.address)            # back to the claimed range's device
    assert shortcut.stats()["writes"] == 1


def test_handler_table_is_bounded():
    fp = FastPath(*machine_buses())
    for port in range(0x100, 0x100 + 32):
        DebugPortShortcut(fp, port=port)
    try:
        DebugPortShortcut(fp, port=0x200)
    except OSError as e:
        assert "akvm_fastpath_add" in str(e)
    else:
        raise AssertionError("a 33rd handler was accepted")


exits = st.one_of(
    st.tuples(st.just("io"), st.integers(0, 0xFFFF), st.sampled_from([1, 2, 4]), st.booleans()),
    st.tuples(st.just("mmio"), st.integers(0, 2**40), st.sampled_from([1, 2, 4, 8]), st.booleans()),
)


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(exits, max_size=30))
def test_random_exits_match_python_bus(seq):
    pio, mmio = machine_buses()
    fp, page = FastPath(pio, mmio), RunPage()
    DebugPortShortcut(fp)
    expected_unclaimed = {"pio": [0, 0], "mmio": [0, 0]}
    for kind, addr, size, write in seq:
        bus = pio if kind == "io" else mmio
        if kind == "io":
            page.io(addr, size, out=write)
        else:
            page.mmio(addr, size, write=write)
        claimed = any(r.base < addr + size and addr < r.end for r in bus.ranges())
        done = fp.complete(page.address)
        if kind == "io" and addr == 0x80 and size == 1:
            assert done
            continue
        assert done == (not claimed)
        if done:
            expected_unclaimed[bus.name][int(write)] += 1
    s = fp.stats()
    assert s["unclaimed_reads"] == (expected_unclaimed["pio"][0], expected_unclaimed["mmio"][0])
    assert s["unclaimed_writes"] == (expected_unclaimed["pio"][1], expected_unclaimed["mmio"][1])
