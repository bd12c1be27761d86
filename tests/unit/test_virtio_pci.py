"""virtio-pci modern transport, driven like a guest driver drives it: configuration space
through ECAM, registers through the MMIO bus, interrupts into recorders."""

import os

import pytest

from akvm.devices.pci import PciHostBridge, PciRoot
from akvm.devices.pci.config import (
    CAP_ID_MSIX, CAP_ID_VENDOR, COMMAND, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE,
)
from akvm.devices.pci.device import MSIX_CTRL_ENABLE
from akvm.devices.virtio.device import (
    VIRTIO_STATUS_ACKNOWLEDGE, VIRTIO_STATUS_DEVICE_NEEDS_RESET, VIRTIO_STATUS_DRIVER,
    VIRTIO_STATUS_DRIVER_OK, VIRTIO_STATUS_FEATURES_OK,
)
from akvm.base.dma import DirectDma
from akvm.devices.virtio.pci import (
    CONFIG_GENERATION, CONFIG_MSIX_VECTOR, DEVICE_FEATURE, DEVICE_FEATURE_SELECT, DEVICE_STATUS,
    DRIVER_FEATURE, DRIVER_FEATURE_SELECT, NUM_QUEUES, QUEUE_DESC, QUEUE_DEVICE, QUEUE_DRIVER,
    QUEUE_ENABLE, QUEUE_MSIX_VECTOR, QUEUE_NOTIFY_OFF, QUEUE_SELECT, QUEUE_SIZE,
    VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_PCI_CFG, VirtioPci,
)
from akvm.devices.virtio.queue import VIRTQ_DESC_F_NEXT
from akvm.devices.virtio.rng import VirtioRng
from tests.unit.virtio_driver import DATA, RINGS, QueueDriver, new_memory
from akvm.base.bus import Bus
from akvm.base.irq import IrqLine

ECAM = 0xE000_0000
WINDOW = (0xC000_0000, 0xE000_0000)


class Machine:
    ecam = ECAM

    def __init__(self, device, ioeventfd=None, irqfd=None):
        self.pio, self.mmio = Bus("pio"), Bus("mmio")
        self.msis, self.lines = [], {}
        self.root = PciRoot(self.pio, self.mmio, mmio_window=WINDOW, irq=self._line,
                            msi=lambda a, d: self.msis.append((a, d)))
        self.mmio.register(ECAM, 256 << 20, self.root.ecam)
        self.root.add(PciHostBridge(), slot=0)
        self.mem = new_memory()
        self.device = device
        device.set_dma(DirectDma(self.mem))
        self.pci = VirtioPci(device, ioeventfd=ioeventfd, irqfd=irqfd)
        self.bdf = tuple(self.root.add(self.pci))

    def _line(self, gsi):
        self.lines[gsi] = IrqLine(gsi)
        return self.lines[gsi]

    def cfg(self, reg, size=4):
        bus, dev, fn = self.bdf
        return self.mmio.read(self.ecam + (bus << 20 | dev << 15 | fn << 12 | reg), size)

    def cfg_write(self, reg, size, value):
        bus, dev, fn = self.bdf
        self.mmio.write(self.ecam + (bus << 20 | dev << 15 | fn << 12 | reg), size, value)

    def virtio_caps(self):
        """{cfg_type: (bar, offset, length, cap offset)} the way a driver finds them."""
        caps, ptr = {}, self.cfg(0x34, 1)
        while ptr:
            if self.cfg(ptr, 1) == CAP_ID_VENDOR:
                cfg_type = self.cfg(ptr + 3, 1)
                caps.setdefault(cfg_type, (self.cfg(ptr + 4, 1), self.cfg(ptr + 8),
                                           self.cfg(ptr + 12), ptr))
            ptr = self.cfg(ptr + 1, 1)
        return caps

    def bar(self, index):
        return self.cfg(0x10 + 4 * index) & ~0xF

    def region(self, cfg_type):
        bar, offset, _, _ = self.virtio_caps()[cfg_type]
        return self.bar(bar) + offset

    def common(self, field, size, value=None):
        addr = self.region(VIRTIO_PCI_CAP_COMMON_CFG) + field
        if value is None:
            return self.mmio.read(addr, size)
        self.mmio.write(addr, size, value)

    def bring_up(self, msix=False):
        if msix:
            cap = self.pci.msix.offset
            self.cfg_write(cap + 2, 2, MSIX_CTRL_ENABLE)
            table = self.bar(1)
            for v in range(self.pci.msix.vectors):     # unmask, address/data per vector
                self.mmio.write(table + 16 * v, 4, 0xFEE0_0000)
                self.mmio.write(table + 16 * v + 8, 4, 0x40 + v)
                self.mmio.write(table + 16 * v + 12, 4, 0)
        self.cfg_write(COMMAND, 2, COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER)
        self.common(DEVICE_STATUS, 1, 0)
        self.common(DEVICE_STATUS, 1, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER)
        for sel in (0, 1):
            self.common(DEVICE_FEATURE_SELECT, 4, sel)
            offered = self.common(DEVICE_FEATURE, 4)
            self.common(DRIVER_FEATURE_SELECT, 4, sel)
            self.common(DRIVER_FEATURE, 4, offered)
        self.common(DEVICE_STATUS, 1, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                    VIRTIO_STATUS_FEATURES_OK)
        assert self.common(DEVICE_STATUS, 1) & VIRTIO_STATUS_FEATURES_OK
        if msix:
            self.common(CONFIG_MSIX_VECTOR, 2, 0)
        self.queues = []
        for i in range(self.common(NUM_QUEUES, 2)):
            self.common(QUEUE_SELECT, 2, i)
            size = self.common(QUEUE_SIZE, 2)
            q = QueueDriver(self.mem, size, RINGS + i * 0x10000)
            for field, value in ((QUEUE_DESC, q.desc), (QUEUE_DRIVER, q.avail),
                                 (QUEUE_DEVICE, q.used)):
                self.common(field, 4, value & 0xFFFF_FFFF)          # as two 32-bit halves
                self.common(field + 4, 4, value >> 32)
            if msix:
                self.common(QUEUE_MSIX_VECTOR, 2, i + 1)
                assert self.common(QUEUE_MSIX_VECTOR, 2) == i + 1
            self.common(QUEUE_ENABLE, 2, 1)
            self.queues.append(q)
        self.common(DEVICE_STATUS, 1, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                    VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK)

    def notify(self, queue):
        bar, offset, _, cap = self.virtio_caps()[VIRTIO_PCI_CAP_NOTIFY_CFG]
        multiplier = self.cfg(cap + 16)
        self.common(QUEUE_SELECT, 2, queue)
        off = self.common(QUEUE_NOTIFY_OFF, 2)
        self.mmio.write(self.bar(bar) + offset + off * multiplier, 2, queue)


@pytest.fixture
def m():
    machine = Machine(VirtioRng())
    yield machine
    machine.device.close()


def test_identity(m):
    assert m.cfg(0) == 0x1044_1AF4
    assert m.cfg(0x08, 1) >= 1                             # revision: modern
    assert m.cfg(0x2C, 2) == 0x1AF4
    assert m.cfg(0x3D, 1) == 1                             # INTA#


def test_capabilities(m):
    caps = m.virtio_caps()
    assert set(caps) == {VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG,
                         VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_PCI_CFG}   # rng: no config
    for cfg_type, (bar, offset, length, cap) in caps.items():
        assert m.cfg(cap + 2, 1) >= 16                     # cap_len
        if cfg_type != VIRTIO_PCI_CAP_PCI_CFG:
            assert bar == 0 and offset % 4 == 0
    assert caps[VIRTIO_PCI_CAP_COMMON_CFG][2] >= 0x38
    assert m.pci.config.find_capability(CAP_ID_MSIX) is not None


def test_device_cfg_capability_when_there_is_configuration():
    from akvm.devices.virtio.console import VirtioConsole
    from akvm.devices.chardev import NullChardev
    machine = Machine(VirtioConsole(NullChardev()))
    region = machine.region(VIRTIO_PCI_CAP_DEVICE_CFG)
    assert machine.mmio.read(region + 4, 4) == 1            # max_nr_ports
    assert machine.cfg(0) == 0x1043_1AF4


def test_common_config_basics(m):
    m.cfg_write(COMMAND, 2, COMMAND_MEMORY_SPACE)
    assert m.common(NUM_QUEUES, 2) == 1
    m.common(DEVICE_FEATURE_SELECT, 4, 1)
    assert m.common(DEVICE_FEATURE, 4) & 1                 # VIRTIO_F_VERSION_1
    m.common(QUEUE_SELECT, 2, 0)
    assert m.common(QUEUE_SIZE, 2) == 64
    m.common(QUEUE_SIZE, 2, 16)
    assert m.common(QUEUE_SIZE, 2) == 16
    m.common(QUEUE_SIZE, 2, 12)                             # not a power of two: ignored
    assert m.common(QUEUE_SIZE, 2) == 16
    m.common(QUEUE_DESC, 8, 0x1234_5678_9ABC_DEF0)
    assert m.common(QUEUE_DESC, 8) == 0x1234_5678_9ABC_DEF0
    assert m.common(QUEUE_DESC + 4, 4) == 0x1234_5678
    m.common(QUEUE_SELECT, 2, 5)                            # no such queue
    assert m.common(QUEUE_SIZE, 2) == 0
    assert m.common(CONFIG_MSIX_VECTOR, 2) == VIRTIO_MSI_NO_VECTOR
    m.common(CONFIG_MSIX_VECTOR, 2, 77)                     # beyond the table
    assert m.common(CONFIG_MSIX_VECTOR, 2) == VIRTIO_MSI_NO_VECTOR


def test_rng_over_pci_with_intx(m):
    m.bring_up()
    q = m.queues[0]
    q.add([(DATA, 32, True)])
    m.notify(0)
    assert q.take_used() == [(0, 32)]
    assert m.mem.read(DATA, 32) != bytes(32)
    line = m.lines[m.cfg(0x3C, 1)]
    assert line.level
    isr = m.region(VIRTIO_PCI_CAP_ISR_CFG)
    assert m.mmio.read(isr, 1) == 1                         # queue interrupt; reading clears
    assert not line.level
    assert m.mmio.read(isr, 1) == 0


def test_rng_over_pci_with_msix(m):
    m.bring_up(msix=True)
    q = m.queues[0]
    q.add([(DATA, 16, True)])
    m.notify(0)
    assert q.take_used() == [(0, 16)]
    assert m.msis == [(0xFEE0_0000, 0x41)]                  # queue 0 -> vector 1


def test_needs_reset_sends_the_config_vector(m):
    m.bring_up(msix=True)
    q = m.queues[0]
    q.write_desc(0, DATA, 4, VIRTQ_DESC_F_NEXT, 0)
    q.publish(0)
    m.notify(0)
    assert m.common(DEVICE_STATUS, 1) & VIRTIO_STATUS_DEVICE_NEEDS_RESET
    assert m.msis == [(0xFEE0_0000, 0x40)]
    isr = m.region(VIRTIO_PCI_CAP_ISR_CFG)
    assert m.mmio.read(isr, 1) & 2
    m.common(DEVICE_STATUS, 1, 0)
    assert m.common(DEVICE_STATUS, 1) == 0
    m.bring_up(msix=True)
    m.queues[0].add([(DATA, 16, True)])
    m.notify(0)
    assert m.queues[0].take_used() == [(0, 16)]


def test_config_generation_follows_the_device(m):
    m.bring_up()
    gen = m.common(CONFIG_GENERATION, 1)
    m.device.config_changed()
    assert m.common(CONFIG_GENERATION, 1) == (gen + 1) & 0xFF


def test_live_queue_layout_cannot_change(m):
    m.bring_up()
    m.common(QUEUE_SELECT, 2, 0)
    desc = m.common(QUEUE_DESC, 8)
    m.common(QUEUE_DESC, 8, 0x5000)
    assert m.common(QUEUE_DESC, 8) == desc


def test_pci_cfg_capability_reaches_the_bar(m):
    m.cfg_write(COMMAND, 2, COMMAND_MEMORY_SPACE)
    _, _, _, cap = m.virtio_caps()[VIRTIO_PCI_CAP_PCI_CFG]
    m.cfg_write(cap + 4, 1, 0)                               # BAR0
    m.cfg_write(cap + 12, 4, 2)                              # 2 bytes
    m.cfg_write(cap + 8, 4, NUM_QUEUES)
    assert m.cfg(cap + 16, 2) == 1
    m.cfg_write(cap + 8, 4, QUEUE_SELECT)
    m.cfg_write(cap + 16, 2, 7)
    assert m.pci.queue_select == 7


def test_ioeventfds_follow_bar0():
    calls = []
    machine = Machine(VirtioRng(), ioeventfd=lambda fd, addr, length, datamatch=None,
                      deassign=False: calls.append((fd, addr, length, deassign)))
    notify = machine.region(VIRTIO_PCI_CAP_NOTIFY_CFG)
    fd = machine.device.kick_fds[0]
    assert calls == [(fd, notify, 2, False)]
    machine.pci.set_bar_address(0, 0xD000_0000)
    assert calls[1:] == [(fd, notify, 2, True), (fd, 0xD000_0000 + 0x3000, 2, False)]
    machine.device.close()


class RecordingFastPath:
    def __init__(self):
        self.handlers, self.next_id = {}, 0

    def add(self, bus, base, size, function, owner):
        self.next_id += 1
        self.handlers[self.next_id] = (base, size, function, owner)
        return self.next_id

    def remove(self, hid):
        del self.handlers[hid]


def test_a_notify_address_in_c_replaces_its_ioeventfd_and_follows_bar0():
    """notify_in_c(): the queue's ioeventfd goes and a C handler takes its address (added
    first, so no write is lost), moves with BAR0, and notify_in_kernel() swaps them back."""
    calls = []
    machine = Machine(VirtioRng(), ioeventfd=lambda fd, addr, length, datamatch=None,
                      deassign=False: calls.append((fd, addr, deassign)))
    fast = machine.pci.fastpath = RecordingFastPath()
    notify = machine.region(VIRTIO_PCI_CAP_NOTIFY_CFG)
    fd = machine.device.kick_fds[0]
    owner = object()
    assert machine.pci.notify_in_c(0, "akvm_vnetq_exit", owner)
    assert list(fast.handlers.values()) == [(notify, 2, "akvm_vnetq_exit", owner)]
    assert calls == [(fd, notify, False), (fd, notify, True)]
    machine.pci.set_bar_address(0, 0xD000_0000)
    assert list(fast.handlers.values()) == [(0xD000_3000, 2, "akvm_vnetq_exit", owner)]
    assert calls[2:] == []                      # no ioeventfd for that queue meanwhile
    machine.pci.notify_in_kernel(0)
    assert fast.handlers == {} and calls[2:] == [(fd, 0xD000_3000, False)]
    machine.device.close()


def test_without_a_fast_path_the_notify_address_stays_in_the_kernel():
    machine = Machine(VirtioRng())
    assert not machine.pci.notify_in_c(0, "akvm_vnetq_exit", object())
    machine.device.close()


def test_failed_ioeventfd_falls_back_to_the_exit_path():
    def refuse(*a, **kw):
        raise OSError(22, "no")
    machine = Machine(VirtioRng(), ioeventfd=refuse)
    machine.bring_up()
    machine.queues[0].add([(DATA, 8, True)])
    machine.notify(0)
    assert machine.queues[0].take_used() == [(0, 8)]
    machine.device.close()


# --- MSI-X through irqfds ----------------------------------------------------------------

@pytest.fixture
def irqfd_machine():
    from tests.unit.test_irqroutes import RecordingVm
    from akvm.base.irqroutes import GsiRoutes
    vm = RecordingVm()
    routes = GsiRoutes(vm)
    machine = Machine(VirtioRng(), irqfd=routes.msi_irqfd)
    machine.vm, machine.routes = vm, routes
    yield machine
    machine.device.close()
    routes.close()


def pending(fd):
    """What has been written to an eventfd since the last look (0: nothing)."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def test_msix_vectors_get_irqfds_on_msi_routes(irqfd_machine):
    m = irqfd_machine
    m.bring_up(msix=True)
    # One MSI route per vector the driver unmasked, each bound to an eventfd by KVM_IRQFD.
    assert m.vm.msi == [(24, 0xFEE0_0000, 0x40), (25, 0xFEE0_0000, 0x41)]
    fds = {gsi: fd for fd, gsi, deassign in m.vm.irqfds if not deassign}
    assert sorted(fds) == [24, 25]
    q = m.queues[0]
    q.add([(DATA, 16, True)])
    m.notify(0)
    assert q.take_used() == [(0, 16)]
    assert pending(fds[25]) == 1 and pending(fds[24]) == 0     # queue 0 -> vector 1, by eventfd
    assert m.msis == []                                         # nothing by KVM_SIGNAL_MSI
    assert m.pci.interrupt_counts() == (1, 1)


def test_a_masked_irqfd_vector_is_pending_until_unmasked(irqfd_machine):
    m = irqfd_machine
    m.bring_up(msix=True)
    fd = next(fd for fd, gsi, _ in m.vm.irqfds if gsi == 25)
    control = m.bar(1) + 16 + 12                                # vector 1's Vector Control
    m.mmio.write(control, 4, 1)
    m.queues[0].add([(DATA, 16, True)])
    m.notify(0)
    assert pending(fd) == 0 and m.mmio.read(m.bar(1) + 0x1000, 8) == 0b10   # the PBA bit
    m.mmio.write(control, 4, 0)
    assert pending(fd) == 1 and m.mmio.read(m.bar(1) + 0x1000, 8) == 0
    assert m.msis == []


def test_the_route_follows_the_msix_table(irqfd_machine):
    m = irqfd_machine
    m.bring_up(msix=True)
    tables = len(m.vm.tables)
    entry = m.bar(1) + 16                                       # vector 1
    m.mmio.write(entry + 12, 4, 1)                              # mask, retarget, unmask
    m.mmio.write(entry + 8, 4, 0x77)
    m.mmio.write(entry, 4, 0xFEE0_1000)
    assert len(m.vm.tables) == tables                           # nothing while masked
    m.mmio.write(entry + 12, 4, 0)
    assert len(m.vm.tables) == tables + 1
    assert m.vm.msi == [(24, 0xFEE0_0000, 0x40), (25, 0xFEE0_1000, 0x77)]
    m.mmio.write(entry + 12, 4, 0)                              # the same message: no new table
    assert len(m.vm.tables) == tables + 1
    assert len([c for c in m.vm.irqfds if not c[2]]) == 2       # the same eventfds throughout
    m.queues[0].add([(DATA, 16, True)])
    m.notify(0)
    assert m.msis == [] and m.pci.irqfd_sent == 1


def test_msix_falls_back_to_signal_msi_without_an_irqfd():
    def refuse(address, data):
        raise OSError(22, "no irqfd")
    m = Machine(VirtioRng(), irqfd=refuse)
    m.bring_up(msix=True)
    m.queues[0].add([(DATA, 16, True)])
    m.notify(0)
    assert m.queues[0].take_used() == [(0, 16)]
    assert m.msis == [(0xFEE0_0000, 0x41)]
    assert m.pci.interrupt_counts() == (1, 0)
    m.device.close()
