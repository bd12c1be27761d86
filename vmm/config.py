"""MachineConfig: everything `akvm run` was asked for, validated before any KVM work.

Parsing errors raise ConfigError with one line meant for the user.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

MIN_MEMORY = 2 << 20            # room for the boot information and a tiny kernel
MAX_CPUS = 255                  # xAPIC ids in the MADT's type-0 entries are 8 bits


class ConfigError(ValueError):
    """Bad user input: the message is printed as is, and akvm exits with status 2."""


@dataclass
class Module:
    path: str
    args: str = ""


@dataclass
class DeviceSpec:
    """`KIND[,KEY=VALUE]...` from --device or --iommu; options are checked by the device's builder."""
    kind: str
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def take(self, key: str, default: str | None = None) -> str | None:
        """Consume one option; leftover keys are reported by check_consumed()."""
        return self.options.pop(key, default)

    def take_bool(self, key: str, default: bool = False) -> bool:
        value = self.take(key)
        if value is None:
            return default
        if value.lower() in ("on", "yes", "true", "1"):
            return True
        if value.lower() in ("off", "no", "false", "0"):
            return False
        raise ConfigError(f"{self.kind}: {key}={value}: expected on or off")

    def check_consumed(self) -> None:
        if self.options:
            key = next(iter(self.options))
            raise ConfigError(f"{self.kind}: unknown option '{key}' in '{self.text}'")


def parse_device(text: str, option: str = "--device") -> DeviceSpec:
    """'virtio-blk,file=disk.img,readonly=on' -> DeviceSpec('virtio-blk', {...})."""
    kind, *items = text.split(",")
    if not kind or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", kind):
        raise ConfigError(f"{option}: expected KIND[,KEY=VALUE]..., got '{text}'")
    options: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise ConfigError(f"{option} {kind}: expected KEY=VALUE, got '{item}'")
        if key in options:
            raise ConfigError(f"{option} {kind}: '{key}' given twice")
        options[key] = value
    return DeviceSpec(kind, options, text)


@dataclass
class MachineConfig:
    kernel: str | None = None
    cmdline: str = ""
    memory: int = 512 << 20
    cpus: int = 1
    serial: str = "stdio"
    modules: list[Module] = field(default_factory=list)
    devices: list[DeviceSpec] = field(default_factory=list)
    iommu: DeviceSpec | None = None
    stats: bool = False


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


def parse_module(text: str) -> Module:
    """'PATH[,ARGS]': the module's command line follows the first comma."""
    path, _, args = text.partition(",")
    if not path:
        raise ConfigError(f"--module: expected PATH[,ARGS], got '{text}'")
    return Module(path, args)
