"""A hostile guest on every bus range of a built machine: no access raises in a device.

HostileGuest builds a machine with every --device kind (virtio ones on PCI and on
MMIO) behind the VT-d unit, then reads and writes at random in every range its
port and MMIO buses hold (found on the buses, so devices added later are driven
too, and ranges PCI BARs move to are followed) and in the configuration space of
every PCI function. A device model that raises is caught by the bus (the guest
gets all ones, the VM runs on) and counted: the invariant is that it never happens.
tools/fuzz runs the same machine for a million accesses and more.
"""
import os
import tempfile

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.conftest import examples, needs_kvm
from akvm.config import MachineConfig
from akvm.devicetable import DEVICES, parse_device, parse_iommu
from akvm.machine import Machine
from akvm.tables import layout

pytestmark = needs_kvm

# What a kind needs besides its name to be built here; a new kind with a required
# option fails this test until it is listed.
OPTIONS = {"virtio-blk": "file={image}", "virtio-console": "chardev=none", "e1000": "loopback=on",
           "virtio-net": "loopback=on"}
SIZES = (1, 2, 4, 8)
# Values: small ones (register indices, commands, enables), single bytes, anything.
VALUES = st.integers(0, 0x1F) | st.integers(0, 0xFF) | st.integers(0, (1 << 64) - 1)


def device_specs(scratch: str) -> list:
    """Every kind of the device table, the virtio ones on both transports."""
    specs = []
    for kind in DEVICES.values():
        for transport in ("pci", "mmio") if kind.option("transport") else (None,):
            image = os.path.join(scratch, f"{kind.name}-{transport}.img")
            with open(image, "wb") as f:
                f.truncate(1 << 20)
            text = ",".join([kind.name, *([OPTIONS[kind.name].format(image=image)]
                                          if kind.name in OPTIONS else [])])
            specs.append(parse_device(f"{text},transport={transport}" if transport else text))
    return specs


class HostileGuest(RuleBasedStateMachine):
    """One built machine (not running: its devices serve requests inline) per run."""

    kernel: str = ""
    accesses = 0            # across all runs: the campaign's count
    by_bus = [0, 0]         # of which port I/O, MMIO
    swept = 0               # of which in sweep()
    sweep_every = 0         # random accesses per sweep at least (tools/fuzz: 1000)

    def __init__(self):
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.machine = Machine.build(MachineConfig(
            kernel=self.kernel, memory=64 << 20, serial="none",
            devices=device_specs(self._dir.name), iommu=parse_iommu("vtd")))
        self.buses = (self.machine.pio_bus, self.machine.mmio_bus)
        self.functions = [addr for addr, _ in self.machine.pci.devices()]
        self.sweeps, self.at_start = 0, HostileGuest.accesses

    def teardown(self):
        self.machine.close()
        self._dir.cleanup()

    def _access(self, bus, addr: int, size: int, value: int | None) -> None:
        HostileGuest.accesses += 1
        HostileGuest.by_bus[bus is self.machine.mmio_bus] += 1
        if value is None:
            bus.read(addr, size)
        else:
            bus.write(addr, size, value & ((1 << 8 * size) - 1))

    def _offset(self, data, rng) -> int:
        """Anywhere in the range, most often near its start, where registers are."""
        return data.draw(st.integers(0, min(rng.size, 0x200) - 1) | st.integers(0, rng.size - 1))

    @rule(data=st.data(), bus=st.sampled_from((0, 1)), size=st.sampled_from(SIZES),
          value=st.none() | VALUES)
    def range_access(self, data, bus, size, value):
        """One access in a range the bus holds now."""
        b = self.buses[bus]
        rng = data.draw(st.sampled_from(b.ranges()))
        if bus == 0:
            size = min(size, 4)         # port I/O is 1, 2 or 4 bytes
        self._access(b, rng.base + self._offset(data, rng), size, value)

    @rule(data=st.data(), index=st.integers(0, 0xFF), values=st.lists(st.none() | VALUES,
                                                                       min_size=1, max_size=4))
    def index_then_data(self, data, index, values):
        """A byte written to one port of a small range, then accesses to another: the
        index/data pairs of PC devices (CMOS, 0xCF8/0xCFC, the i8042's commands)."""
        small = [r for r in self.machine.pio_bus.ranges() if r.size <= 16]
        rng = data.draw(st.sampled_from(small))
        first = data.draw(st.integers(0, rng.size - 1))
        self._access(self.machine.pio_bus, rng.base + first, 1, index)
        second = rng.base + data.draw(st.integers(0, rng.size - 1))
        for value in values:
            self._access(self.machine.pio_bus, second, 1, value)

    @rule(data=st.data(), register=st.integers(0, 0xFFF), size=st.sampled_from((1, 2, 4)),
          value=st.none() | st.integers(0, 0xFFFF_FFFF) | st.just(0xFFFF_FFFF) | st.just(0x7))
    def config_access(self, data, register, size, value):
        """A PCI function's configuration space, through ECAM: BARs, command, capabilities."""
        addr = data.draw(st.sampled_from(self.functions))
        ecam = (addr.bus << 20 | addr.device << 15 | addr.function << 12) + register
        self._access(self.machine.mmio_bus, layout.ECAM_BASE + ecam, size, value)

    @precondition(lambda self: self.sweeps * self.sweep_every <= HostileGuest.accesses - self.at_start)
    @rule(data=st.data(), value=st.none() | st.integers(0, 0xFF))
    def sweep(self, data, value):
        """Every index written to a small range's port, each followed by a read or a
        write of the next port: register files behind an index (CMOS's 128 bytes)."""
        small = [r for r in self.machine.pio_bus.ranges() if 2 <= r.size <= 16]
        rng = data.draw(st.sampled_from(small))
        index = rng.base + data.draw(st.integers(0, rng.size - 2))
        for i in range(256):
            self._access(self.machine.pio_bus, index, 1, i)
            self._access(self.machine.pio_bus, index + 1, 1, value)
        HostileGuest.swept += 512
        self.sweeps += 1

    @invariant()
    def no_device_raised(self):
        for bus in self.buses:
            assert bus.device_errors == 0, f"{bus.name}: a device model raised (see the log)"


@needs_kvm
def test_no_access_raises_in_a_device(tiny_kernel):
    HostileGuest.kernel = str(tiny_kernel)
    run = settings(max_examples=examples(25), stateful_step_count=60, deadline=None)
    HostileGuest.TestCase.settings = run
    HostileGuest.TestCase("runTest").runTest()
