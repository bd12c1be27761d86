"""The machine's GSI routing table (KVM_SET_GSI_ROUTING) and MSI irqfds.

KVM turns a GSI into interrupts through its routing table: irqchip routes
(a pin of the in-kernel IOAPIC or of one of the two PICs) and MSI routes (a
message: address and data). KVM_SET_GSI_ROUTING replaces the whole table,
so one object per VM owns it, `GsiRoutes`:

    GSI 0-23    IOAPIC pin n (the MADT and MP table say ISA IRQ n is pin n,
                with no IRQ0 override), and for 0-15 also PIC pin n % 8
                (master below 8, slave from 8), except 2, the cascade
    GSI 24-     one MSI route each, allocated as devices need them

Every change (a route added, retargeted or removed) programs the whole
table again.

`MsiIrqfd` is an eventfd bound with KVM_IRQFD to an MSI route: writing the
eventfd makes KVM send the message, so a device thread interrupts the guest
with one write(2) and no ioctl. The route follows the guest's message
(retarget()); whoever uses it keeps masked vectors from triggering it.
"""
from __future__ import annotations

import logging
import os
import threading

from akvm.base import kvm

log = logging.getLogger("akvm.irq")

IRQCHIP_GSIS = 24                 # IOAPIC pins 0-23
PIC_GSIS = 16                     # two cascaded 8259s
PIC_CASCADE = 2                   # the slave's input on the master: no device behind it
FIRST_MSI_GSI = IRQCHIP_GSIS
DEFAULT_MAX_ROUTES = 4096         # KVM_MAX_IRQ_ROUTES; KVM_CAP_IRQ_ROUTING reports it


def irqchip_route(gsi: int, chip: int, pin: int) -> kvm.kvm_irq_routing_entry:
    e = kvm.kvm_irq_routing_entry(gsi=gsi, type=kvm.KVM_IRQ_ROUTING_IRQCHIP)
    e.u.irqchip.irqchip, e.u.irqchip.pin = chip, pin
    return e


def msi_route(gsi: int, address: int, data: int) -> kvm.kvm_irq_routing_entry:
    e = kvm.kvm_irq_routing_entry(gsi=gsi, type=kvm.KVM_IRQ_ROUTING_MSI)
    e.u.msi.address_lo = address & 0xFFFF_FFFF
    e.u.msi.address_hi = address >> 32 & 0xFFFF_FFFF
    e.u.msi.data = data & 0xFFFF_FFFF
    return e


def irqchip_routes() -> list[kvm.kvm_irq_routing_entry]:
    """The fixed part of the table: IOAPIC pins for GSIs 0-23, PIC pins for 0-15 but 2."""
    entries = []
    for gsi in range(IRQCHIP_GSIS):
        entries.append(irqchip_route(gsi, kvm.KVM_IRQCHIP_IOAPIC, gsi))
        if gsi < PIC_GSIS and gsi != PIC_CASCADE:
            chip = kvm.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else kvm.KVM_IRQCHIP_PIC_SLAVE
            entries.append(irqchip_route(gsi, chip, gsi % 8))
    return entries


class GsiRoutes:
    """A VM's routing table: the irqchip routes and the MSI routes handed out.

    `vm` needs set_gsi_routing(entries) and, for irqfds, irqfd(fd, gsi,
    deassign=False) (akvm.base.kvm.Vm; tests give a recorder). Safe from any thread.
    """

    def __init__(self, vm, max_routes: int = DEFAULT_MAX_ROUTES):
        self.vm = vm
        self.max_gsi = FIRST_MSI_GSI + max(0, max_routes - len(irqchip_routes()))
        self.lock = threading.Lock()
        self._msi: dict[int, tuple[int, int]] = {}       # gsi -> (address, data)
        self._irqfds: list[MsiIrqfd] = []
        self.reprograms = 0                              # KVM_SET_GSI_ROUTING calls

    # --- the table ----------------------------------------------------------------------

    @property
    def msi_routes(self) -> dict[int, tuple[int, int]]:
        with self.lock:
            return dict(self._msi)

    def entries(self) -> list[kvm.kvm_irq_routing_entry]:
        with self.lock:
            return self._entries()

    def _entries(self) -> list[kvm.kvm_irq_routing_entry]:
        return irqchip_routes() + [msi_route(gsi, *self._msi[gsi]) for gsi in sorted(self._msi)]

    def commit(self) -> None:
        """Program the whole table into KVM (also the first time, with no MSI routes)."""
        with self.lock:
            self._commit()

    def _commit(self) -> None:
        self.vm.set_gsi_routing(self._entries())
        self.reprograms += 1

    # --- MSI routes ---------------------------------------------------------------------

    def add_msi(self, address: int, data: int) -> int:
        """A new MSI route on the lowest free GSI from 24; returns the GSI. The table is
        programmed before this returns; if KVM refuses it, nothing changed (KvmError)."""
        with self.lock:
            gsi = next((g for g in range(FIRST_MSI_GSI, self.max_gsi) if g not in self._msi),
                       None)
            if gsi is None:
                raise kvm.KvmError(28, f"no free GSI for an MSI route ({self.max_gsi} in use)")
            self._msi[gsi] = (address, data)
            try:
                self._commit()
            except OSError:
                del self._msi[gsi]
                raise
            return gsi

    def set_msi(self, gsi: int, address: int, data: int) -> bool:
        """Point an MSI route at a new message; returns whether the table changed. If KVM
        refuses the new table the route keeps its old message (KvmError)."""
        with self.lock:
            old = self._msi[gsi]
            if old == (address, data):
                return False
            self._msi[gsi] = (address, data)
            try:
                self._commit()
            except OSError:
                self._msi[gsi] = old
                raise
            return True

    def remove_msi(self, gsi: int) -> None:
        with self.lock:
            if self._msi.pop(gsi, None) is None:
                return
            try:
                self._commit()
            except OSError as e:          # free in our table; KVM keeps the stale route
                log.warning("GSI %d: route not removed from KVM: %s", gsi, e)

    # --- irqfds -------------------------------------------------------------------------

    def msi_irqfd(self, address: int, data: int) -> "MsiIrqfd":
        """An eventfd that sends (address, data) when written (KVM_IRQFD on a new MSI route)."""
        irqfd = MsiIrqfd(self, address, data)
        with self.lock:
            self._irqfds.append(irqfd)
        return irqfd

    def close(self) -> None:
        """Unbind and close every irqfd handed out (the device threads have stopped)."""
        with self.lock:
            irqfds, self._irqfds = self._irqfds, []
        for irqfd in irqfds:
            irqfd.close()

    def forget(self, irqfd: "MsiIrqfd") -> None:
        with self.lock:
            if irqfd in self._irqfds:
                self._irqfds.remove(irqfd)


class MsiIrqfd:
    """An eventfd bound to an MSI route: trigger() sends `message` to the guest."""

    def __init__(self, routes: GsiRoutes, address: int, data: int):
        self.routes = routes
        self.gsi = routes.add_msi(address, data)
        self.message = (address, data)
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            routes.vm.irqfd(self.fd, self.gsi)
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            routes.remove_msi(self.gsi)
            raise
        self.triggered = 0

    def retarget(self, address: int, data: int) -> None:
        """The guest changed the message: the route follows (KvmError: it did not)."""
        self.routes.set_msi(self.gsi, address, data)
        self.message = (address, data)

    def trigger(self) -> None:
        """Send the message: one eventfd write, which KVM turns into the MSI."""
        if self.fd < 0:
            raise OSError(9, "irqfd closed")
        os.eventfd_write(self.fd, 1)
        self.triggered += 1

    def close(self) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            self.routes.vm.irqfd(fd, self.gsi, deassign=True)
        except OSError as e:
            log.debug("GSI %d: irqfd not deassigned: %s", self.gsi, e)
        os.close(fd)
        self.routes.remove_msi(self.gsi)
        self.routes.forget(self)
