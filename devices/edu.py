"""QEMU's "edu" educational PCI device (1234:11e8): a small DMA engine.

The same register interface as QEMU's (docs/specs/edu.rst there), so one
guest driver runs on both VMMs. BAR0 is 1 MiB of MMIO:

    0x00 RO  identification 0xRRrr00ed (version 1.0)
    0x04 RW  liveness check: reads back the inverse of what was written
    0x08 RW  factorial: write n, read n!
    0x20 RW  status: 0x01 computing (RO), 0x80 raise interrupt 0x01 after a factorial
    0x24 RO  interrupt status (what raised the interrupt, ORed)
    0x60 WO  raise interrupt: the value is ORed into the interrupt status
    0x64 WO  acknowledge: clears those bits; INTx drops when none are left
    0x80 RW  DMA source address       0x88 RW  DMA destination address
    0x90 RW  DMA count                0x98 RW  DMA command: 0x01 start,
             0x02 direction (0: RAM -> device, 1: device -> RAM),
             0x04 raise interrupt 0x100 when done

Registers below 0x80 take 4-byte accesses, the DMA registers 4 or 8;
other sizes read all ones and are ignored. The device's buffer is 4 KiB at
device address 0x40000; bus addresses are clamped to the DMA mask (28
bits by default, as QEMU's).

Unlike QEMU, work is done inside the register write: a factorial or a DMA
is complete (status and command bits clear) when the write returns. Every
transfer goes through the device's DmaSpace, so with an IOMMU it is
translated and may fault; a failed or refused transfer still completes
(and interrupts, if asked), as in QEMU, and is counted in `dma_errors`.
Interrupts: MSI when the guest enabled it, else INTA#.
"""
from __future__ import annotations

import logging

from akvm.devices.pci import BarKind, PciDevice
from akvm.base.dma import DmaError
from akvm.devices.state import pack, restore_counters, save_counters, unpack

log = logging.getLogger("akvm.edu")

EDU_VENDOR_ID = 0x1234
EDU_DEVICE_ID = 0x11E8
EDU_CLASS = 0x00FF00          # QEMU's PCI_CLASS_OTHERS in the sub-class byte
EDU_REVISION = 0x10
EDU_ID = 0x010000ED           # version 1.0
BAR_SIZE = 1 << 20

ID = 0x00
LIVENESS = 0x04
FACTORIAL = 0x08
STATUS = 0x20
IRQ_STATUS = 0x24
IRQ_RAISE = 0x60
IRQ_ACK = 0x64
DMA_SRC = 0x80
DMA_DST = 0x88
DMA_COUNT = 0x90
DMA_CMD = 0x98

STATUS_COMPUTING = 0x01
STATUS_IRQ_FACTORIAL = 0x80

DMA_CMD_START = 0x01
DMA_CMD_TO_RAM = 0x02         # direction: device buffer -> RAM
DMA_CMD_IRQ = 0x04

IRQ_FACTORIAL = 0x001
IRQ_DMA = 0x100

DMA_BUFFER = 0x40000
DMA_BUFFER_SIZE = 4096
DEFAULT_DMA_BITS = 28


class Edu(PciDevice):
    def __init__(self, dma_bits: int = DEFAULT_DMA_BITS):
        super().__init__(EDU_VENDOR_ID, EDU_DEVICE_ID, EDU_CLASS, revision=EDU_REVISION,
                         subsystem_vendor_id=0x1AF4, subsystem_id=0x1100, interrupt_pin=1,
                         name="edu")
        self.dma_mask = (1 << dma_bits) - 1
        self.add_bar(0, BAR_SIZE, BarKind.MEM32, self)
        self.add_msi(1, addr64=True, maskable=False)
        self.liveness = 0
        self.factorial = 0
        self.status = 0
        self.irq_status = 0
        self.dma_src = self.dma_dst = self.dma_count = self.dma_cmd = 0
        self.buffer = bytearray(DMA_BUFFER_SIZE)
        self.dma_transfers = 0
        self.dma_bytes = 0
        self.dma_errors = 0

    # --- BAR0 ------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if not self._size_ok(offset, size):
            return (1 << (8 * size)) - 1
        with self.lock:
            value = {
                ID: EDU_ID,
                LIVENESS: ~self.liveness & 0xFFFF_FFFF,
                FACTORIAL: self.factorial,
                STATUS: self.status,
                IRQ_STATUS: self.irq_status,
                DMA_SRC: self.dma_src,
                DMA_DST: self.dma_dst,
                DMA_COUNT: self.dma_count,
                DMA_CMD: self.dma_cmd,
            }.get(offset, 0)
        return value & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if not self._size_ok(offset, size):
            return
        with self.lock:
            if offset == LIVENESS:
                self.liveness = value
            elif offset == FACTORIAL:
                self._factorial(value)
            elif offset == STATUS:
                self.status = (self.status & ~STATUS_IRQ_FACTORIAL) | (value & STATUS_IRQ_FACTORIAL)
            elif offset == IRQ_RAISE:
                self.raise_irq(value)
            elif offset == IRQ_ACK:
                self.ack_irq(value)
            elif offset == DMA_SRC:
                self.dma_src = value
            elif offset == DMA_DST:
                self.dma_dst = value
            elif offset == DMA_COUNT:
                self.dma_count = value
            elif offset == DMA_CMD:
                self.dma_cmd = value
                if value & DMA_CMD_START:
                    self._dma()

    _REGISTERS = ("liveness", "factorial", "status", "irq_status", "dma_src", "dma_dst",
                  "dma_count", "dma_cmd", "dma_transfers", "dma_bytes", "dma_errors")

    def device_snapshot(self) -> dict:
        return {**save_counters(self, self._REGISTERS), "buffer": pack(self.buffer)}

    def device_restore(self, state: dict) -> None:
        restore_counters(self, state, self._REGISTERS)
        self.buffer[:] = unpack(state["buffer"], DMA_BUFFER_SIZE)

    @staticmethod
    def _size_ok(offset: int, size: int) -> bool:
        return size == 4 or (size == 8 and offset >= DMA_SRC)

    # --- what the registers start ---------------------------------------------------

    def _factorial(self, n: int) -> None:
        result = 1
        for i in range(2, n + 1):
            result = (result * i) & 0xFFFF_FFFF
            if result == 0:          # every later product is 0 too (from 34! on)
                break
        self.factorial = result
        if self.status & STATUS_IRQ_FACTORIAL:
            self.raise_irq(IRQ_FACTORIAL)

    def raise_irq(self, bits: int) -> None:
        self.irq_status |= bits & 0xFFFF_FFFF
        if self.irq_status:
            self.signal(0)

    def ack_irq(self, bits: int) -> None:
        self.irq_status &= ~bits
        if not self.irq_status:
            self.lower_intx()

    def _dma(self) -> None:
        """One transfer between the device buffer and bus addresses, through self.dma."""
        count = self.dma_count
        to_ram = bool(self.dma_cmd & DMA_CMD_TO_RAM)
        device_addr = self.dma_src if to_ram else self.dma_dst
        bus_addr = (self.dma_dst if to_ram else self.dma_src) & self.dma_mask
        start = device_addr - DMA_BUFFER
        try:
            if not (0 <= start and start + count <= DMA_BUFFER_SIZE):
                raise DmaError(f"device range {device_addr:#x}+{count:#x} is outside the "
                               f"buffer", device_addr, not to_ram)
            if self.dma is None or not self.bus_master:
                raise DmaError("bus mastering is disabled", bus_addr, to_ram)
            if to_ram:
                self.dma.write(bus_addr, self.buffer[start:start + count])
            else:
                self.buffer[start:start + count] = self.dma.read(bus_addr, count)
            self.dma_bytes += count
        except DmaError as e:
            self.dma_errors += 1
            log.debug("edu %s: DMA failed: %s", self.address, e)
        self.dma_transfers += 1
        self.dma_cmd &= ~DMA_CMD_START
        if self.dma_cmd & DMA_CMD_IRQ:
            self.raise_irq(IRQ_DMA)
