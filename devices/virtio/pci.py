"""virtio over PCI, modern interface only (virtio 1.2, 4.1).

The function is 1af4:(1040 + device id), revision 1. Its registers live in
BAR0 (memory, 16 KiB), one 4 KiB page per structure, each found through a
vendor-specific capability (struct virtio_pci_cap):

    0x0000  VIRTIO_PCI_CAP_COMMON_CFG   struct virtio_pci_common_cfg
    0x1000  VIRTIO_PCI_CAP_ISR_CFG      ISR status (read clears, lowers INTx)
    0x2000  VIRTIO_PCI_CAP_DEVICE_CFG   the device configuration space
    0x3000  VIRTIO_PCI_CAP_NOTIFY_CFG   queue n's notify address at n * 4

plus VIRTIO_PCI_CAP_PCI_CFG (BAR access through configuration space) and
MSI-X (one vector per queue and one for configuration changes) in BAR1.

Notifications: each queue's notify address is a KVM ioeventfd on the
queue's kick eventfd when the machine provides one (a 16-bit write then
never leaves the kernel); any other write reaches write() below and kicks
the queue the same way. A device may ask for a queue's notify address to
complete in C on the vCPU instead (notify_in_c(), with the machine's fast
path): virtio-net on user networking does with `tx=vcpu`, so that the vCPU
hands what the guest sends to libslirp itself. Interrupts: MSI-X when the driver enabled it,
else INTx with the ISR. Given `irqfd` (a new_irqfd(address, data) factory,
see PciDevice.use_irqfds) each MSI-X vector the driver unmasks is an
eventfd bound to a KVM MSI route that follows the vector's table entry, and
the device thread interrupts the guest by writing it; otherwise (no irqfd
support in KVM) messages go out by KVM_SIGNAL_MSI.
"""
from __future__ import annotations

import logging

from akvm.devices.pci import BarKind, PciDevice
from akvm.devices.pci.config import CAP_ID_VENDOR
from akvm.devices.state import restore_counters, save_counters
from akvm.devices.virtio.device import VirtioDevice
from akvm.base.dma import DirectDma
from akvm.devices.virtio.spec import (
    VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_PCI_CFG,
)

log = logging.getLogger("akvm.virtio")

VIRTIO_PCI_VENDOR_ID = 0x1AF4
VIRTIO_PCI_DEVICE_ID_BASE = 0x1040        # + virtio device id (4.1.2.1)



# struct virtio_pci_cap: cap_vndr, cap_next, cap_len, cfg_type, bar, id, padding[2], offset, length
CAP_CFG_TYPE, CAP_BAR, CAP_ID, CAP_OFFSET, CAP_LENGTH = 3, 4, 5, 8, 12
CAP_LEN = 16
NOTIFY_CAP_LEN = 20                       # + le32 notify_off_multiplier
PCI_CFG_CAP_LEN = 20                      # + u8 pci_cfg_data[4]
PCI_CFG_DATA = 16

# BAR0 layout
REGS_BAR = 0
MSIX_BAR = 1
REGS_BAR_SIZE = 0x4000
COMMON_CFG_OFFSET = 0x0000
ISR_CFG_OFFSET = 0x1000
DEVICE_CFG_OFFSET = 0x2000
NOTIFY_CFG_OFFSET = 0x3000
NOTIFY_OFF_MULTIPLIER = 4
PAGE = 0x1000

# struct virtio_pci_common_cfg (4.1.4.3)
DEVICE_FEATURE_SELECT = 0x00
DEVICE_FEATURE = 0x04
DRIVER_FEATURE_SELECT = 0x08
DRIVER_FEATURE = 0x0C
CONFIG_MSIX_VECTOR = 0x10
NUM_QUEUES = 0x12
DEVICE_STATUS = 0x14
CONFIG_GENERATION = 0x15
QUEUE_SELECT = 0x16
QUEUE_SIZE = 0x18
QUEUE_MSIX_VECTOR = 0x1A
QUEUE_ENABLE = 0x1C
QUEUE_NOTIFY_OFF = 0x1E
QUEUE_DESC = 0x20
QUEUE_DRIVER = 0x28
QUEUE_DEVICE = 0x30
QUEUE_NOTIFY_DATA = 0x38
QUEUE_RESET = 0x3A
COMMON_CFG_SIZE = 0x3C

_FIELDS = {                               # offset -> width
    DEVICE_FEATURE_SELECT: 4, DEVICE_FEATURE: 4, DRIVER_FEATURE_SELECT: 4, DRIVER_FEATURE: 4,
    CONFIG_MSIX_VECTOR: 2, NUM_QUEUES: 2, DEVICE_STATUS: 1, CONFIG_GENERATION: 1,
    QUEUE_SELECT: 2, QUEUE_SIZE: 2, QUEUE_MSIX_VECTOR: 2, QUEUE_ENABLE: 2,
    QUEUE_NOTIFY_OFF: 2, QUEUE_DESC: 8, QUEUE_DRIVER: 8, QUEUE_DEVICE: 8,
    QUEUE_NOTIFY_DATA: 2, QUEUE_RESET: 2,
}

# Class codes per device type (base, sub-class, prog-if)
_CLASS = {1: 0x020000, 2: 0x018000, 3: 0x078000, 4: 0xFF0000}

class VirtioPci(PciDevice):
    """A VirtioDevice as a modern virtio-pci function."""

    def __init__(self, device: VirtioDevice, ioeventfd=None, irqfd=None):
        super().__init__(VIRTIO_PCI_VENDOR_ID, VIRTIO_PCI_DEVICE_ID_BASE + device.device_id,
                         _CLASS.get(device.device_id, 0xFF0000), revision=1,
                         subsystem_vendor_id=VIRTIO_PCI_VENDOR_ID,
                         subsystem_id=0x40 + device.device_id, interrupt_pin=1,
                         name=device.name)
        if len(device.config) > PAGE or len(device.queues) * NOTIFY_OFF_MULTIPLIER > PAGE:
            raise ValueError(f"{device.name}: too many queues or too much configuration")
        self.device = device
        device.transport = self
        self.ioeventfd = ioeventfd
        self.regs = self.add_bar(REGS_BAR, REGS_BAR_SIZE, BarKind.MEM32, _Regs(self))
        vectors = len(device.queues) + 1
        self.add_bar(MSIX_BAR, 2 * PAGE, BarKind.MEM32)
        self.add_msix(vectors, bar=MSIX_BAR, table_offset=0, pba_offset=PAGE)
        self._add_cap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_CFG_OFFSET, COMMON_CFG_SIZE)
        notify = self._add_cap(VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_CFG_OFFSET,
                               len(device.queues) * NOTIFY_OFF_MULTIPLIER, NOTIFY_CAP_LEN)
        self.config.set(notify + CAP_LEN, 4, NOTIFY_OFF_MULTIPLIER)
        self._add_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_CFG_OFFSET, 4)
        if device.config:
            self._add_cap(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, len(device.config))
        self.pci_cfg = self._add_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, PCI_CFG_CAP_LEN)
        c = self.config
        c.set_wmask(self.pci_cfg + CAP_BAR, 1, 0xFF)
        c.set_wmask(self.pci_cfg + CAP_OFFSET, 4, 0xFFFF_FFFF)
        c.set_wmask(self.pci_cfg + CAP_LENGTH, 4, 0xFFFF_FFFF)
        c.set_wmask(self.pci_cfg + PCI_CFG_DATA, 4, 0xFFFF_FFFF)
        self._registered: list[tuple[int, int]] = []     # (fd, addr) ioeventfds in KVM
        self.fastpath = None            # the machine's (akvm.base.runloop.FastPath), if any
        self._regs_base: int | None = None
        self._in_c: dict[int, list] = {}        # queue -> [C function, owner, handler id]
        if irqfd is not None:
            self.use_irqfds(irqfd)
        self._reset_transport()

    def attach(self, address, pio_bus=None, mmio_bus=None, irq=None, msi=None, dma=None) -> None:
        """As PciDevice.attach; the function's DmaSpace becomes the device's DMA. Behind an
        IOMMU (a translating DmaSpace) the device offers VIRTIO_F_ACCESS_PLATFORM and uses it
        when the driver accepts; a driver that does not gets guest-physical DMA (virtio 1.2, 6.1)."""
        super().attach(address, pio_bus, mmio_bus, irq, msi, dma)
        if dma is None:
            return                          # a machine without DmaSpaces: set_dma() was called
        if getattr(dma, "translated", False):
            self.device.set_dma(DirectDma(dma.memory), dma)
        else:
            self.device.set_dma(dma)

    def _add_cap(self, cfg_type: int, offset: int, length: int, cap_len: int = CAP_LEN) -> int:
        at = self.config.add_capability(CAP_ID_VENDOR, cap_len)
        self.config.set(at + 2, 1, cap_len)
        self.config.set(at + CAP_CFG_TYPE, 1, cfg_type)
        self.config.set(at + CAP_BAR, 1, REGS_BAR)
        self.config.set(at + CAP_OFFSET, 4, offset)
        self.config.set(at + CAP_LENGTH, 4, length)
        return at

    def _reset_transport(self) -> None:
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self.config_msix_vector = VIRTIO_MSI_NO_VECTOR
        self.isr = 0

    # --- snapshots (akvm.devices.state) ----------------------------------------------------

    _TRANSPORT = ("device_feature_select", "driver_feature_select", "queue_select",
                  "config_msix_vector", "isr")

    def device_snapshot(self) -> dict:
        return {**save_counters(self, self._TRANSPORT), "virtio": self.device.snapshot()}

    def device_restore(self, state: dict) -> None:
        restore_counters(self, state, self._TRANSPORT)
        self.device.restore(state["virtio"])

    def pause(self, timeout: float) -> bool:
        return self.device.pause(timeout)

    def resume(self) -> None:
        self.device.resume()

    # --- interrupts (called by the device, without its lock) -----------------------------

    def signal_queue(self, vq) -> None:
        with self.lock:
            if self.msix_enabled:
                if vq.msix_vector != VIRTIO_MSI_NO_VECTOR:
                    self.signal(vq.msix_vector)
                return
            self.isr |= 1
            self.signal(0)

    def signal_config(self) -> None:
        with self.lock:
            self.isr |= 2
            if self.msix_enabled:
                if self.config_msix_vector != VIRTIO_MSI_NO_VECTOR:
                    self.signal(self.config_msix_vector)
                return
            self.signal(0)

    def interrupt_counts(self) -> tuple[int, int]:
        """(interrupts sent, of which by irqfd): MSI/MSI-X messages and INTx assertions."""
        return self.msi_sent + self.intx_signals, self.irqfd_sent

    def _read_isr(self) -> int:
        with self.lock:
            value, self.isr = self.isr, 0
            self.lower_intx()
            return value

    # --- BAR0 -------------------------------------------------------------------------------

    def bar_read(self, offset: int, size: int) -> int:
        page, off = divmod(offset, PAGE)
        if page == COMMON_CFG_OFFSET // PAGE:
            return self._common_read(off, size)
        if page == ISR_CFG_OFFSET // PAGE:
            return self._read_isr() if off == 0 else 0
        if page == DEVICE_CFG_OFFSET // PAGE:
            return self.device.read_config(off, size)
        return 0

    def bar_write(self, offset: int, size: int, value: int) -> None:
        page, off = divmod(offset, PAGE)
        if page == COMMON_CFG_OFFSET // PAGE:
            self._common_write(off, size, value)
        elif page == DEVICE_CFG_OFFSET // PAGE:
            self.device.write_config(off, size, value)
        elif page == NOTIFY_CFG_OFFSET // PAGE:
            if off % NOTIFY_OFF_MULTIPLIER == 0:
                self.device.kick(off // NOTIFY_OFF_MULTIPLIER)

    # --- common configuration ------------------------------------------------------------

    def _selected(self):
        qs = self.device.queues
        return qs[self.queue_select] if self.queue_select < len(qs) else None

    def _field_read(self, field: int) -> int:
        d, vq = self.device, self._selected()
        if field == DEVICE_FEATURE_SELECT:
            return self.device_feature_select
        if field == DEVICE_FEATURE:
            return d.device_features_word(self.device_feature_select)
        if field == DRIVER_FEATURE_SELECT:
            return self.driver_feature_select
        if field == DRIVER_FEATURE:
            return d.driver_features_word(self.driver_feature_select)
        if field == CONFIG_MSIX_VECTOR:
            return self.config_msix_vector
        if field == NUM_QUEUES:
            return len(d.queues)
        if field == DEVICE_STATUS:
            return d.status
        if field == CONFIG_GENERATION:
            return d.config_generation & 0xFF
        if field == QUEUE_SELECT:
            return self.queue_select
        if vq is None:
            return 0                                     # queue_size 0: no such queue
        return {QUEUE_SIZE: vq.size, QUEUE_MSIX_VECTOR: vq.msix_vector,
                QUEUE_ENABLE: int(vq.ready), QUEUE_NOTIFY_OFF: vq.index,
                QUEUE_DESC: vq.desc, QUEUE_DRIVER: vq.driver, QUEUE_DEVICE: vq.device,
                }.get(field, 0)

    def _field_write(self, field: int, value: int) -> None:
        d, vq = self.device, self._selected()
        if field == DEVICE_FEATURE_SELECT:
            self.device_feature_select = value
        elif field == DRIVER_FEATURE_SELECT:
            self.driver_feature_select = value
        elif field == DRIVER_FEATURE:
            d.set_driver_features_word(self.driver_feature_select, value)
        elif field == CONFIG_MSIX_VECTOR:
            self.config_msix_vector = self._vector(value)
        elif field == DEVICE_STATUS:
            if value & 0xFF == 0:
                d.reset()
                with self.lock:
                    self._reset_transport()
                    self.lower_intx()
            else:
                d.write_status(value)
        elif field == QUEUE_SELECT:
            self.queue_select = value
        elif vq is not None:
            if field == QUEUE_MSIX_VECTOR:
                value = self._vector(value)
            self._queue_write(d, vq, field, value)

    @staticmethod
    def _queue_write(d: VirtioDevice, vq, field: int, value: int) -> None:
        if field == QUEUE_MSIX_VECTOR:
            vq.msix_vector = value          # already checked against the MSI-X table
            return
        if vq.ready:
            return                          # a live queue's layout is fixed until reset
        if field == QUEUE_SIZE:
            if 0 < value <= vq.max_size and not value & (value - 1):
                vq.size = value
        elif field == QUEUE_ENABLE:
            if value == 1:
                d.enable_queue(vq.index)
        elif field == QUEUE_DESC:
            vq.desc = value
        elif field == QUEUE_DRIVER:
            vq.driver = value
        elif field == QUEUE_DEVICE:
            vq.device = value

    def _vector(self, value: int) -> int:
        return value if value < self.msix.vectors else VIRTIO_MSI_NO_VECTOR

    def _common_read(self, offset: int, size: int) -> int:
        return _compose(offset, size, self._field_read)

    def _common_write(self, offset: int, size: int, value: int) -> None:
        for field, width in _FIELDS.items():
            lo, hi = max(offset, field), min(offset + size, field + width)
            if lo >= hi:
                continue
            current = self._field_read(field) if (lo, hi) != (field, field + width) else 0
            mask = ((1 << 8 * (hi - lo)) - 1) << 8 * (lo - field)
            part = (value >> 8 * (lo - offset)) << 8 * (lo - field)
            self._field_write(field, (current & ~mask | part & mask) & ((1 << 8 * width) - 1))

    # --- notifications through KVM --------------------------------------------------------

    def bar_moved(self, bar, old, new) -> None:
        super().bar_moved(bar, old, new)
        if bar.index == REGS_BAR:
            self._regs_base = new
            if self.ioeventfd is not None:
                self._move_ioeventfds(new)
            for index in self._in_c:
                self._place_in_c(index)

    def _move_ioeventfds(self, base: int | None) -> None:
        for fd, addr in self._registered:
            self._deassign(fd, addr)
        self._registered = []
        if base is None:
            return
        for i in range(len(self.device.kick_fds)):
            if i not in self._in_c:
                self._assign(i, base)

    def _assign(self, index: int, base: int) -> None:
        fd, addr = self.device.kick_fds[index], base + NOTIFY_CFG_OFFSET + index * NOTIFY_OFF_MULTIPLIER
        try:
            self.ioeventfd(fd, addr, 2)
        except OSError as e:             # the MMIO exit path still works
            log.warning("%s: no ioeventfd at %#x: %s", self.name, addr, e)
            return
        self._registered.append((fd, addr))

    def _deassign(self, fd: int, addr: int) -> None:
        try:
            self.ioeventfd(fd, addr, 2, deassign=True)
        except OSError as e:
            log.warning("%s: ioeventfd at %#x not removed: %s", self.name, addr, e)

    def notify_in_c(self, index: int, function: str, owner) -> bool:
        """Queue `index`'s notify address completes in C on the vCPU: `function` (an
        akvm_exit_fn, with owner.handle) in place of the queue's ioeventfd. False when
        there is no fast path to do it with."""
        if self.fastpath is None:
            return False
        from akvm.base.runloop import MMIO
        with self.lock:
            self.notify_in_kernel(index)
            self._in_c[index] = [function, owner, None, MMIO]
            self._place_in_c(index)          # the handler first: no write is lost between
            if self.ioeventfd is not None:
                addr = None if self._regs_base is None else \
                    self._regs_base + NOTIFY_CFG_OFFSET + index * NOTIFY_OFF_MULTIPLIER
                for fd, at in [r for r in self._registered if r[1] == addr]:
                    self._deassign(fd, at)
                    self._registered.remove((fd, at))
        return True

    def notify_in_kernel(self, index: int) -> None:
        """Back to the queue's ioeventfd (or write()); once this returns no vCPU is in the
        C function notify_in_c() gave."""
        with self.lock:
            entry = self._in_c.pop(index, None)
            if entry is None:
                return
            if self.ioeventfd is not None and self._regs_base is not None:
                self._assign(index, self._regs_base)
            if entry[2] is not None:
                self.fastpath.remove(entry[2])

    def _place_in_c(self, index: int) -> None:
        entry = self._in_c[index]
        if entry[2] is not None:
            self.fastpath.remove(entry[2])
            entry[2] = None
        if self._regs_base is not None:
            entry[2] = self.fastpath.add(entry[3], self._regs_base + NOTIFY_CFG_OFFSET +
                                         index * NOTIFY_OFF_MULTIPLIER, 2, entry[0], entry[1])

    # --- VIRTIO_PCI_CAP_PCI_CFG: BAR access through configuration space -----------------

    def _pci_cfg_target(self) -> tuple[int, int] | None:
        c, at = self.config, self.pci_cfg
        length, offset = c.get(at + CAP_LENGTH, 4), c.get(at + CAP_OFFSET, 4)
        if c.get(at + CAP_BAR, 1) != REGS_BAR or length not in (1, 2, 4) or offset % length \
                or offset + length > REGS_BAR_SIZE:
            return None
        return offset, length

    def config_read(self, offset: int, size: int) -> int:
        data = self.pci_cfg + PCI_CFG_DATA
        if offset < data + 4 and data < offset + size:
            target = self._pci_cfg_target()
            if target is not None:
                value = self.bar_read(*target)
                with self.lock:
                    self.config.set(data, target[1], value)
        return super().config_read(offset, size)

    def on_config_write(self, offset: int, size: int) -> None:
        data = self.pci_cfg + PCI_CFG_DATA
        if offset < data + 4 and data < offset + size:
            target = self._pci_cfg_target()
            if target is not None:
                self.bar_write(*target, self.config.get(data, target[1]))


class _Regs:
    """BAR0 as a bus device."""

    def __init__(self, pci: VirtioPci):
        self.pci = pci

    def read(self, offset: int, size: int) -> int:
        return self.pci.bar_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.pci.bar_write(offset, size, value)


def _compose(offset: int, size: int, field_read) -> int:
    """A read of any width at any offset, assembled from the fields it covers."""
    value = 0
    for field, width in _FIELDS.items():
        lo, hi = max(offset, field), min(offset + size, field + width)
        if lo < hi:
            part = field_read(field) >> 8 * (lo - field) & ((1 << 8 * (hi - lo)) - 1)
            value |= part << 8 * (lo - offset)
    return value
