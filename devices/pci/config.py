"""A PCI function's configuration space (PCI Local Bus 3.0 ch. 6, PCIe 4.0 7.2).

256 bytes of header and capability list plus the PCIe extended space up
to 4 KiB. What the guest may change is decided per bit, as in hardware:
`wmask` marks read/write bits, `w1cmask` marks write-1-to-clear status
bits; every other bit is read-only to the guest. The device model itself
uses get()/set(), which ignore the masks.
"""
from __future__ import annotations

CONFIG_SPACE_SIZE = 256            # what mechanism #1 reaches
EXT_CONFIG_SPACE_SIZE = 4096       # what ECAM reaches

# --- Type 0 header (PCI 3.0 6.1) ---------------------------------------------
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_CODE = 0x09                  # 3 bytes: programming interface, sub-class, base class
PROG_IF = 0x09
SUB_CLASS = 0x0A
BASE_CLASS = 0x0B
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BIST = 0x0F
BAR0 = 0x10                        # BAR0..BAR5 at 0x10..0x24
BAR_COUNT = 6
CARDBUS_CIS_POINTER = 0x28
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
EXPANSION_ROM_BASE = 0x30
CAP_PTR = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
MIN_GNT = 0x3E
MAX_LAT = 0x3F

HEADER_TYPE_NORMAL = 0x00
HEADER_TYPE_BRIDGE = 0x01
HEADER_TYPE_MULTI_FUNCTION = 0x80

# COMMAND bits
COMMAND_IO_SPACE = 1 << 0
COMMAND_MEMORY_SPACE = 1 << 1
COMMAND_BUS_MASTER = 1 << 2
COMMAND_PARITY_ERROR_RESPONSE = 1 << 6
COMMAND_SERR_ENABLE = 1 << 8
COMMAND_INTERRUPT_DISABLE = 1 << 10

# STATUS bits
STATUS_INTERRUPT_STATUS = 1 << 3
STATUS_CAPABILITIES_LIST = 1 << 4
STATUS_MASTER_DATA_PARITY_ERROR = 1 << 8
STATUS_SIGNALED_TARGET_ABORT = 1 << 11
STATUS_RECEIVED_TARGET_ABORT = 1 << 12
STATUS_RECEIVED_MASTER_ABORT = 1 << 13
STATUS_SIGNALED_SYSTEM_ERROR = 1 << 14
STATUS_DETECTED_PARITY_ERROR = 1 << 15
STATUS_W1C = (STATUS_MASTER_DATA_PARITY_ERROR | STATUS_SIGNALED_TARGET_ABORT |
              STATUS_RECEIVED_TARGET_ABORT | STATUS_RECEIVED_MASTER_ABORT |
              STATUS_SIGNALED_SYSTEM_ERROR | STATUS_DETECTED_PARITY_ERROR)

# BAR low bits (PCI 3.0 6.2.5.1)
BAR_SPACE_IO = 0x1
BAR_MEM_TYPE_64 = 0x4
BAR_MEM_PREFETCHABLE = 0x8

# --- Capabilities (PCI 3.0 6.7, Appendix H; PCIe 7.9) ------------------------
CAP_ID_PM = 0x01
CAP_ID_MSI = 0x05
CAP_ID_VENDOR = 0x09
CAP_ID_EXP = 0x10
CAP_ID_MSIX = 0x11

# PCI Express capability (PCIe 4.0 7.5.3): offsets inside it, version 2's length
PCIE_CAPABILITIES = 0x02           # version 3:0, device/port type 7:4
PCIE_DEVICE_CAPABILITIES = 0x04
PCIE_DEVICE_CONTROL = 0x08
PCIE_DEVICE_STATUS = 0x0A
PCIE_CAP_LENGTH = 0x3C
PCIE_CAP_VERSION = 2
PCIE_TYPE_ENDPOINT = 0x0
PCIE_TYPE_RC_INTEGRATED_ENDPOINT = 0x9
PCIE_DEVCAP_ROLE_BASED_ERROR_REPORTING = 1 << 15
PCIE_DEVCTL_RELAXED_ORDERING = 1 << 4
PCIE_DEVCTL_NO_SNOOP = 1 << 11
PCIE_DEVCTL_MAX_READ_REQUEST_512 = 2 << 12
# error reporting enables 3:0, relaxed ordering, max payload 7:5, extended tag, no snoop,
# max read request 14:12
PCIE_DEVCTL_WRITABLE = 0x79FF
PCIE_DEVSTS_W1C = 0x000F           # correctable, non-fatal, fatal, unsupported request detected

CAP_LIST_START = 0x40              # first byte after the type 0/1 header
EXT_CAP_START = 0x100
_MAX_CAPS = (CONFIG_SPACE_SIZE - CAP_LIST_START) // 4   # a walk longer than this loops


class ConfigSpaceError(ValueError):
    """A capability that does not fit: a mistake in a device model, not the guest."""


def _ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class ConfigSpace:
    """Bytes plus the write semantics of each bit, and a capability list builder."""

    def __init__(self, size: int = EXT_CONFIG_SPACE_SIZE):
        if size not in (CONFIG_SPACE_SIZE, EXT_CONFIG_SPACE_SIZE):
            raise ConfigSpaceError(f"config space is 256 or 4096 bytes, not {size}")
        self.data = bytearray(size)
        self.wmask = bytearray(size)
        self.w1cmask = bytearray(size)
        self._next_cap = CAP_LIST_START
        self._last_cap: int | None = None
        self._next_ext = EXT_CAP_START
        self._last_ext: int | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def _in_range(self, offset: int, size: int) -> bool:
        return size > 0 and 0 <= offset and offset + size <= len(self.data)

    # --- the guest's view -----------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest read; outside the space it reads all ones, like no device."""
        if not self._in_range(offset, size):
            return _ones(size)
        return int.from_bytes(self.data[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write: only writable bits change; 1s clear write-1-to-clear bits."""
        if not self._in_range(offset, size):
            return
        for i in range(size):
            o = offset + i
            b = (value >> (8 * i)) & 0xFF
            wm = self.wmask[o]
            v = (self.data[o] & ~wm) | (b & wm)
            self.data[o] = v & ~(b & self.w1cmask[o]) & 0xFF

    # --- the device model's view ---------------------------------------------

    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset:offset + size], "little")

    def set(self, offset: int, size: int, value: int) -> None:
        self.data[offset:offset + size] = (value & _ones(size)).to_bytes(size, "little")

    def set_wmask(self, offset: int, size: int, mask: int) -> None:
        self.wmask[offset:offset + size] = (mask & _ones(size)).to_bytes(size, "little")

    def set_w1cmask(self, offset: int, size: int, mask: int) -> None:
        self.w1cmask[offset:offset + size] = (mask & _ones(size)).to_bytes(size, "little")

    def set_bits(self, offset: int, size: int, bits: int, on: bool = True) -> None:
        value = self.get(offset, size)
        self.set(offset, size, value | bits if on else value & ~bits)

    # --- capability lists -----------------------------------------------------

    def place_next_capability(self, offset: int) -> None:
        """Put the next capability at `offset` (dword aligned, past the last one), where
        a model of real hardware has it: drivers and tools may know the offsets."""
        if offset % 4 or not self._next_cap <= offset < CONFIG_SPACE_SIZE:
            raise ConfigSpaceError(f"a capability cannot go at {offset:#x} "
                                   f"(next free offset {self._next_cap:#x})")
        self._next_cap = offset

    def add_capability(self, cap_id: int, length: int) -> int:
        """Append a capability of `length` bytes (ID and Next included) to the
        list CAP_PTR heads; returns its offset. Sets STATUS.Capabilities List."""
        offset = self._next_cap
        length = (max(length, 2) + 3) & ~3
        if offset + length > CONFIG_SPACE_SIZE:
            raise ConfigSpaceError(f"capability {cap_id:#x} ({length} bytes) does not fit "
                                   f"at {offset:#x}")
        self.set(offset, 1, cap_id)
        self.set(offset + 1, 1, 0)
        if self._last_cap is None:
            self.set(CAP_PTR, 1, offset)
            self.set_bits(STATUS, 2, STATUS_CAPABILITIES_LIST)
        else:
            self.set(self._last_cap + 1, 1, offset)
        self._last_cap = offset
        self._next_cap = offset + length
        return offset

    def capabilities(self) -> list[tuple[int, int]]:
        """(cap_id, offset) in list order, walked the way a guest walks it."""
        out: list[tuple[int, int]] = []
        if not self.get(STATUS, 2) & STATUS_CAPABILITIES_LIST:
            return out
        offset = self.get(CAP_PTR, 1) & ~3
        while offset and len(out) < _MAX_CAPS:
            out.append((self.get(offset, 1), offset))
            offset = self.get(offset + 1, 1) & ~3
        return out

    def find_capability(self, cap_id: int) -> int | None:
        return next((off for cid, off in self.capabilities() if cid == cap_id), None)

    def add_extended_capability(self, cap_id: int, version: int, length: int) -> int:
        """Append a PCIe extended capability (header: ID 15:0, version 19:16,
        next 31:20) at 0x100 and up; returns its offset."""
        if self.size < EXT_CONFIG_SPACE_SIZE:
            raise ConfigSpaceError("no extended configuration space")
        offset = self._next_ext
        length = (max(length, 4) + 3) & ~3
        if offset + length > EXT_CONFIG_SPACE_SIZE:
            raise ConfigSpaceError(f"extended capability {cap_id:#x} does not fit at {offset:#x}")
        self.set(offset, 4, (cap_id & 0xFFFF) | ((version & 0xF) << 16))
        if self._last_ext is not None:
            header = self.get(self._last_ext, 4)
            self.set(self._last_ext, 4, (header & 0xFFFFF) | (offset << 20))
        self._last_ext = offset
        self._next_ext = offset + length
        return offset

    def extended_capabilities(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        if self.size < EXT_CONFIG_SPACE_SIZE:
            return out
        offset = EXT_CAP_START
        while offset and len(out) < (EXT_CONFIG_SPACE_SIZE - EXT_CAP_START) // 4:
            header = self.get(offset, 4)
            if header == 0:
                break
            out.append((header & 0xFFFF, offset))
            offset = (header >> 20) & ~3
        return out
