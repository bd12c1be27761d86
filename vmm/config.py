"""MachineConfig: everything `akvm run` was asked for, validated before any KVM work.

Parsing errors raise ConfigError with one line meant for the user.

Here and in every module a start imports, records are NamedTuples (or plain
classes), not dataclasses: importing dataclasses (and inspect with it) was
about 9 ms of each start, a restore's included (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

from akvm.base.errors import ConfigError

MIN_MEMORY = 2 << 20            # room for the boot information and a tiny kernel
MAX_CPUS = 255                  # xAPIC ids in the MADT's type-0 entries are 8 bits


class Module(NamedTuple):
    path: str
    args: str = ""


class DeviceSpec(NamedTuple):
    """A parsed `KIND[,KEY=VALUE]...` (akvm.devicetable.parse_device): every option
    of the kind in `values`, typed, with its default when not given."""
    kind: str
    values: dict[str, Any]
    text: str = ""
    given: frozenset[str] = frozenset()     # the keys the user wrote


class MachineConfig(NamedTuple):
    kernel: str | None = None
    cmdline: str = ""
    memory: int = 512 << 20
    cpus: int = 1
    serial: str = "stdio"
    modules: tuple[Module, ...] | list[Module] = ()
    devices: tuple[DeviceSpec, ...] | list[DeviceSpec] = ()
    iommu: DeviceSpec | None = None
    stats: bool = False
    gdb: tuple[str, int] | None = None      # --gdb: (host, port) of the GDB stub
    gdb_wait: bool = False                  # --gdb-wait: no vCPU runs before GDB says so


_SIZE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.IGNORECASE)
_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def format_memory(size: int) -> str:
    """parse_memory's inverse: 512M, 2G, 1T."""
    for shift, unit in ((40, "T"), (30, "G")):
        if size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return f"{size >> 20}M"


def parse_memory(text: str) -> int:
    """'512M', '1G', '1024' (MiB, as QEMU's -m) -> bytes; a whole number of MiB."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ConfigError(f"--memory: expected a size such as 512M or 2G, got '{text}'")
    size = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if size % (1 << 20):
        raise ConfigError(f"--memory: {text} is not a whole number of MiB")
    if size < MIN_MEMORY:
        raise ConfigError(f"--memory: {text} is too small (at least {MIN_MEMORY >> 20}M)")
    if size > 1 << 40:
        raise ConfigError(f"--memory: {text} is too large (at most 1T)")
    return size


def parse_cpus(text: str) -> int:
    try:
        n = int(text, 10)
    except ValueError:
        raise ConfigError(f"--cpus: expected a number, got '{text}'") from None
    if not 1 <= n <= MAX_CPUS:
        raise ConfigError(f"--cpus: {n} is out of range (1 to {MAX_CPUS})")
    return n


GDB_DEFAULT = "tcp::1234"
GDB_HOST = "127.0.0.1"


def parse_gdb(text: str) -> tuple[str, int]:
    """'tcp:[HOST]:PORT' -> (host, port); no host means 127.0.0.1, port 0 any free one."""
    m = re.fullmatch(r"tcp:(\[[0-9a-fA-F:]+\]|[^:\[\]]*):(\d{1,5})", text)
    if not m or int(m.group(2)) > 65535:
        raise ConfigError(f"--gdb: expected tcp:[HOST]:PORT, got '{text}'")
    return m.group(1).strip("[]") or GDB_HOST, int(m.group(2))


def parse_module(text: str) -> Module:
    """'PATH[,ARGS]': the module's command line follows the first comma."""
    path, _, args = text.partition(",")
    if not path:
        raise ConfigError(f"--module: expected PATH[,ARGS], got '{text}'")
    return Module(path, args)
