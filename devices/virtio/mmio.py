"""virtio over MMIO, version 2 (virtio 1.2, 4.2): a register window and one IRQ line.

For guests that learn their devices from the command line rather than by
probing: Linux takes `virtio_mmio.device=SIZE@BASE:IRQ` (cmdline_string()).

Registers are 32 bits wide and 32-bit aligned; the device configuration
space from 0x100 may be accessed at any width. QueueNotify is a KVM
ioeventfd per queue (datamatch on the queue index) when the machine
provides one; otherwise the write exits to write() and kicks the queue the
same way. The interrupt is level: high while InterruptStatus is not zero;
every new event also makes a fresh rising edge, for a guest that set the
IOAPIC pin up edge-triggered (Linux does for ISA IRQs).

The line is driven with KVM_IRQ_LINE (akvm.base.irq.KvmIrqLine), not an irqfd:
a level irqfd lowers the line at the guest's EOI and needs a resample fd
and a device-side re-check to raise it again while InterruptStatus is
set, and the fresh edges above have no irqfd equivalent; virtio-mmio is
for command-line-configured guests, not the fast path.
"""
from __future__ import annotations

import logging
import threading

from akvm.devices.state import restore_counters, save_counters
from akvm.devices.virtio.device import VirtioDevice

log = logging.getLogger("akvm.virtio")

MAGIC_VALUE = 0x000
VERSION = 0x004
DEVICE_ID = 0x008
VENDOR_ID = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
SHM_SEL = 0x0AC
SHM_LEN_LOW = 0x0B0
SHM_LEN_HIGH = 0x0B4
SHM_BASE_LOW = 0x0B8
SHM_BASE_HIGH = 0x0BC
QUEUE_RESET = 0x0C0
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

VIRTIO_MMIO_MAGIC = 0x74726976          # "virt"
VIRTIO_MMIO_VERSION = 2
VIRTIO_MMIO_VENDOR_ID = 0x4D564B41      # "AKVM"
VIRTIO_MMIO_INT_VRING = 1 << 0
VIRTIO_MMIO_INT_CONFIG = 1 << 1
VIRTIO_MMIO_SIZE = 0x200

_QUEUE_ADDRESS = {QUEUE_DESC_LOW: "desc", QUEUE_DRIVER_LOW: "driver", QUEUE_DEVICE_LOW: "device"}


def cmdline_string(base: int, irq: int, size: int = VIRTIO_MMIO_SIZE) -> str:
    """What Linux's virtio_mmio driver wants on the kernel command line for this device."""
    return f"virtio_mmio.device={size:#x}@{base:#x}:{irq}"


class VirtioMmio:
    """A VirtioDevice behind a virtio-mmio register window (a bus device)."""

    def __init__(self, device: VirtioDevice, irq, ioeventfd=None):
        self.device = device
        device.transport = self
        self.irq = irq                     # an IrqLine
        self.ioeventfd = ioeventfd
        self.lock = threading.Lock()
        self.base: int | None = None
        self.interrupts = 0
        self._reset_transport()

    def _reset_transport(self) -> None:
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.queue_sel = 0
        self.interrupt_status = 0

    def placed(self, base: int) -> None:
        """The machine put the window at `base`: register the queues' ioeventfds."""
        self.base = base
        if self.ioeventfd is None:
            return
        for i, fd in enumerate(self.device.kick_fds):
            try:
                self.ioeventfd(fd, base + QUEUE_NOTIFY, 4, datamatch=i)
            except OSError as e:               # the MMIO exit path still works
                log.warning("%s: no ioeventfd for queue %d: %s", self.device.name, i, e)

    # --- snapshots (akvm.devices.state) ------------------------------------------------

    _TRANSPORT = ("device_features_sel", "driver_features_sel", "queue_sel", "interrupt_status",
                  "interrupts")

    def snapshot(self) -> dict:
        with self.lock:
            return {**save_counters(self, self._TRANSPORT), "virtio": self.device.snapshot()}

    def restore(self, state: dict) -> None:
        with self.lock:
            restore_counters(self, state, self._TRANSPORT)
            self.irq.set_level(self.interrupt_status != 0)
        self.device.restore(state["virtio"])

    def pause(self, timeout: float) -> bool:
        return self.device.pause(timeout)

    def resume(self) -> None:
        self.device.resume()

    # --- interrupts ---------------------------------------------------------------------

    def _interrupt(self, bits: int) -> None:
        with self.lock:
            self.interrupt_status |= bits
            self.interrupts += 1
            if self.irq.level:
                self.irq.set_level(False)      # a new edge for edge-triggered pins
            self.irq.set_level(True)

    def interrupt_counts(self) -> tuple[int, int]:
        """(interrupts sent, of which by irqfd: none here)."""
        return self.interrupts, 0

    def signal_queue(self, vq) -> None:
        self._interrupt(VIRTIO_MMIO_INT_VRING)

    def signal_config(self) -> None:
        self._interrupt(VIRTIO_MMIO_INT_CONFIG)

    def _ack(self, bits: int) -> None:
        with self.lock:
            self.interrupt_status &= ~bits
            self.irq.set_level(self.interrupt_status != 0)

    # --- registers -----------------------------------------------------------------------

    def _selected(self):
        qs = self.device.queues
        return qs[self.queue_sel] if self.queue_sel < len(qs) else None

    def read(self, offset: int, size: int) -> int:
        d = self.device
        if offset >= CONFIG:
            return d.read_config(offset - CONFIG, size)
        if size != 4 or offset % 4:
            return 0
        vq = self._selected()
        if offset == MAGIC_VALUE:
            return VIRTIO_MMIO_MAGIC
        if offset == VERSION:
            return VIRTIO_MMIO_VERSION
        if offset == DEVICE_ID:
            return d.device_id
        if offset == VENDOR_ID:
            return VIRTIO_MMIO_VENDOR_ID
        if offset == DEVICE_FEATURES:
            return d.device_features_word(self.device_features_sel)
        if offset == QUEUE_NUM_MAX:
            return vq.max_size if vq is not None else 0
        if offset == QUEUE_READY:
            return int(vq is not None and vq.ready)
        if offset == INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == STATUS:
            return d.status
        if offset in (SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH):
            return 0xFFFF_FFFF                 # no shared memory regions
        if offset == CONFIG_GENERATION:
            return d.config_generation
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        d = self.device
        if offset >= CONFIG:
            d.write_config(offset - CONFIG, size, value)
            return
        if size != 4 or offset % 4:
            return
        if offset == QUEUE_NOTIFY:
            d.kick(value & 0xFFFF)
        elif offset == INTERRUPT_ACK:
            self._ack(value)
        elif offset == STATUS:
            if value & 0xFF == 0:
                d.reset()
                self._reset_transport()
                self._ack(~0)
            else:
                d.write_status(value)
        elif offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            d.set_driver_features_word(self.driver_features_sel, value)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        else:
            vq = self._selected()
            if vq is not None and not vq.ready:
                self._queue_write(vq, offset, value)

    def _queue_write(self, vq, offset: int, value: int) -> None:
        if offset == QUEUE_NUM:
            if 0 < value <= vq.max_size and not value & (value - 1):
                vq.size = value
        elif offset == QUEUE_READY:
            if value == 1:
                self.device.enable_queue(vq.index)
        elif offset & ~4 in _QUEUE_ADDRESS:
            name = _QUEUE_ADDRESS[offset & ~4]
            shift = 32 if offset & 4 else 0
            old = getattr(vq, name)
            setattr(vq, name, old & ~(0xFFFF_FFFF << shift) | value << shift)
