"""The PCI host side: the host bridge function, the root bus 0, the two ways
the CPU reaches configuration space, BAR placement and INTx wiring.

- Configuration mechanism #1 (PCI 3.0 3.2.2.3.2): CONFIG_ADDRESS at 0xCF8
  latches a dword (bit 31 enable, bus 23:16, device 15:11, function 10:8,
  register 7:2); CONFIG_DATA at 0xCFC-0xCFF reaches that dword. The latch is
  one per machine, as in the chipset. A non-dword access to 0xCF8-0xCFB is
  ordinary I/O: it goes to `ConfigAddressPort.legacy_io` (where the 0xCF9
  reset control register lives).
- ECAM (PCIe 7.2.2): 1 MiB per bus, 32 KiB per device, 4 KiB per function.
- A function that is not there reads all ones and ignores writes.
  `attach_shortcut()` hands the latch and those answers to C
  (akvm.devices.pci.pciconf.PciConfShortcut): a bus scan then never enters Python.
- The root plays firmware: it places BARs in the PCI windows, enables their
  decoding, and routes each INTx pin to an IOAPIC GSI (level, active high),
  recording the routes for the MP table / ACPI.
"""
from __future__ import annotations

import threading
from typing import Callable, NamedTuple, Protocol

from akvm.devices.pci.config import (
    COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE, EXT_CONFIG_SPACE_SIZE, INTERRUPT_LINE,
)
from akvm.devices.pci.device import BarKind, MsiSink, PciAddress, PciDevice, PciError
from akvm.base.bus import Bus
from akvm.base.irq import IrqLine
from akvm.devices.pci.pciconf import CONFIG_ADDRESS, CONFIG_DATA

CONFIG_ADDRESS_ENABLE = 1 << 31
_CONFIG_ADDRESS_BITS = CONFIG_ADDRESS_ENABLE | 0x00FFFFFC   # 30:24 and 1:0 read as zero

ECAM_BUS_SIZE = 1 << 20

MAX_DEVICES = 32
MAX_FUNCTIONS = 8

PCI_VENDOR_ID_INTEL = 0x8086
Q35_MCH_DEVICE_ID = 0x29C0          # 82G33/G31/P35/P31 Express DRAM Controller
CLASS_BRIDGE_HOST = 0x060000        # base 06 (bridge), sub-class 00 (host), prog-if 00

DEFAULT_IO_WINDOW = (0xC000, 0x10000)
DEFAULT_INTX_GSIS = tuple(range(16, 24))   # the IOAPIC pins above the ISA IRQs

# MP / MADT INTI flags: polarity 1:0 (01 active high), trigger mode 3:2 (11 level)
INTI_ACTIVE_HIGH_LEVEL = 0x1 | 0x3 << 2


def _ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class PciHostBridge(PciDevice):
    """00:00.0, the host bridge: identity only, like a Q35 MCH with nothing to configure."""

    def __init__(self, device_id: int = Q35_MCH_DEVICE_ID):
        super().__init__(PCI_VENDOR_ID_INTEL, device_id, CLASS_BRIDGE_HOST, name="host-bridge")

    def device_snapshot(self) -> dict:
        return {}                       # all of it is configuration space

    def device_restore(self, state: dict) -> None:
        pass


class IntxRoute(NamedTuple):
    """A bus 0 device's INTx pin wired to an IOAPIC pin (same fields as
    akvm.tables.mptable.PciInterrupt; `pin` 0-3 = INTA#-INTD#)."""
    device: int
    pin: int
    ioapic_pin: int
    level_triggered: bool = True
    active_high: bool = True

    @property
    def inti_flags(self) -> int:
        return INTI_ACTIVE_HIGH_LEVEL


class BarAllocator:
    """Bump allocation of naturally aligned ranges inside [start, end)."""

    def __init__(self, start: int, end: int, min_align: int = 1):
        self.start, self.end, self.min_align = start, end, min_align
        self.next = start

    def allocate(self, size: int) -> int:
        align = max(size, self.min_align)
        base = (self.next + align - 1) & ~(align - 1)
        if base + size > self.end:
            raise PciError(f"no room for {size:#x} bytes in the PCI window "
                           f"[{self.start:#x}, {self.end:#x})")
        self.next = base + size
        return base


class _SharedIntx:
    """Wired-OR of the INTx outputs that share one GSI (level-triggered)."""

    def __init__(self, line: IrqLine):
        self.line = line
        self._asserted: set[int] = set()
        self._lock = threading.Lock()

    def set(self, source: int, level: bool) -> None:
        with self._lock:
            if level:
                self._asserted.add(source)
            else:
                self._asserted.discard(source)
            self.line.set_level(bool(self._asserted))


class _IntxInput(IrqLine):
    """What a function drives: its own level, ORed onto the shared GSI."""

    def __init__(self, shared: _SharedIntx):
        super().__init__(shared.line.gsi)
        self._shared = shared

    def _deliver(self, level: bool) -> None:
        self._shared.set(id(self), level)


class ConfigShortcut(Protocol):
    """The C side (akvm.devices.pci.pciconf.PciConfShortcut): holds the latch, and answers
    configuration accesses to functions it was not told are present."""
    latch: int

    def set_present(self, bdf: int, present: bool) -> None: ...


class ConfigAddressPort:
    """0xCF8-0xCFB: CONFIG_ADDRESS for dword accesses, ordinary I/O otherwise."""

    def __init__(self, root: "PciRoot"):
        self.root = root
        self.state_owner = root             # whose snapshot() covers this port
        self.legacy_io = Bus("pio@cf8")     # absolute port numbers, e.g. 0xCF9 reset control

    def read(self, offset: int, size: int) -> int:
        if offset == 0 and size == 4:
            with self.root.lock:
                return self.root.config_address
        return self.legacy_io.read(CONFIG_ADDRESS + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            with self.root.lock:
                self.root.config_address = value & _CONFIG_ADDRESS_BITS
            return
        self.legacy_io.write(CONFIG_ADDRESS + offset, size, value)


class ConfigDataPort:
    """0xCFC-0xCFF: the dword CONFIG_ADDRESS selects; byte lanes by port offset."""

    def __init__(self, root: "PciRoot"):
        self.root = root
        self.state_owner = root

    def _target(self, offset: int, size: int):
        latch = self.root.config_address
        if not latch & CONFIG_ADDRESS_ENABLE or offset + size > 4:
            return None
        return ((latch >> 16) & 0xFF, (latch >> 11) & 0x1F, (latch >> 8) & 0x7,
                (latch & 0xFC) + offset)

    def read(self, offset: int, size: int) -> int:
        with self.root.lock:
            t = self._target(offset, size)
            return _ones(size) if t is None else self.root.config_read(*t, size)

    def write(self, offset: int, size: int, value: int) -> None:
        with self.root.lock:
            t = self._target(offset, size)
            if t is not None:
                self.root.config_write(*t, size, value)


class EcamWindow:
    """The MMIO window: offset = bus << 20 | device << 15 | function << 12 | register."""

    def __init__(self, root: "PciRoot"):
        self.root = root
        self.state_owner = root

    @staticmethod
    def decode(offset: int) -> tuple[int, int, int, int]:
        """(bus, device, function, register) of an offset into the window."""
        return offset >> 20, (offset >> 15) & 0x1F, (offset >> 12) & 0x7, offset & 0xFFF

    def read(self, offset: int, size: int) -> int:
        if size == 8:       # a qword is two dword configuration accesses
            return self.read(offset, 4) | self.read(offset + 4, 4) << 32
        bus, dev, fn, reg = self.decode(offset)
        if reg + size > EXT_CONFIG_SPACE_SIZE:
            return _ones(size)
        with self.root.lock:
            return self.root.config_read(bus, dev, fn, reg, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 8:
            self.write(offset, 4, value & 0xFFFFFFFF)
            self.write(offset + 4, 4, value >> 32)
            return
        bus, dev, fn, reg = self.decode(offset)
        if reg + size > EXT_CONFIG_SPACE_SIZE:
            return
        with self.root.lock:
            self.root.config_write(bus, dev, fn, reg, size, value)


class PciRoot:
    """PCI segment 0 with bus 0: the functions on it and the ways to reach them.

    Register `config_address` (0xCF8, 4 ports) and `config_data` (0xCFC,
    4 ports) on the PIO bus and `ecam` on the MMIO bus; add() functions.
    `dma(requester_id)` makes each function's DmaSpace.
    """

    def __init__(self, pio_bus: Bus | None = None, mmio_bus: Bus | None = None, *,
                 mmio_window: tuple[int, int] | None = None,
                 io_window: tuple[int, int] = DEFAULT_IO_WINDOW,
                 irq: Callable[[int], IrqLine] | None = None,
                 msi: MsiSink | None = None,
                 dma: Callable[[int], object] | None = None,
                 intx_gsis: tuple[int, ...] = DEFAULT_INTX_GSIS):
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.msi = msi
        self.dma = dma                      # requester id -> the DmaSpace of that function
        self.lock = threading.RLock()
        self._config_address = 0            # the mechanism #1 latch (unless a shortcut holds it)
        self._shortcut: ConfigShortcut | None = None
        self.config_address_port = ConfigAddressPort(self)
        self.config_data_port = ConfigDataPort(self)
        self.ecam = EcamWindow(self)
        self._mmio_alloc = BarAllocator(*mmio_window, min_align=0x1000) if mmio_window else None
        self._io_alloc = BarAllocator(*io_window, min_align=4) if io_window else None
        self._irq_factory = irq or IrqLine
        self._intx_gsis = tuple(intx_gsis)
        self._shared_intx: dict[int, _SharedIntx] = {}
        self._functions: dict[tuple[int, int, int], PciDevice] = {}
        self._routes: list[IntxRoute] = []

    @property
    def config_address(self) -> int:
        return self._config_address if self._shortcut is None else self._shortcut.latch

    @config_address.setter
    def config_address(self, value: int) -> None:
        if self._shortcut is None:
            self._config_address = value
        else:
            self._shortcut.latch = value

    def attach_shortcut(self, shortcut: "ConfigShortcut") -> None:
        """Let `shortcut` hold the latch and answer for absent functions; it is
        told of every function added."""
        with self.lock:
            shortcut.latch = self._config_address
            for bdf in self._functions:
                shortcut.set_present(bdf[0] << 8 | bdf[1] << 3 | bdf[2], True)
            self._shortcut = shortcut

    # --- topology -------------------------------------------------------------

    def free_slot(self) -> int:
        for slot in range(MAX_DEVICES):
            if not any((0, slot, fn) in self._functions for fn in range(MAX_FUNCTIONS)):
                return slot
        raise PciError("PCI bus 0 is full (32 devices)")

    def add(self, device: PciDevice, slot: int | None = None, function: int = 0, *,
            assign_bars: bool = True) -> PciAddress:
        """Put `device` at 00:slot.function (the lowest free slot by default),
        wire its interrupts, and (as firmware) place and enable its BARs."""
        with self.lock:
            if slot is None:
                slot = self.free_slot()
            if not (0 <= slot < MAX_DEVICES and 0 <= function < MAX_FUNCTIONS):
                raise PciError(f"no PCI function 00:{slot:02x}.{function}")
            key = (0, slot, function)
            if key in self._functions:
                raise PciError(f"00:{slot:02x}.{function} is taken by "
                               f"{self._functions[key].name}")
            address = PciAddress(*key)
            irq = None
            pin = device.interrupt_pin
            if pin:
                gsi = self.intx_gsi(slot, pin)
                irq = _IntxInput(self._shared_line(gsi))
                device.config.set(INTERRUPT_LINE, 1, gsi)
                self._routes.append(IntxRoute(slot, pin - 1, gsi))
            dma = self.dma(slot << 3 | function) if self.dma is not None else None
            device.attach(address, self.pio_bus, self.mmio_bus, irq, self.msi, dma)
            self._functions[key] = device
            if self._shortcut is not None:
                self._shortcut.set_present(slot << 3 | function, True)
            self._update_multifunction(slot)
            if assign_bars:
                self._assign_bars(device)
            return address

    def _update_multifunction(self, slot: int) -> None:
        fn0 = self._functions.get((0, slot, 0))
        if fn0 is not None:
            many = any((0, slot, fn) in self._functions for fn in range(1, MAX_FUNCTIONS))
            fn0.set_multifunction(many)

    def _assign_bars(self, device: PciDevice) -> None:
        enable = 0
        for bar in device.bars:
            if bar is None:
                continue
            alloc = self._io_alloc if bar.kind is BarKind.IO else self._mmio_alloc
            if alloc is None:
                continue
            device.set_bar_address(bar.index, alloc.allocate(bar.size))
            enable |= COMMAND_IO_SPACE if bar.kind is BarKind.IO else COMMAND_MEMORY_SPACE
        if enable:
            device.set_command(enable)

    def snapshot(self) -> dict:
        """The mechanism #1 latch; the functions are saved one by one (PciDevice.snapshot)."""
        with self.lock:
            return {"config_address": self.config_address}

    def restore(self, state: dict) -> None:
        with self.lock:
            self.config_address = int(state["config_address"]) & _CONFIG_ADDRESS_BITS

    def device_at(self, bus: int, device: int, function: int) -> PciDevice | None:
        return self._functions.get((bus, device, function))

    def devices(self) -> list[tuple[PciAddress, PciDevice]]:
        return [(PciAddress(*k), d) for k, d in sorted(self._functions.items())]

    # --- interrupts -----------------------------------------------------------

    def intx_gsi(self, slot: int, pin: int) -> int:
        """The swizzle: INTA#-INTD# (pin 1-4) of slot s -> GSI table[(s + pin - 1) % n]."""
        return self._intx_gsis[(slot + pin - 1) % len(self._intx_gsis)]

    def _shared_line(self, gsi: int) -> _SharedIntx:
        if gsi not in self._shared_intx:
            self._shared_intx[gsi] = _SharedIntx(self._irq_factory(gsi))
        return self._shared_intx[gsi]

    def intx_routes(self) -> list[IntxRoute]:
        """Every wired INTx pin, for the MP table's I/O interrupt entries and ACPI."""
        return list(self._routes)

    # --- configuration space --------------------------------------------------

    def config_read(self, bus: int, device: int, function: int, register: int, size: int) -> int:
        dev = self._functions.get((bus, device, function))
        if dev is None:
            return _ones(size)
        return dev.config_read(register, size)

    def config_write(self, bus: int, device: int, function: int, register: int, size: int,
                     value: int) -> None:
        dev = self._functions.get((bus, device, function))
        if dev is not None:
            dev.config_write(register, size, value & _ones(size))

