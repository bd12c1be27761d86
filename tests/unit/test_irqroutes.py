"""The GSI routing table and MSI irqfds (akvm.base.irqroutes), against a Vm that records ioctls."""
import os

import pytest

from akvm.base import kvm
from akvm.base.irqroutes import FIRST_MSI_GSI, GsiRoutes, irqchip_routes


def decode(entry):
    """A routing entry as a tuple: ("irqchip", gsi, chip, pin) or ("msi", gsi, address, data)."""
    if entry.type == kvm.KVM_IRQ_ROUTING_IRQCHIP:
        return ("irqchip", entry.gsi, entry.u.irqchip.irqchip, entry.u.irqchip.pin)
    assert entry.type == kvm.KVM_IRQ_ROUTING_MSI
    m = entry.u.msi
    return ("msi", entry.gsi, m.address_hi << 32 | m.address_lo, m.data)


class RecordingVm:
    """What GsiRoutes needs of akvm.base.kvm.Vm; every call recorded, failures on demand."""

    def __init__(self):
        self.tables = []             # each KVM_SET_GSI_ROUTING, decoded
        self.irqfds = []             # (fd, gsi, deassign)
        self.refuse_routing = False
        self.refuse_irqfd = False

    def set_gsi_routing(self, entries):
        if self.refuse_routing:
            raise kvm.KvmError(22, "refused")
        self.tables.append([decode(e) for e in entries])

    def irqfd(self, fd, gsi, deassign=False):
        if self.refuse_irqfd and not deassign:
            raise kvm.KvmError(22, "refused")
        self.irqfds.append((fd, gsi, deassign))

    @property
    def msi(self):
        """The MSI routes of the last table programmed."""
        return [e[1:] for e in self.tables[-1] if e[0] == "msi"]


@pytest.fixture
def vm():
    return RecordingVm()


def test_irqchip_routes():
    routes = [decode(e) for e in irqchip_routes()]
    ioapic = [r for r in routes if r[2] == kvm.KVM_IRQCHIP_IOAPIC]
    pic = [r for r in routes if r[2] != kvm.KVM_IRQCHIP_IOAPIC]
    assert ioapic == [("irqchip", n, kvm.KVM_IRQCHIP_IOAPIC, n) for n in range(24)]
    assert pic == [("irqchip", n, kvm.KVM_IRQCHIP_PIC_MASTER if n < 8 else
                    kvm.KVM_IRQCHIP_PIC_SLAVE, n % 8) for n in range(16) if n != 2]


def test_commit_programs_the_irqchip_routes(vm):
    routes = GsiRoutes(vm)
    routes.commit()
    assert vm.tables == [[decode(e) for e in irqchip_routes()]]
    assert routes.reprograms == 1


def test_msi_routes_are_allocated_from_gsi_24(vm):
    routes = GsiRoutes(vm)
    assert routes.add_msi(0xFEE0_0000, 0x41) == FIRST_MSI_GSI == 24
    assert routes.add_msi(0xFEE0_1000, 0x42) == 25
    assert vm.msi == [(24, 0xFEE0_0000, 0x41), (25, 0xFEE0_1000, 0x42)]
    routes.remove_msi(24)
    assert vm.msi == [(25, 0xFEE0_1000, 0x42)]
    assert routes.add_msi(0x1_FEE0_0000, 0x43) == 24                     # the lowest free GSI
    assert vm.msi == [(24, 0x1_FEE0_0000, 0x43), (25, 0xFEE0_1000, 0x42)]  # sorted, 64-bit address


def test_every_change_programs_the_whole_table(vm):
    routes = GsiRoutes(vm)
    a = routes.add_msi(0xFEE0_0000, 0x41)
    b = routes.add_msi(0xFEE0_0000, 0x42)
    assert routes.set_msi(a, 0xFEE0_0000, 0x51)
    assert not routes.set_msi(a, 0xFEE0_0000, 0x51)                      # no change, no ioctl
    routes.remove_msi(b)
    routes.remove_msi(b)                                                 # already gone: no ioctl
    assert len(vm.tables) == routes.reprograms == 4
    chip = [decode(e) for e in irqchip_routes()]
    for table in vm.tables:
        assert table[:len(chip)] == chip                                 # never left out
    assert [t[len(chip):] for t in vm.tables] == [
        [("msi", a, 0xFEE0_0000, 0x41)],
        [("msi", a, 0xFEE0_0000, 0x41), ("msi", b, 0xFEE0_0000, 0x42)],
        [("msi", a, 0xFEE0_0000, 0x51), ("msi", b, 0xFEE0_0000, 0x42)],
        [("msi", a, 0xFEE0_0000, 0x51)],
    ]


def test_a_refused_table_changes_nothing(vm):
    routes = GsiRoutes(vm)
    gsi = routes.add_msi(0xFEE0_0000, 0x41)
    vm.refuse_routing = True
    with pytest.raises(OSError):
        routes.add_msi(0xFEE0_0000, 0x42)
    with pytest.raises(OSError):
        routes.set_msi(gsi, 0xFEE0_0000, 0x99)
    assert routes.msi_routes == {gsi: (0xFEE0_0000, 0x41)}


def test_gsis_run_out(vm):
    routes = GsiRoutes(vm, max_routes=len(irqchip_routes()) + 2)
    routes.add_msi(0xFEE0_0000, 0x41)
    routes.add_msi(0xFEE0_0000, 0x42)
    with pytest.raises(OSError, match="no free GSI"):
        routes.add_msi(0xFEE0_0000, 0x43)


def test_msi_irqfd_binds_an_eventfd_to_its_route(vm):
    routes = GsiRoutes(vm)
    irqfd = routes.msi_irqfd(0xFEE0_0000, 0x41)
    assert vm.msi == [(irqfd.gsi, 0xFEE0_0000, 0x41)]        # the route exists before the bind
    assert vm.irqfds == [(irqfd.fd, irqfd.gsi, False)]
    irqfd.trigger()
    irqfd.trigger()
    assert os.eventfd_read(irqfd.fd) == 2 and irqfd.triggered == 2
    irqfd.retarget(0xFEE0_2000, 0x61)
    assert irqfd.message == (0xFEE0_2000, 0x61)
    assert vm.msi == [(irqfd.gsi, 0xFEE0_2000, 0x61)]
    fd = irqfd.fd
    irqfd.close()
    assert vm.irqfds[-1] == (fd, irqfd.gsi, True)
    assert vm.msi == [] and routes.msi_routes == {}
    with pytest.raises(OSError):
        irqfd.trigger()


def test_a_refused_irqfd_gives_its_gsi_back(vm):
    routes = GsiRoutes(vm)
    vm.refuse_irqfd = True
    with pytest.raises(OSError):
        routes.msi_irqfd(0xFEE0_0000, 0x41)
    assert routes.msi_routes == {} and vm.msi == []


def test_close_unbinds_every_irqfd(vm):
    routes = GsiRoutes(vm)
    fds = [routes.msi_irqfd(0xFEE0_0000, 0x40 + i) for i in range(3)]
    routes.close()
    assert sorted(g for _, g, deassign in vm.irqfds if deassign) == [f.gsi for f in fds]
    assert all(f.fd == -1 for f in fds) and routes.msi_routes == {}
