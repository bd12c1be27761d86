"""PciDevice: a PCI function with a type 0 header (PCI Local Bus 3.0 ch. 6).

A device model subclasses PciDevice, declares its BARs and interrupt
capabilities in __init__, and is handed its buses, INTx line and MSI sink
by PciRoot.add() (attach()). From then on the guest drives it: BAR writes
and the COMMAND decode bits move each BAR's range on the PIO/MMIO bus,
and signal(vector) sends whatever interrupt the guest has enabled
(MSI-X, else MSI, else INTx).

MSI-X through irqfds: after use_irqfds(new_irqfd) each vector the guest
unmasks gets an irqfd (akvm.base.irqroutes.MsiIrqfd: an eventfd bound to a KVM
MSI route) that follows the vector's table entry, and signal() writes the
eventfd instead of handing the message to the MSI sink. A masked vector
still only sets its pending bit; a vector whose irqfd KVM refused, or whose
route could not follow the guest, goes through the MSI sink as before.
"""
from __future__ import annotations

import enum
import logging
import threading
from typing import Callable, NamedTuple

from akvm.devices.pci.config import (
    BAR0, BAR_COUNT, BAR_MEM_PREFETCHABLE, BAR_MEM_TYPE_64, BAR_SPACE_IO, CACHE_LINE_SIZE,
    CAP_ID_EXP, CAP_ID_MSI, CAP_ID_MSIX, COMMAND, COMMAND_BUS_MASTER, COMMAND_INTERRUPT_DISABLE,
    COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE, COMMAND_PARITY_ERROR_RESPONSE,
    COMMAND_SERR_ENABLE, DEVICE_ID, HEADER_TYPE, HEADER_TYPE_MULTI_FUNCTION,
    HEADER_TYPE_NORMAL, INTERRUPT_LINE, INTERRUPT_PIN, LATENCY_TIMER, PCIE_CAP_LENGTH,
    PCIE_CAP_VERSION, PCIE_CAPABILITIES, PCIE_DEVCAP_ROLE_BASED_ERROR_REPORTING,
    PCIE_DEVCTL_MAX_READ_REQUEST_512, PCIE_DEVCTL_NO_SNOOP, PCIE_DEVCTL_RELAXED_ORDERING,
    PCIE_DEVCTL_WRITABLE, PCIE_DEVICE_CAPABILITIES, PCIE_DEVICE_CONTROL, PCIE_DEVICE_STATUS,
    PCIE_DEVSTS_W1C, REVISION_ID, STATUS,
    STATUS_INTERRUPT_STATUS, STATUS_W1C, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID, VENDOR_ID,
    ConfigSpace,
)
from akvm.base.bus import BusError
from akvm.devices.state import (SnapshotUnsupported, pack, restore_counters, save_counters,
                                unpack)

log = logging.getLogger("akvm.pci")

IO_SPACE_END = 0x10000             # x86 port space; an I/O BAR above it decodes nothing
MsiSink = Callable[[int, int], object]   # msi(address, data)


class PciError(ValueError):
    """A device or topology built wrongly: a bug in the VMM, not guest input."""


class PciAddress(NamedTuple):
    bus: int
    device: int
    function: int

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.device:02x}.{self.function:x}"


class BarKind(enum.Enum):
    IO = "io"
    MEM32 = "mem32"
    MEM64 = "mem64"


class Bar:
    """One Base Address Register and the region it decodes.

    `handler` is the bus device behind the region (offsets relative to the
    BAR); `address` is where the region is decoded now, None when it is not.
    """

    def __init__(self, index: int, kind: BarKind, size: int, handler: object | None,
                 prefetchable: bool, on_move: Callable[[Bar, int | None, int | None], None]
                 | None, name: str):
        self.index, self.kind, self.size = index, kind, size
        self.handler, self.prefetchable, self.on_move, self.name = (handler, prefetchable,
                                                                    on_move, name)
        self.address: int | None = None
        self._range = None

    @property
    def is_io(self) -> bool:
        return self.kind is BarKind.IO

    @property
    def register(self) -> int:
        return BAR0 + 4 * self.index

    @property
    def flags(self) -> int:
        if self.is_io:
            return BAR_SPACE_IO
        return ((BAR_MEM_TYPE_64 if self.kind is BarKind.MEM64 else 0) |
                (BAR_MEM_PREFETCHABLE if self.prefetchable else 0))

    @property
    def address_mask(self) -> int:
        """The writable address bits: those above the size (sizing reads them back)."""
        low = 0x3 if self.is_io else 0xF
        width = 64 if self.kind is BarKind.MEM64 else 32
        return ~(self.size - 1) & ~low & ((1 << width) - 1)


# --- MSI (PCI 3.0 6.8.1) -----------------------------------------------------------

MSI_MESSAGE_CONTROL = 0x02          # offsets inside the capability
MSI_MESSAGE_ADDRESS = 0x04
MSI_CTRL_ENABLE = 1 << 0
MSI_CTRL_MMC_SHIFT = 1              # Multiple Message Capable, 3:1
MSI_CTRL_MME_SHIFT = 4              # Multiple Message Enable, 6:4
MSI_CTRL_64BIT = 1 << 7
MSI_CTRL_PER_VECTOR_MASK = 1 << 8


class Msi:
    """The MSI capability's registers and pending bits, inside a ConfigSpace."""

    def __init__(self, config: ConfigSpace, vectors: int, addr64: bool, maskable: bool):
        if vectors not in (1, 2, 4, 8, 16, 32):
            raise PciError(f"MSI vectors must be a power of two up to 32, not {vectors}")
        self.config = config
        self.vectors = vectors
        self.addr64 = addr64
        self.maskable = maskable
        data = 0x0C if addr64 else 0x08
        self.length = data + 2 + (10 if maskable else 0)
        self.offset = off = config.add_capability(CAP_ID_MSI, self.length)
        self.data_reg = off + data
        self.mask_reg = off + data + 4 if maskable else None       # Mask Bits
        self.pending_reg = off + data + 8 if maskable else None    # Pending Bits
        control = ((vectors.bit_length() - 1) << MSI_CTRL_MMC_SHIFT |
                   (MSI_CTRL_64BIT if addr64 else 0) |
                   (MSI_CTRL_PER_VECTOR_MASK if maskable else 0))
        config.set(off + MSI_MESSAGE_CONTROL, 2, control)
        config.set_wmask(off + MSI_MESSAGE_CONTROL, 2, MSI_CTRL_ENABLE | 0x7 << MSI_CTRL_MME_SHIFT)
        config.set_wmask(off + MSI_MESSAGE_ADDRESS, 4, 0xFFFFFFFC)
        if addr64:
            config.set_wmask(off + 0x08, 4, 0xFFFFFFFF)            # Message Upper Address
        config.set_wmask(self.data_reg, 2, 0xFFFF)
        if maskable:
            config.set_wmask(self.mask_reg, 4, (1 << vectors) - 1)

    @property
    def control(self) -> int:
        return self.config.get(self.offset + MSI_MESSAGE_CONTROL, 2)

    @property
    def enabled(self) -> bool:
        return bool(self.control & MSI_CTRL_ENABLE)

    @property
    def enabled_vectors(self) -> int:
        """Vectors the guest allocated (Multiple Message Enable), never above what we offer."""
        return min(1 << ((self.control >> MSI_CTRL_MME_SHIFT) & 0x7), self.vectors)

    def vector_for(self, vector: int) -> int:
        """A vector beyond those allocated shares the last one."""
        return min(max(vector, 0), self.enabled_vectors - 1)

    def message(self, vector: int) -> tuple[int, int]:
        address = self.config.get(self.offset + MSI_MESSAGE_ADDRESS, 4)
        if self.addr64:
            address |= self.config.get(self.offset + 0x08, 4) << 32
        n = self.enabled_vectors
        data = (self.config.get(self.data_reg, 2) & ~(n - 1)) | vector
        return address, data & 0xFFFF

    def masked(self, vector: int) -> bool:
        return self.maskable and bool(self.config.get(self.mask_reg, 4) >> vector & 1)

    def pending(self, vector: int) -> bool:
        return self.maskable and bool(self.config.get(self.pending_reg, 4) >> vector & 1)

    def set_pending(self, vector: int, on: bool) -> None:
        if self.maskable:
            self.config.set_bits(self.pending_reg, 4, 1 << vector, on)


# --- MSI-X (PCI 3.0 6.8.2) ---------------------------------------------------------

MSIX_MESSAGE_CONTROL = 0x02
MSIX_TABLE = 0x04                   # Table Offset / Table BIR
MSIX_PBA = 0x08                     # PBA Offset / PBA BIR
MSIX_CTRL_TABLE_SIZE = 0x7FF
MSIX_CTRL_FUNCTION_MASK = 1 << 14
MSIX_CTRL_ENABLE = 1 << 15
MSIX_ENTRY_SIZE = 16
MSIX_ENTRY_ADDR_LO, MSIX_ENTRY_ADDR_HI, MSIX_ENTRY_DATA, MSIX_ENTRY_VECTOR_CONTROL = 0, 4, 8, 12
MSIX_VECTOR_MASKED = 1 << 0


class MsiX:
    """The MSI-X capability, its vector table and Pending Bit Array."""

    def __init__(self, config: ConfigSpace, vectors: int, bar: int, table_offset: int,
                 pba_offset: int):
        if not 1 <= vectors <= 2048:
            raise PciError(f"MSI-X vectors must be 1..2048, not {vectors}")
        if table_offset % 8 or pba_offset % 8:
            raise PciError("MSI-X table and PBA offsets must be 8-byte aligned")
        self.config = config
        self.vectors = vectors
        self.bar = bar
        self.table_offset = table_offset
        self.table_size = vectors * MSIX_ENTRY_SIZE
        self.pba_offset = pba_offset
        self.pba_size = (vectors + 63) // 64 * 8
        self.offset = off = config.add_capability(CAP_ID_MSIX, 12)
        config.set(off + MSIX_MESSAGE_CONTROL, 2, vectors - 1)
        config.set_wmask(off + MSIX_MESSAGE_CONTROL, 2, MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK)
        config.set(off + MSIX_TABLE, 4, table_offset | bar)
        config.set(off + MSIX_PBA, 4, pba_offset | bar)
        self.table = bytearray(self.table_size)
        for v in range(vectors):
            self.table[v * MSIX_ENTRY_SIZE + MSIX_ENTRY_VECTOR_CONTROL] = MSIX_VECTOR_MASKED
        self.pba = bytearray(self.pba_size)

    @property
    def control(self) -> int:
        return self.config.get(self.offset + MSIX_MESSAGE_CONTROL, 2)

    @property
    def enabled(self) -> bool:
        return bool(self.control & MSIX_CTRL_ENABLE)

    @property
    def function_masked(self) -> bool:
        return bool(self.control & MSIX_CTRL_FUNCTION_MASK)

    def _entry(self, vector: int, field: int) -> int:
        o = vector * MSIX_ENTRY_SIZE + field
        return int.from_bytes(self.table[o:o + 4], "little")

    def message(self, vector: int) -> tuple[int, int]:
        address = (self._entry(vector, MSIX_ENTRY_ADDR_HI) << 32 |
                   self._entry(vector, MSIX_ENTRY_ADDR_LO) & ~0x3)
        return address, self._entry(vector, MSIX_ENTRY_DATA)

    def masked(self, vector: int) -> bool:
        return bool(self._entry(vector, MSIX_ENTRY_VECTOR_CONTROL) & MSIX_VECTOR_MASKED)

    def pending(self, vector: int) -> bool:
        return bool(self.pba[vector // 8] >> (vector % 8) & 1)

    def set_pending(self, vector: int, on: bool) -> None:
        if on:
            self.pba[vector // 8] |= 1 << (vector % 8)
        else:
            self.pba[vector // 8] &= ~(1 << (vector % 8)) & 0xFF

    def table_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > self.table_size:
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.table[offset:offset + size], "little")

    def table_write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > self.table_size:
            return
        value &= (1 << (8 * size)) - 1
        self.table[offset:offset + size] = value.to_bytes(size, "little")
        # Vector Control bits 31:1 are reserved: they read as zero.
        first, last = offset // MSIX_ENTRY_SIZE, (offset + size - 1) // MSIX_ENTRY_SIZE
        for v in range(first, last + 1):
            o = v * MSIX_ENTRY_SIZE + MSIX_ENTRY_VECTOR_CONTROL
            self.table[o:o + 4] = bytes((self.table[o] & MSIX_VECTOR_MASKED, 0, 0, 0))

    def pba_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > self.pba_size:
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.pba[offset:offset + size], "little")


class _BarWindow:
    """What a BAR registers on its bus: MSI-X structures first, then the device's handler."""

    def __init__(self, device: "PciDevice", bar: Bar):
        self.device = device
        self.state_owner = device           # whose snapshot() covers this window
        self.bar = bar

    def read(self, offset: int, size: int) -> int:
        msix = self.device.msix
        if msix is not None and msix.bar == self.bar.index:
            if msix.table_offset <= offset < msix.table_offset + msix.table_size:
                with self.device.lock:
                    return msix.table_read(offset - msix.table_offset, size)
            if msix.pba_offset <= offset < msix.pba_offset + msix.pba_size:
                with self.device.lock:
                    return msix.pba_read(offset - msix.pba_offset, size)
        if self.bar.handler is None:
            return 0
        return self.bar.handler.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        msix = self.device.msix
        if msix is not None and msix.bar == self.bar.index:
            if msix.table_offset <= offset < msix.table_offset + msix.table_size:
                with self.device.lock:
                    msix.table_write(offset - msix.table_offset, size, value)
                    self.device._sync_irqfds()
                    self.device._deliver_pending()
                return
            if msix.pba_offset <= offset < msix.pba_offset + msix.pba_size:
                return                                  # the PBA is read-only
        if self.bar.handler is not None:
            self.bar.handler.write(offset, size, value)


def _overlaps(offset: int, size: int, start: int, length: int) -> bool:
    return offset < start + length and start < offset + size


class PciDevice:
    """A type 0 function. Subclasses add BARs and capabilities before attach()."""

    def __init__(self, vendor_id: int, device_id: int, class_code: int, *, revision: int = 0,
                 subsystem_vendor_id: int = 0, subsystem_id: int = 0, interrupt_pin: int = 0,
                 name: str | None = None):
        if not 0 <= interrupt_pin <= 4:
            raise PciError(f"interrupt pin is 0 (none) or 1-4 (INTA#-INTD#), not {interrupt_pin}")
        self.name = name or type(self).__name__
        self.lock = threading.RLock()
        self.config = c = ConfigSpace()
        self.bars: list[Bar | None] = [None] * BAR_COUNT
        self.msi: Msi | None = None
        self.msix: MsiX | None = None
        self.address: PciAddress | None = None
        self.pio_bus = None
        self.mmio_bus = None
        self.irq = None
        self._msi_sink: MsiSink | None = None
        self.dma = None                    # its DmaSpace (akvm.iommu.dmaspace), given by attach()
        self.intx_asserted = False         # the function's internal INTx request
        self.msi_sent = 0
        self.msi_dropped = 0
        self.irqfd_sent = 0                # of msi_sent, those sent by writing an irqfd
        self.intx_signals = 0              # signal() calls that asserted INTx
        self._new_irqfd = None             # use_irqfds()
        self._irqfds: dict[int, object] = {}    # MSI-X vector -> its irqfd
        self._irqfd_failed: set[int] = set()    # vectors KVM would not give an irqfd

        c.set(VENDOR_ID, 2, vendor_id)
        c.set(DEVICE_ID, 2, device_id)
        c.set(REVISION_ID, 4, (class_code & 0xFFFFFF) << 8 | (revision & 0xFF))
        c.set(HEADER_TYPE, 1, HEADER_TYPE_NORMAL)
        c.set(SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        c.set(SUBSYSTEM_ID, 2, subsystem_id)
        c.set(INTERRUPT_PIN, 1, interrupt_pin)
        c.set_wmask(COMMAND, 2, COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER |
                    COMMAND_PARITY_ERROR_RESPONSE | COMMAND_SERR_ENABLE |
                    COMMAND_INTERRUPT_DISABLE)
        c.set_w1cmask(STATUS, 2, STATUS_W1C)
        c.set_wmask(CACHE_LINE_SIZE, 1, 0xFF)
        c.set_wmask(LATENCY_TIMER, 1, 0xFF)
        c.set_wmask(INTERRUPT_LINE, 1, 0xFF)

    # --- identity -------------------------------------------------------------

    @property
    def vendor_id(self) -> int:
        return self.config.get(VENDOR_ID, 2)

    @property
    def device_id(self) -> int:
        return self.config.get(DEVICE_ID, 2)

    @property
    def class_code(self) -> int:
        return self.config.get(REVISION_ID, 4) >> 8

    @property
    def requester_id(self) -> int:
        """bus << 8 | device << 3 | function: the source id of its DMA and MSIs."""
        bus, device, function = self.address
        return bus << 8 | device << 3 | function

    @property
    def interrupt_pin(self) -> int:
        return self.config.get(INTERRUPT_PIN, 1)

    @property
    def command(self) -> int:
        return self.config.get(COMMAND, 2)

    @property
    def bus_master(self) -> bool:
        """Bus Master Enable: without it the function may not DMA nor send MSIs."""
        return bool(self.command & COMMAND_BUS_MASTER)

    def set_multifunction(self, on: bool) -> None:
        self.config.set_bits(HEADER_TYPE, 1, HEADER_TYPE_MULTI_FUNCTION, on)

    # --- building -------------------------------------------------------------

    def add_bar(self, index: int, size: int, kind: BarKind = BarKind.MEM32, handler=None, *,
                prefetchable: bool = False, on_move=None, name: str | None = None) -> Bar:
        """Declare BAR `index` (a 64-bit BAR takes index+1 too) decoding `size` bytes."""
        if self.address is not None:
            raise PciError(f"{self.name}: BARs are declared before the device is attached")
        span = 2 if kind is BarKind.MEM64 else 1
        if not (0 <= index and index + span <= BAR_COUNT):
            raise PciError(f"{self.name}: BAR{index} ({kind.value}) does not fit in BAR0-5")
        if any(self._bar_slot_used(i) for i in range(index, index + span)):
            raise PciError(f"{self.name}: BAR{index} is already used")
        if kind is BarKind.IO:
            minimum, maximum = 4, 256
        else:
            minimum, maximum = 16, 1 << (31 if span == 1 else 63)
        if size & (size - 1) or not minimum <= size <= maximum:
            raise PciError(f"{self.name}: BAR{index} size {size:#x} is not a power of two "
                           f"in {minimum:#x}..{maximum:#x}")
        if prefetchable and kind is BarKind.IO:
            raise PciError(f"{self.name}: I/O BAR{index} cannot be prefetchable")
        bar = Bar(index, kind, size, handler, prefetchable, on_move,
                  name or f"{self.name}.bar{index}")
        self.bars[index] = bar
        c = self.config
        mask = bar.address_mask
        c.set(bar.register, 4, bar.flags)
        c.set_wmask(bar.register, 4, mask & 0xFFFFFFFF)
        if span == 2:
            c.set(bar.register + 4, 4, 0)
            c.set_wmask(bar.register + 4, 4, mask >> 32)
        return bar

    def _bar_slot_used(self, i: int) -> bool:
        if self.bars[i] is not None:
            return True
        prev = self.bars[i - 1] if i > 0 else None
        return prev is not None and prev.kind is BarKind.MEM64

    def add_msi(self, vectors: int = 1, *, addr64: bool = True, maskable: bool = False) -> Msi:
        if self.msi is not None:
            raise PciError(f"{self.name}: MSI capability added twice")
        self.msi = Msi(self.config, vectors, addr64, maskable)
        return self.msi

    def add_msix(self, vectors: int, bar: int, table_offset: int = 0,
                 pba_offset: int | None = None) -> MsiX:
        """MSI-X with its table and PBA inside memory BAR `bar` (declared first)."""
        if self.msix is not None:
            raise PciError(f"{self.name}: MSI-X capability added twice")
        b = self.bars[bar] if 0 <= bar < BAR_COUNT else None
        if b is None or b.is_io:
            raise PciError(f"{self.name}: MSI-X needs memory BAR{bar} declared first")
        if pba_offset is None:
            pba_offset = (table_offset + vectors * MSIX_ENTRY_SIZE + 0xFFF) & ~0xFFF
        msix = MsiX(self.config, vectors, bar, table_offset, pba_offset)
        for start, length in ((table_offset, msix.table_size), (pba_offset, msix.pba_size)):
            if start + length > b.size:
                raise PciError(f"{self.name}: MSI-X structures do not fit in BAR{bar} "
                               f"({b.size:#x} bytes)")
        if _overlaps(table_offset, msix.table_size, pba_offset, msix.pba_size):
            raise PciError(f"{self.name}: MSI-X table and PBA overlap")
        self.msix = msix
        return msix

    def add_pcie(self, port_type: int) -> int:
        """A PCI Express capability (version 2) of that device/port type; returns its
        offset. Device Control starts as after reset (relaxed ordering and no snoop
        enabled, 512-byte reads) and is the driver's; Device Status bits are RW1C."""
        c = self.config
        off = c.add_capability(CAP_ID_EXP, PCIE_CAP_LENGTH)
        c.set(off + PCIE_CAPABILITIES, 2, PCIE_CAP_VERSION | (port_type & 0xF) << 4)
        c.set(off + PCIE_DEVICE_CAPABILITIES, 4, PCIE_DEVCAP_ROLE_BASED_ERROR_REPORTING)
        c.set(off + PCIE_DEVICE_CONTROL, 2, PCIE_DEVCTL_RELAXED_ORDERING | PCIE_DEVCTL_NO_SNOOP |
              PCIE_DEVCTL_MAX_READ_REQUEST_512)
        c.set_wmask(off + PCIE_DEVICE_CONTROL, 2, PCIE_DEVCTL_WRITABLE)
        c.set_w1cmask(off + PCIE_DEVICE_STATUS, 2, PCIE_DEVSTS_W1C)
        return off

    def attach(self, address: PciAddress, pio_bus=None, mmio_bus=None, irq=None,
               msi: MsiSink | None = None, dma=None) -> None:
        """Connect the function to the machine: called once, by PciRoot.add().
        `dma` is the DmaSpace all its bus-master accesses go through."""
        if self.address is not None:
            raise PciError(f"{self.name} is already attached at {self.address}")
        self.address = PciAddress(*address)
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.irq = irq
        self._msi_sink = msi
        self.dma = dma
        with self.lock:
            self._update_bars()

    # --- configuration space accesses (from PciRoot) --------------------------

    def config_read(self, offset: int, size: int) -> int:
        with self.lock:
            return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            self.config.write(offset, size, value)
            if _overlaps(offset, size, COMMAND, 2) or \
                    _overlaps(offset, size, BAR0, 4 * BAR_COUNT):
                self._update_bars()
            if self.msix is not None and _overlaps(offset, size, self.msix.offset, 4):
                self._sync_irqfds()
            self._deliver_pending()
            self._update_intx()
            self.on_config_write(offset, size)

    def on_config_write(self, offset: int, size: int) -> None:
        """Hook for device-specific registers; runs with self.lock held."""

    # --- BAR decoding ---------------------------------------------------------

    def bar_value(self, index: int) -> int:
        """The address programmed into BAR `index` (both halves of a 64-bit BAR)."""
        bar = self.bars[index]
        value = self.config.get(bar.register, 4)
        if bar.kind is BarKind.MEM64:
            value |= self.config.get(bar.register + 4, 4) << 32
        return value & bar.address_mask

    def set_bar_address(self, index: int, address: int) -> None:
        """Program a BAR as firmware would (no masks); decoding follows COMMAND."""
        bar = self.bars[index]
        with self.lock:
            address &= bar.address_mask
            self.config.set(bar.register, 4, (address & 0xFFFFFFFF) | bar.flags)
            if bar.kind is BarKind.MEM64:
                self.config.set(bar.register + 4, 4, address >> 32)
            self._update_bars()

    def set_command(self, bits: int, on: bool = True) -> None:
        with self.lock:
            self.config.set_bits(COMMAND, 2, bits, on)
            self._update_bars()
            self._update_intx()

    def bar_address(self, index: int) -> int | None:
        bar = self.bars[index]
        return None if bar is None else bar.address

    def _decoded_address(self, bar: Bar) -> int | None:
        """Where the BAR should decode now, or None: decode off, unassigned or unreachable."""
        enable = COMMAND_IO_SPACE if bar.is_io else COMMAND_MEMORY_SPACE
        if not self.command & enable:
            return None
        address = self.bar_value(bar.index)
        if address == 0:                  # never assigned: 0 is nobody's BAR
            return None
        if bar.is_io and address + bar.size > IO_SPACE_END:
            return None
        return address

    def _update_bars(self) -> None:
        """Move every BAR whose decoded address changed; call its relocation hooks."""
        if self.address is None:
            return
        for bar in self.bars:
            if bar is None:
                continue
            new = self._decoded_address(bar)
            if new == bar.address:
                continue
            old = bar.address
            bus = self.pio_bus if bar.is_io else self.mmio_bus
            if bar._range is not None:
                bus.unregister(bar._range)
                bar._range = None
            bar.address = None
            if new is not None and bus is not None:
                try:
                    bar._range = bus.register(new, bar.size, _BarWindow(self, bar), bar.name)
                    bar.address = new
                except BusError as e:
                    # Hardware would decode in conflict; we leave this BAR silent.
                    log.warning("%s %s: BAR%d not decoded: %s", self.address, self.name,
                                bar.index, e)
            if bar.address != old:
                self.bar_moved(bar, old, bar.address)

    def bar_moved(self, bar: Bar, old: int | None, new: int | None) -> None:
        """Relocation hook (e.g. to move ioeventfds); runs with self.lock held."""
        if bar.on_move is not None:
            bar.on_move(bar, old, new)

    # --- snapshots (akvm.devices.state) -----------------------------------------

    _COUNTERS = ("msi_sent", "msi_dropped", "irqfd_sent", "intx_signals")

    def snapshot(self) -> dict:
        """The function's configuration space, MSI-X table and PBA, INTx request and
        counters, and under "device" what the model adds (device_snapshot())."""
        with self.lock:
            state = {"config": pack(self.config.data), "intx_asserted": self.intx_asserted,
                     **save_counters(self, self._COUNTERS)}
            if self.msix is not None:
                state["msix_table"] = pack(self.msix.table)
                state["msix_pba"] = pack(self.msix.pba)
            state["device"] = self.device_snapshot()
            return state

    def restore(self, state: dict) -> None:
        """BARs decode where the snapshot had them (relocation hooks run), unmasked MSI-X
        vectors get their irqfds again, and the INTx line is at its level."""
        with self.lock:
            self.config.data[:] = unpack(state["config"], self.config.size)
            if self.msix is not None:
                self.msix.table[:] = unpack(state["msix_table"], self.msix.table_size)
                self.msix.pba[:] = unpack(state["msix_pba"], self.msix.pba_size)
            self.intx_asserted = bool(state["intx_asserted"])
            restore_counters(self, state, self._COUNTERS)
            self._update_bars()
            self._sync_irqfds()
            self._update_intx()
            self.device_restore(state["device"])

    def device_snapshot(self) -> dict:
        """The model's own state (registers, buffers), beyond what every function has."""
        raise SnapshotUnsupported(f"PCI function {self.address} {self.name} "
                                  f"({type(self).__name__}) has no snapshot support")

    def device_restore(self, state: dict) -> None:
        """device_snapshot()'s inverse; runs with self.lock held."""
        raise SnapshotUnsupported(f"PCI function {self.address} {self.name} "
                                  f"({type(self).__name__}) has no snapshot support")

    # --- interrupts -----------------------------------------------------------

    @property
    def msi_enabled(self) -> bool:
        return self.msi is not None and self.msi.enabled

    @property
    def msix_enabled(self) -> bool:
        return self.msix is not None and self.msix.enabled

    def signal(self, vector: int = 0) -> bool:
        """Interrupt the guest the way it has asked: MSI-X, else MSI, else INTx.

        Returns whether a message went out or the INTx line is asserted; a
        masked vector is left pending and sent when it is unmasked. INTx is
        level-triggered: the model calls lower_intx() when the guest has
        acknowledged the interrupt in the device's own registers.
        """
        with self.lock:
            if self.msix_enabled:
                msix = self.msix
                if not 0 <= vector < msix.vectors:
                    raise PciError(f"{self.name}: MSI-X vector {vector} of {msix.vectors}")
                if msix.function_masked or msix.masked(vector):
                    msix.set_pending(vector, True)
                    return False
                return self._send_msix(vector)
            if self.msi_enabled:
                msi = self.msi
                vector = msi.vector_for(vector)
                if msi.masked(vector):
                    msi.set_pending(vector, True)
                    return False
                return self._send(*msi.message(vector))
            self.intx_asserted = True
            self.intx_signals += 1
            self._update_intx()
            return self._intx_output()

    def lower_intx(self) -> None:
        with self.lock:
            self.intx_asserted = False
            self._update_intx()

    def _send(self, address: int, data: int) -> bool:
        """One MSI memory write. Without Bus Master Enable the function cannot make it."""
        if self._msi_sink is None or not self.bus_master:
            self.msi_dropped += 1
            return False
        try:
            self._msi_sink(address, data)
        except OSError as e:          # e.g. KVM refusing a message the guest programmed
            log.warning("%s %s: MSI %#x/%#x not delivered: %s", self.address, self.name,
                        address, data, e)
            self.msi_dropped += 1
            return False
        self.msi_sent += 1
        return True

    # --- MSI-X through irqfds ---------------------------------------------------

    def use_irqfds(self, new_irqfd) -> None:
        """Send MSI-X messages through irqfds. new_irqfd(address, data) returns an object
        with `message`, retarget(address, data) and trigger() (akvm.base.irqroutes.MsiIrqfd),
        or raises OSError; it is called for a vector when the guest first unmasks it.
        Whoever made them closes them, after the device has stopped signalling."""
        self._new_irqfd = new_irqfd

    def _sync_irqfds(self) -> None:
        """Make every usable MSI-X vector's irqfd carry its table entry's message (lock held).

        Only unmasked vectors of an enabled, unmasked function are looked at: a driver
        writes an entry while it is masked, so the route changes once, at the unmask."""
        msix = self.msix
        if self._new_irqfd is None or msix is None or not msix.enabled or msix.function_masked:
            return
        for v in range(msix.vectors):
            if msix.masked(v) or v in self._irqfd_failed:
                continue
            message = msix.message(v)
            irqfd = self._irqfds.get(v)
            try:
                if irqfd is None:
                    self._irqfds[v] = self._new_irqfd(*message)
                elif irqfd.message != message:
                    irqfd.retarget(*message)
            except OSError as e:        # this vector keeps the MSI sink
                self._irqfd_failed.add(v)
                log.warning("%s %s: MSI-X vector %d: no irqfd (%s); sending by ioctl",
                            self.address, self.name, v, e)

    def _send_msix(self, vector: int) -> bool:
        """Send an unmasked MSI-X vector: its irqfd when it carries the message, else the sink."""
        message = self.msix.message(vector)
        irqfd = self._irqfds.get(vector)
        if irqfd is None or irqfd.message != message:
            return self._send(*message)
        if not self.bus_master:
            self.msi_dropped += 1
            return False
        try:
            irqfd.trigger()
        except OSError as e:
            log.warning("%s %s: MSI-X vector %d: irqfd write failed: %s", self.address,
                        self.name, vector, e)
            return self._send(*message)
        self.msi_sent += 1
        self.irqfd_sent += 1
        return True

    def _deliver_pending(self) -> None:
        """Send what is pending on vectors that are now unmasked (PCI 3.0 6.8.2.9)."""
        with self.lock:
            msix = self.msix
            if msix is not None and msix.enabled and not msix.function_masked:
                for v in range(msix.vectors):
                    if msix.pending(v) and not msix.masked(v):
                        msix.set_pending(v, False)
                        self._send_msix(v)
            msi = self.msi
            if msi is not None and msi.enabled and msi.maskable and not self.msix_enabled:
                for v in range(msi.enabled_vectors):
                    if msi.pending(v) and not msi.masked(v):
                        msi.set_pending(v, False)
                        self._send(*msi.message(v))

    def _intx_output(self) -> bool:
        return (self.intx_asserted and not self.command & COMMAND_INTERRUPT_DISABLE and
                not self.msi_enabled and not self.msix_enabled)

    def _update_intx(self) -> None:
        """STATUS.Interrupt Status shows the request; the pin shows it unless disabled."""
        self.config.set_bits(STATUS, 2, STATUS_INTERRUPT_STATUS, self.intx_asserted)
        if self.irq is not None and self.interrupt_pin:
            self.irq.set_level(self._intx_output())
