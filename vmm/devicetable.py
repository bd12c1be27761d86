"""Every --device and --iommu kind, its options and its builder: the one table.

Parsing (`parse_device`), the "known:" lists in errors and the device list
in `akvm run --help` all come from here. A builder ("module:function",
imported only when its kind is asked for) gets the parsed DeviceSpec, whose
`values` hold every option of the kind, typed, defaults filled in; it checks
only what needs the machine (files, sockets, slots).
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

from akvm.config import ConfigError, DeviceSpec

REQUIRED = object()         # an Option default: the option must be given


class Option(NamedTuple):
    key: str
    parse: Callable[[str], Any]         # raises ValueError with the reason
    default: Any = None                 # REQUIRED, None (absent), or the value when absent
    metavar: str = "VALUE"
    help: str = ""
    repeat: bool = False                # may be given several times: a tuple, () when absent


class Kind(NamedTuple):
    name: str
    builder: str                        # "module:function", called as function(machine, spec)
    help: str
    options: tuple[Option, ...] = ()

    def option(self, key: str) -> Option | None:
        return next((o for o in self.options if o.key == key), None)


# --- value parsers: each raises ValueError("expected ...") --------------------

def text(value: str) -> str:
    if not value:
        raise ValueError("expected a value")
    return value


def flag(value: str) -> bool:
    if value.lower() in ("on", "yes", "true", "1"):
        return True
    if value.lower() in ("off", "no", "false", "0"):
        return False
    raise ValueError("expected on or off")


def integer(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            n = int(value, 0)
        except ValueError:
            raise ValueError("expected a number") from None
        if not low <= n <= high:
            raise ValueError(f"expected {low} to {high}")
        return n
    return parse


def choice(*values: str, convert: Callable[[str], Any] = str) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        if value not in values:
            raise ValueError("expected " + " or ".join(values))
        return convert(value)
    return parse


def hostfwd(value: str):
    """A net=user forward (akvm.devices.usernet.HostFwd), parsed where it is defined."""
    from akvm.devices.usernet import parse_hostfwd
    return parse_hostfwd(value)


def functions(value: str) -> tuple[int, ...]:
    """'0-7', '0+3', '0-3+5': PCI function numbers, 0 among them (a multi-function
    device is found through function 0)."""
    out: set[int] = set()
    for part in value.split("+"):
        first, dash, last = part.partition("-")
        try:
            lo, hi = int(first), int(last if dash else first)
        except ValueError:
            raise ValueError("expected functions 0-7 as N, N-M or N+M...") from None
        if not 0 <= lo <= hi <= 7:
            raise ValueError("expected functions 0-7 as N, N-M or N+M...")
        out.update(range(lo, hi + 1))
    if 0 not in out:
        raise ValueError("function 0 must be among them (it is how the slot is found)")
    return tuple(sorted(out))


# --- the table -----------------------------------------------------------------

TRANSPORT = Option("transport", choice("pci", "mmio"), "pci", "pci|mmio",
                   "PCI function, or the next virtio-mmio slot")
VIRTIO = "akvm.builders"

# Every NIC's backends (akvm.builders.net_backend): exactly one of net=user, tap, socket, loopback.
NET_OPTIONS = (
    Option("net", choice("user"), None, "user",
           "user-mode networking (libslirp): DHCP 10.0.2.15, gateway 10.0.2.2 = host loopback"),
    Option("hostfwd", hostfwd, None, "tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT",
           "with net=user: forward a host port (HOSTADDR 127.0.0.1) to the guest", repeat=True),
    Option("restrict", flag, False, "on|off", "with net=user: the guest reaches only its forwards"),
    Option("tap", text, None, "NAME", "a TAP device"),
    Option("socket", text, None, "PATH", "a SOCK_SEQPACKET link to another akvm"),
    Option("loopback", flag, False, "on|off", "frames come back to the guest"),
    Option("mac", text, None, "02:..", "the MAC address"),
)

DEVICES: dict[str, Kind] = {k.name: k for k in (
    Kind("e1000", f"{VIRTIO}:build_e1000",
         "Intel 82540EM Gigabit Ethernet (8086:100e), PCI, INTx; backends as virtio-net's",
         NET_OPTIONS),
    Kind("edu", f"{VIRTIO}:build_edu", "QEMU's educational DMA device (1234:11e8), PCI", (
        Option("dma_bits", integer(1, 64), 28, "N", "bus address bits the device drives"),
    )),
    Kind("ioat", f"{VIRTIO}:build_ioat",
         "Intel I/OAT DMA engine (CBDMA 3.3, 8086:2021), one channel per function", (
        Option("slot", integer(1, 31), 4, "N", "the PCI slot"),
        Option("functions", functions, tuple(range(8)), "0-7|0+3|...",
               "which functions (channels) exist"),
    )),
    Kind("virtio-blk", f"{VIRTIO}:build_blk", "a raw disk image", (
        Option("file", text, REQUIRED, "PATH", "the image"),
        Option("readonly", flag, False, "on|off"),
        Option("serial", text, None, "ID", "GET_ID's answer, 20 bytes at most"),
        TRANSPORT,
    )),
    Kind("virtio-console", f"{VIRTIO}:build_console", "port 0 on a character backend", (
        Option("chardev", text, "stdio", "stdio|file:PATH|unix:PATH|none"),
        TRANSPORT,
    )),
    Kind("virtio-net", f"{VIRTIO}:build_net",
         "a NIC on one backend: user networking, tap, socket or loopback", (
        *NET_OPTIONS,
        Option("tx", choice("thread", "vcpu"), "thread", "thread|vcpu",
               "on PCI with net=user, who sends what a transmit notify announces: the "
               "backend's thread (its ioeventfd), or the vCPU itself (for a host with no "
               "CPU to spare)"),
        TRANSPORT,
    )),
    Kind("virtio-rng", f"{VIRTIO}:build_rng", "entropy from getrandom(2)", (TRANSPORT,)),
)}

IOMMUS: dict[str, Kind] = {k.name: k for k in (
    Kind("vtd", "akvm.machine:build_vtd", "Intel VT-d DMA remapping", (
        Option("aw", choice("39", "48", convert=int), 48, "39|48", "address width"),
        Option("cm", flag, False, "on|off", "caching mode"),
        Option("qi", flag, True, "on|off", "queued invalidation"),
        Option("pt", flag, True, "on|off", "pass-through context entries"),
        Option("psi", flag, True, "on|off", "page-selective invalidation"),
        Option("frcd", integer(1, 256), 8, "N", "fault recording registers"),
        Option("iotlb", integer(1, 1 << 20), 512, "N", "IOTLB entries"),
        Option("check", choice("off", "on", "stop"), "off", "off|on|stop",
               "the IOTLB coherence checker"),
    )),
)}

_KIND = re.compile(r"[a-z0-9][a-z0-9-]*")


def parse_device(text_: str, table: dict[str, Kind] = DEVICES, option: str = "--device",
                 noun: str = "device") -> DeviceSpec:
    """'virtio-blk,file=disk.img,readonly=on' -> DeviceSpec('virtio-blk', {...}) with
    every option of the kind typed and defaulted; bad input raises ConfigError."""
    name, *items = text_.split(",")
    if not name or not _KIND.fullmatch(name):
        raise ConfigError(f"{option}: expected KIND[,KEY=VALUE]..., got '{text_}'")
    kind = table.get(name)
    if kind is None:
        raise ConfigError(f"{option} {name}: no such {noun} (known: {', '.join(sorted(table))})")
    given: dict[str, Any] = {}          # str, or a list of them for a repeatable option
    for item in items:
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise ConfigError(f"{option} {name}: expected KEY=VALUE, got '{item}'")
        if kind.option(key) is None:
            known = ", ".join(o.key for o in kind.options) or "none"
            raise ConfigError(f"{name}: unknown option '{key}' in '{text_}' (known: {known})")
        if kind.option(key).repeat:
            given.setdefault(key, []).append(value)
            continue
        if key in given:
            raise ConfigError(f"{option} {name}: '{key}' given twice")
        given[key] = value
    values: dict[str, Any] = {}
    for opt in kind.options:
        if opt.key in given:
            values[opt.key] = (tuple(_parse(name, opt, v) for v in given[opt.key]) if opt.repeat
                               else _parse(name, opt, given[opt.key]))
        elif opt.repeat:
            values[opt.key] = ()
        elif opt.default is REQUIRED:
            raise ConfigError(f"{name}: {opt.key}={opt.metavar} is required "
                              f"(e.g. {name},{opt.key}={opt.metavar})")
        else:
            values[opt.key] = opt.default
    return DeviceSpec(name, values, text_, given=frozenset(given))


def _parse(name: str, opt: Option, value: str) -> Any:
    try:
        return opt.parse(value)
    except ValueError as e:
        raise ConfigError(f"{name}: {opt.key}={value}: {e}") from None


def parse_iommu(text_: str) -> DeviceSpec:
    return parse_device(text_, IOMMUS, "--iommu", "IOMMU")


def help_text() -> str:
    """The kinds and their options, for `akvm run --help`."""
    lines = []
    for title, table in (("--device KIND[,KEY=VALUE...]", DEVICES),
                         ("--iommu KIND[,KEY=VALUE...]", IOMMUS)):
        lines.append(f"{title}:" if not lines else f"\n{title}:")
        for kind in table.values():
            lines.append(f"  {kind.name}: {kind.help}")
            for o in kind.options:
                default = ("repeatable" if o.repeat else
                           "required" if o.default is REQUIRED else
                           "" if o.default is None else
                           f"default {_format(o.default)}")
                notes = "; ".join(n for n in (o.help, default) if n)
                lines.append(f"      {o.key}={o.metavar}" + (f"  ({notes})" if notes else ""))
    return "\n".join(lines)


def _format(value: Any) -> str:
    """A default as the command line would write it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple) and value and value == tuple(range(value[0], value[-1] + 1)):
        return f"{value[0]}-{value[-1]}"
    if isinstance(value, tuple):
        return "+".join(map(str, value))
    return str(value)
