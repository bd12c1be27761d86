"""The --device builders: a parsed DeviceSpec (akvm.devicetable) -> a device in a Machine.

A virtio device goes on the transport its spec names. On PCI it is a
modern virtio-pci function (1af4:1040+id); on MMIO it takes the next
virtio-mmio slot (layout.VIRTIO_MMIO_BASE, one page and one IOAPIC pin
each) and akvm prints the `virtio_mmio.device=` string the guest needs.
Each builder imports its device's modules: a machine (a restore's too)
imports only the kinds it has (socket only with a network backend).
Queue notifications are KVM ioeventfds when KVM has them; MSI-X vectors
are irqfds on MSI routes (Machine.msi_irqfds) when KVM has irqfds and GSI
routing, else KVM_SIGNAL_MSI. The virtio-mmio line stays KVM_IRQ_LINE.
"""
from __future__ import annotations

import sys

from akvm.devices.chardev import ChardevError, parse_serial
from akvm.base import kvm
from akvm.config import ConfigError
from akvm.base.exitcode import ExitCode
from akvm.base.irq import KvmIrqLine
from akvm.tables import layout

DEFAULT_MAC_PREFIX = "02:41:4b:56:4d"          # locally administered, "AKVM"


def _ioeventfd(machine):
    """The ioeventfd(fd, addr, length, datamatch, deassign) a transport registers
    notify addresses with, or None when KVM has no ioeventfds."""
    if not machine.system.check_extension(kvm.KVM_CAP_IOEVENTFD):
        return None

    def register(fd, addr, length, datamatch=None, deassign=False):
        machine.vm.ioeventfd(fd, addr, length, pio=False, datamatch=datamatch, deassign=deassign)
    return register


def _count(machine, kind: str) -> int:
    """How many devices of this kind the machine has so far."""
    return sum(1 for d in machine.virtio_devices if d.kind == kind)


def _name(machine, kind: str) -> str:
    return f"{kind}{_count(machine, kind)}"


def add_virtio(machine, device, spec) -> None:
    """Put `device` on the transport the spec asks for; the machine serves it from run()."""
    from akvm.base.dma import DirectDma
    from akvm.devices.virtio.mmio import VIRTIO_MMIO_SIZE, VirtioMmio, cmdline_string
    from akvm.devices.virtio.pci import VirtioPci
    machine.virtio_devices.append(device)
    if spec.values["transport"] == "pci":
        transport = VirtioPci(device, ioeventfd=_ioeventfd(machine), irqfd=machine.msi_irqfds())
        transport.fastpath = machine.fastpath   # a notify address may complete in C
        machine.pci.add(transport)
        return
    slot = sum(1 for d in machine.virtio_devices if isinstance(d.transport, VirtioMmio))
    if slot >= len(layout.VIRTIO_MMIO_GSIS):
        raise ConfigError(f"{spec.kind}: transport=mmio: at most "
                          f"{len(layout.VIRTIO_MMIO_GSIS)} virtio-mmio devices")
    base = layout.VIRTIO_MMIO_BASE + slot * layout.VIRTIO_MMIO_STRIDE
    gsi = layout.VIRTIO_MMIO_GSIS[slot]
    device.set_dma(DirectDma(machine.memory))
    mmio = VirtioMmio(device, KvmIrqLine(machine.vm, gsi), ioeventfd=_ioeventfd(machine))
    machine.mmio_bus.register(base, VIRTIO_MMIO_SIZE, mmio, device.name)
    mmio.placed(base)
    print(f"akvm: {device.name} on virtio-mmio at {base:#x}, IRQ {gsi}: add "
          f"'{cmdline_string(base, gsi)}' to the kernel command line", file=sys.stderr)


def build_edu(machine, spec) -> None:
    from akvm.devices.edu import Edu
    machine.pci.add(Edu(dma_bits=spec.values["dma_bits"]))


def build_ioat(machine, spec) -> None:
    from akvm.devices.ioat import IoatFunction
    from akvm.devices.pci import PciError
    slot = spec.values["slot"]
    for function in spec.values["functions"]:
        device = IoatFunction(function)
        try:
            machine.pci.add(device, slot=slot, function=function)
        except PciError as e:
            raise ConfigError(f"{spec.kind}: slot={slot}: {e} (give --device ioat before "
                              "devices that take the lowest free slot, or another slot=N)") from None
        machine.threaded_devices.append(device)


def build_blk(machine, spec) -> None:
    from akvm.devices.virtio.blk import VirtioBlk
    from akvm.devices.virtio.image import ImageError, RawImage
    path, readonly, serial = (spec.values[k] for k in ("file", "readonly", "serial"))
    try:
        image = RawImage(path, readonly)
    except ImageError as e:
        raise ConfigError(f"{spec.kind}: file={path}: {e}") from None
    add_virtio(machine, VirtioBlk(image, serial, name=_name(machine, spec.kind)), spec)


def build_rng(machine, spec) -> None:
    from akvm.devices.virtio.rng import VirtioRng
    add_virtio(machine, VirtioRng(name=_name(machine, spec.kind)), spec)


def build_console(machine, spec) -> None:
    from akvm.devices.virtio.console import VirtioConsole
    backend = spec.values["chardev"]
    if backend == "stdio" and machine.config.serial == "stdio":
        raise ConfigError(f"{spec.kind}: chardev=stdio: stdio is already the serial console; "
                          "give chardev=file:PATH|unix:PATH|none, or --serial other than stdio")
    try:
        chardev = parse_serial(backend)
    except ChardevError as e:
        raise ConfigError(f"{spec.kind}: chardev={backend}: "
                          f"{str(e).removeprefix('--serial: ')}") from None
    device = VirtioConsole(chardev, name=_name(machine, spec.kind),
                           on_quit=lambda: machine.stop(ExitCode.POWEROFF, "quit (Ctrl-A x)"))
    add_virtio(machine, device, spec)


def net_backend(spec):
    """The backend a NIC's spec names (devicetable.NET_OPTIONS): exactly one of them."""
    from akvm.devices.virtio.netback import (LoopbackBackend, NetBackendError, SocketBackend,
                                             TapBackend)
    v = spec.values
    tap, path, loopback, user = v["tap"], v["socket"], v["loopback"], v["net"] == "user"
    given = [k for k, on in (("net=user", user), ("tap", tap is not None),
                             ("socket", path is not None), ("loopback", loopback)) if on]
    if len(given) != 1:
        raise ConfigError(f"{spec.kind}: give exactly one backend: net=user, tap=NAME, "
                          f"socket=PATH or loopback=on (got {', '.join(given) or 'none'})")
    if not user and (v["hostfwd"] or v["restrict"]):
        raise ConfigError(f"{spec.kind}: hostfwd= and restrict= need net=user")
    try:
        if user:
            from akvm.devices.usernet import UserBackend
            return UserBackend(v["hostfwd"], v["restrict"], name=spec.kind)
        if tap is not None:
            return TapBackend(tap)
        if path is not None:
            return SocketBackend(path)
        return LoopbackBackend()
    except NetBackendError as e:
        key, value = (("net", "user") if user else ("tap", tap) if tap is not None
                      else ("socket", path))
        raise ConfigError(f"{spec.kind}: {key}={value}: {e}") from None


NIC_KINDS = ("virtio-net", "e1000")


def nic_mac(machine, spec) -> bytes:
    """mac= or the next default address (DEFAULT_MAC_PREFIX:NN, NN counting the NICs)."""
    from akvm.devices.virtio.net import parse_mac
    count = sum(1 for d in machine.virtio_devices + machine.threaded_devices
                if getattr(d, "kind", None) in NIC_KINDS)
    mac_text = spec.values["mac"] or f"{DEFAULT_MAC_PREFIX}:{count + 1:02x}"
    try:
        return parse_mac(mac_text)
    except ValueError as e:
        raise ConfigError(f"{spec.kind}: mac={mac_text}: {e}") from None


def build_net(machine, spec) -> None:
    from akvm.devices.virtio.net import VirtioNet
    mac = nic_mac(machine, spec)
    backend = net_backend(spec)
    try:
        add_virtio(machine, VirtioNet(backend, mac, name=_name(machine, spec.kind),
                                      tx_by_vcpu=spec.values["tx"] == "vcpu"), spec)
    except BaseException:
        backend.close()
        raise


def build_e1000(machine, spec) -> None:
    """An Intel 82540EM on the PCI bus; it has a thread of its own (Machine.threaded_devices)."""
    from akvm.devices.e1000 import E1000
    mac = nic_mac(machine, spec)
    backend = net_backend(spec)
    n = sum(1 for d in machine.threaded_devices if getattr(d, "kind", None) == "e1000")
    device = E1000(backend, mac, name=f"e1000-{n}")
    device.fastpath = machine.fastpath          # TDT and RDT writes complete in C
    try:
        machine.pci.add(device)
    except BaseException:
        backend.close()
        raise
    machine.threaded_devices.append(device)
