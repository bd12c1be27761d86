"""PCI configuration in C (devices/pci/pciconf.c) against its Python twin, PciRoot.

The same configuration accesses (the 0xCF8 latch, CONFIG_DATA byte lanes,
ECAM, present and absent functions) go to a PciRoot alone and to one with
the C shortcut in front, as a vCPU's exit loop does; every read must agree.
"""
from hypothesis import given, settings, strategies as st

from tests.conftest import examples

from akvm.devices.pci.host import CONFIG_ADDRESS, CONFIG_DATA
from tests.unit.test_fastpath import RunPage
from tests.unit.test_pci import ECAM_BASE, ECAM_SIZE, Pc, TestDevice
from akvm.base.runloop import FastPath
from akvm.devices.pci.pciconf import PciConfShortcut

PRESENT = [(0, 0, 0), (0, 3, 0), (0, 5, 2)]
BDFS = st.one_of(st.sampled_from(PRESENT + [(0, 3, 1), (0, 31, 7), (1, 0, 0), (255, 31, 7)]),
                 st.tuples(st.integers(0, 255), st.integers(0, 31), st.integers(0, 7)))


class Twin(Pc):
    def __init__(self, native: bool):
        super().__init__()
        self.root.add(TestDevice(), slot=3)
        self.root.add(TestDevice(pin=0), slot=5, function=2)
        self.page = RunPage()
        self.fast = FastPath(self.pio, self.mmio)
        if native:
            self.shortcut = PciConfShortcut(self.fast, ECAM_BASE, ECAM_SIZE)
            self.root.attach_shortcut(self.shortcut)

    def port(self, port, size, write, value=0):
        self.page.io(port, size, out=write, value=value)
        if self.fast.complete(self.page.address):
            return None if write else int.from_bytes(self.page.io_data(size), "little")
        if write:
            self.pio.write(port, size, value)
            return None
        return self.pio.read(port, size)

    def mem(self, addr, size, write, value=0):
        self.page.mmio(addr, size, write, value)
        if self.fast.complete(self.page.address):
            return None if write else int.from_bytes(bytes(self.page.run.exit.mmio.data)[:size], "little")
        if write:
            self.mmio.write(addr, size, value)
            return None
        return self.mmio.read(addr, size)


def latch_value(bdf, reg, enable):
    bus, dev, fn = bdf
    return (0x8000_0000 if enable else 0) | bus << 16 | dev << 11 | fn << 8 | reg


ops = st.lists(st.one_of(
    st.tuples(st.just("latch"), BDFS, st.integers(0, 255), st.booleans()),
    st.tuples(st.just("port"), st.integers(CONFIG_ADDRESS, CONFIG_DATA + 3), st.sampled_from([1, 2, 4]),
              st.booleans(), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("ecam"), BDFS, st.integers(0, 4095), st.sampled_from([1, 2, 4, 8]),
              st.booleans(), st.integers(0, 0xFFFFFFFF)),
), max_size=50)


@settings(max_examples=examples(150), deadline=None)
@given(ops)
def test_c_path_and_python_path_agree(sequence):
    py, c = Twin(False), Twin(True)
    for op in sequence:
        if op[0] == "latch":
            value = latch_value(op[1], op[2], op[3])
            results = [t.port(CONFIG_ADDRESS, 4, True, value) for t in (py, c)]
        elif op[0] == "port":
            _, port, size, write, value = op
            if port == 0xCF9 and write:
                continue                        # the reset control: nothing wired here
            value &= (1 << 8 * size) - 1
            results = [t.port(port, size, write, value) for t in (py, c)]
        else:
            _, bdf, reg, size, write, value = op
            bus, dev, fn = bdf
            addr = ECAM_BASE + (bus << 20 | dev << 15 | fn << 12 | reg)
            if addr + size > ECAM_BASE + ECAM_SIZE:
                continue
            results = [t.mem(addr, size, write, value) for t in (py, c)]
        assert results[0] == results[1], op
    assert py.root.config_address == c.root.config_address


def test_a_bus_scan_never_reaches_python():
    """What Akaros does at boot: the vendor id of every device on every bus."""
    c = Twin(True)
    found = []
    for bus in range(256):
        for dev in range(32):
            c.port(CONFIG_ADDRESS, 4, True, latch_value((bus, dev, 0), 0, True))
            vendor = c.port(CONFIG_DATA, 4, False)
            if vendor != 0xFFFFFFFF:
                found.append((bus, dev))
    assert found == [(0, 0), (0, 3)]            # 00:05 has no function 0
    stats = c.shortcut.stats()
    assert stats["latch_accesses"] == 8192 and stats["absent_reads"] == 8190
    assert c.pio.accesses == 2                  # the two present functions' reads
