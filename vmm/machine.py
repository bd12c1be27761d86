"""Machine: builds a VM from a MachineConfig, runs it, reports how it ended.

build() checks what can fail on user input (kernel file, serial backend,
/dev/kvm, the devices, then the kernel's format) before any vCPU runs, so
that a mistake costs one clear line, and it closes what it opened. The
kernel and the tables are built meanwhile on another CPU (akvm.boot.image).
run() starts the vCPU threads and waits for the first stop.
"""
from __future__ import annotations

import importlib
import logging
import signal
import threading

from akvm.devices.acpi_pm import AcpiPm
from akvm.devices.chardev import ChardevError, parse_serial
from akvm.devices.cmos import Cmos
from akvm.devices.debugport import DebugPort, DebugPortShortcut
from akvm.devices.i8042 import I8042, ResetControl
from akvm.devices.pci.host import CONFIG_ADDRESS, CONFIG_DATA, PciHostBridge, PciRoot
from akvm.devices.uart import Uart16550
from akvm.base import kvm
from akvm.boot.image import BootImage, DeviceFacts
from akvm.base.bus import Bus
from akvm.base.dma import DirectDma
from akvm.config import ConfigError, MachineConfig, format_memory
from akvm.devicetable import DEVICES, IOMMUS
from akvm.base.runloop import MMIO, FastPath
from akvm.devices.pci.pciconf import PciConfShortcut
from akvm.devices.serial import SerialShortcut
from akvm.vcpu.cpu import KICK_SIGNAL, VcpuThread, configure_cpuid, enter_protected_mode
from akvm.base.exitcode import ExitCode
from akvm.base.irq import KvmIrqLine
from akvm.base.memory import GuestMemory, PCI_HOLE_START
from akvm.base.native import lib
from akvm.tables import layout

log = logging.getLogger("akvm.machine")

COM1_PORT, COM1_IRQ = 0x3F8, 4
# Addresses KVM needs on Intel VMX hosts (real-mode TSS, identity page table); unused elsewhere.
TSS_ADDR = 0xFFFB_D000
IDENTITY_MAP_ADDR = 0xFFFB_C000


class UserError(ConfigError):
    """Bad user input found while building the machine (exit status 2)."""


def builder(kind):
    """The function a devicetable.Kind names, imported now."""
    module, _, name = kind.builder.partition(":")
    return getattr(importlib.import_module(module), name)


def build_vtd(machine: "Machine", spec) -> None:
    """--iommu vtd[,...]: the remapping unit's registers at VTD_BASE (the DMAR says so)."""
    from akvm.iommu.vtd import VtdConfig, VtdIommu
    v = spec.values
    config = VtdConfig(aw=v["aw"], cm=v["cm"], qi=v["qi"], pt=v["pt"], psi=v["psi"],
                       fault_records=v["frcd"], iotlb_entries=v["iotlb"], check=v["check"])
    iommu = VtdIommu(machine.memory, machine.vm.signal_msi, config,
                     on_stale=machine.iommu_stale, base=layout.VTD_BASE)
    machine.mmio_bus.register(layout.VTD_BASE, layout.VTD_SIZE, iommu, "vtd")
    if iommu.doorbell is not None:
        machine.fastpath.add(MMIO, layout.VTD_BASE, layout.VTD_SIZE, "akvm_vtd_door_complete",
                             iommu.doorbell)
    machine.iommu = iommu


def open_kvm() -> kvm.System:
    try:
        return kvm.System()
    except FileNotFoundError:
        raise UserError("/dev/kvm does not exist: this host has no KVM "
                        "(load the kvm module, or enable virtualization)") from None
    except PermissionError:
        raise UserError("/dev/kvm: permission denied (run as a member of the kvm group)") from None
    except OSError as e:
        raise UserError(f"/dev/kvm: {e.strerror or e}") from None


class LazyCompleter:
    """akvm.vcpu.complete, loaded at the first emulation failure.

    Most guests never have one, and importing iced-x86 and reading the host's
    XSAVE layout would cost a sixth of a guest/ boot.
    """

    def __init__(self, memory: GuestMemory, supported_cpuid):
        self._args = (memory, supported_cpuid)
        self._completer = None
        self._lock = threading.Lock()

    def __call__(self, thread) -> bool:
        with self._lock:
            if self._completer is None:
                from akvm.vcpu.complete import Completer
                self._completer = Completer.for_host(*self._args)
        return self._completer(thread)

    @property
    def counts(self) -> dict:
        return self._completer.counts if self._completer else {}

    @property
    def faults(self) -> dict:
        return self._completer.faults if self._completer else {}

    def format_stats(self) -> str:
        return self._completer.format_stats() if self._completer else "completions: none"


class Machine:
    def __init__(self, config: MachineConfig):
        self.config = config
        self.serial = None                  # the COM1 backend (akvm.devices.chardev)
        self.pio_bus = Bus("pio")
        self.mmio_bus = Bus("mmio")
        self.vcpus: list[VcpuThread] = []
        self.iommu = None                   # akvm.iommu.vtd.VtdIommu with --iommu vtd
        self.virtio_devices: list = []      # served by their own threads from run() on
        self.workers: list = []             # other devices with a thread: start(), close(), format_stats()
        self.gsi_routes = None              # akvm.base.irqroutes.GsiRoutes, once a device needs irqfds
        self.fastpath = FastPath(self.pio_bus, self.mmio_bus)
        # Made by build(), in this order; None until then (a failed build closes what exists).
        self.system: kvm.System | None = None
        self.vm: kvm.Vm | None = None
        self.memory: GuestMemory | None = None
        self.uart: Uart16550 | None = None
        self.serial_shortcut: SerialShortcut | None = None
        self.debug_port: DebugPortShortcut | None = None
        self.pci: PciRoot | None = None
        self.pci_conf_shortcut: PciConfShortcut | None = None
        self.completer: LazyCompleter | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self.result: tuple[ExitCode, str] | None = None

    # --- building -----------------------------------------------------------

    @classmethod
    def build(cls, config: MachineConfig, image: BootImage | None = None) -> "Machine":
        """`image`: the boot image started for `config` (BootImage.start), if
        the caller started it early; build() starts one otherwise."""
        started = image is not None
        image = image or BootImage.prepare()
        m = cls(config)
        try:
            if not started:
                image.start(config)
            try:
                m.serial = parse_serial(config.serial)
            except ChardevError as e:
                raise UserError(str(e)) from None
            m.system = open_kvm()
            m._create_vm()
            m._add_devices()
            m._load(image)
        except BaseException:
            image.cancel()
            m._close_serial()
            m._close_virtio()
            m._close_vm()
            raise
        return m

    def _close_vm(self) -> None:
        """Give back what a build that failed half-way opened of KVM."""
        for t in self.vcpus:
            t.vcpu.close()
        for fd in (self.vm, self.system):
            if fd is not None:
                fd.close()

    def _create_vm(self) -> None:
        self.vm = self.system.create_vm()
        # RAM first: once the VM has its in-kernel irqchip, adding a memory
        # slot waits for KVM to synchronize (5-10 ms per slot on kvm_pvm).
        try:
            self.memory = GuestMemory.anonymous(self.config.memory)
            for slot in self.memory.slots:
                self.vm.set_user_memory_region(slot.index, slot.gpa, slot.size,
                                               self.memory.host_address(slot))
        except OSError as e:
            raise UserError(f"--memory {format_memory(self.config.memory)}: the host cannot "
                            f"give that much guest RAM ({e.strerror or e})") from None
        if self.system.check_extension(kvm.KVM_CAP_SET_TSS_ADDR):
            self.vm.set_tss_addr(TSS_ADDR)
        if self.system.check_extension(kvm.KVM_CAP_SET_IDENTITY_MAP_ADDR):
            self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        self.vm.create_pit2(kvm.KVM_PIT_SPEAKER_DUMMY)
        self._start_pit()

    def _start_pit(self) -> None:
        """Leave PIT channel 0 counting as a BIOS does (mode 3, count 65536, 18.2 Hz):
        Akaros latches and reads it before it programs it."""
        state = self.vm.get_pit2()
        ch0 = state.channels[0]
        ch0.count, ch0.mode, ch0.rw_mode, ch0.gate = 0x10000, 3, 3, 1
        ch0.read_state = ch0.write_state = 3
        self.vm.set_pit2(state)

    def _add_devices(self) -> None:
        pio = self.pio_bus
        self.uart = Uart16550(KvmIrqLine(self.vm, COM1_IRQ), self.serial)
        pio.register(COM1_PORT, 8, self.uart, "com1")
        self.serial_shortcut = SerialShortcut(self.fastpath, COM1_PORT)
        self.uart.attach_shortcut(self.serial_shortcut)
        DebugPort().register(pio)
        self.debug_port = DebugPortShortcut(self.fastpath)
        self.i8042 = I8042(reset=self._guest_reset)
        self.i8042.register(pio)
        self._add_iommu()
        self._add_pci()
        self._add_user_devices()
        # 0xCF9 sits inside CONFIG_ADDRESS (0xCF8-0xCFB): byte accesses pass through to it.
        ResetControl(reset=self._guest_reset).register(self.pci.config_address_port.legacy_io)
        below_4g = min(self.config.memory, PCI_HOLE_START)
        pio.register(layout.CMOS_PORT, layout.CMOS_PORT_SIZE,
                     Cmos(below_4g, self.config.memory - below_4g, self.config.cpus), "cmos")
        pio.register(layout.ACPI_PM_BASE, layout.ACPI_PM_SIZE,
                     AcpiPm(poweroff=lambda: self.stop(ExitCode.POWEROFF, "guest powered off")),
                     "acpi-pm")

    def _add_iommu(self) -> None:
        if self.config.iommu is not None:
            builder(IOMMUS[self.config.iommu.kind])(self, self.config.iommu)

    def iommu_stale(self, message: str) -> None:
        """check=stop: the coherence checker found a stale translation in use."""
        self.stop(ExitCode.GUEST_ERROR, f"stopped by the IOMMU checker (check=stop): {message}")

    def _dma_space(self, requester_id: int):
        """Each PCI function's DMA: through the IOMMU when there is one."""
        if self.iommu is None:
            return DirectDma(self.memory)
        from akvm.iommu.dmaspace import TranslatedDma
        return TranslatedDma(self.iommu, requester_id)

    def _add_pci(self) -> None:
        """PCI bus 0: mechanism #1 at 0xCF8/0xCFC, ECAM as the MCFG says, the host bridge."""
        self.pci = PciRoot(self.pio_bus, self.mmio_bus,
                           mmio_window=(layout.PCI_MMIO_START, layout.PCI_MMIO_END),
                           irq=lambda gsi: KvmIrqLine(self.vm, gsi),
                           msi=lambda address, data: self.vm.signal_msi(address, data),
                           dma=self._dma_space)
        self.pio_bus.register(CONFIG_ADDRESS, 4, self.pci.config_address_port, "pci-config-address")
        self.pio_bus.register(CONFIG_DATA, 4, self.pci.config_data_port, "pci-config-data")
        self.mmio_bus.register(layout.ECAM_BASE, layout.ECAM_SIZE, self.pci.ecam, "pci-ecam")
        self.pci_conf_shortcut = PciConfShortcut(self.fastpath, layout.ECAM_BASE, layout.ECAM_SIZE)
        self.pci.attach_shortcut(self.pci_conf_shortcut)
        self.pci.add(PciHostBridge(), slot=0)

    def msi_irqfds(self):
        """new_irqfd(address, data) for MSI-X through irqfds (PciDevice.use_irqfds), or None
        when KVM has no irqfds or no GSI routing (messages then go by KVM_SIGNAL_MSI). The
        first call takes over the GSI routing table (akvm.base.irqroutes)."""
        if self.gsi_routes is None:
            if not (self.system.check_extension(kvm.KVM_CAP_IRQFD) and
                    self.system.check_extension(kvm.KVM_CAP_IRQ_ROUTING)):
                return None
            from akvm.base.irqroutes import DEFAULT_MAX_ROUTES, GsiRoutes
            routes = GsiRoutes(self.vm, self.system.check_extension(kvm.KVM_CAP_IRQ_ROUTING)
                               or DEFAULT_MAX_ROUTES)
            try:
                routes.commit()
            except OSError as e:
                log.warning("GSI routing refused (%s): MSIs go by KVM_SIGNAL_MSI", e)
                return None
            self.gsi_routes = routes
        return self.gsi_routes.msi_irqfd

    def _add_user_devices(self) -> None:
        for spec in self.config.devices:
            builder(DEVICES[spec.kind])(self, spec)

    def _load(self, image: BootImage) -> None:
        """vCPUs created (while the boot image is still being built), guest RAM
        as the image has it, vCPU 0 at the kernel's entry."""
        supported = self.system.supported_cpuid()
        # Instructions KVM reports as emulation failures (kvm_pvm hosts): vmm/vcpu/complete.py.
        self.completer = LazyCompleter(self.memory, supported)
        for i in range(self.config.cpus):
            vcpu = self.vm.create_vcpu(i)
            configure_cpuid(vcpu, supported)
            self.vcpus.append(VcpuThread(vcpu, self.pio_bus, self.mmio_bus, self.stop,
                                         self.fastpath, completer=self.completer))
        boot = image.finish(DeviceFacts(
            pci_interrupts=tuple((r.device, r.pin, r.ioapic_pin) for r in self.pci.intx_routes()),
            dmar_width=self.iommu.config.aw if self.iommu is not None else None))
        image.apply(self.memory)
        enter_protected_mode(self.vcpus[0].vcpu, boot.entry, boot.eax, boot.ebx)

    # --- running ------------------------------------------------------------

    def _guest_reset(self) -> None:
        self.stop(ExitCode.RESET, "guest reset the machine")

    def stop(self, code: ExitCode, message: str) -> None:
        """End the run; the first reason given wins. Safe from any thread."""
        with self._stop_lock:
            if self.result is not None:
                return
            self.result = (code, message)
        for t in self.vcpus:
            t.kick()
        self._stopped.set()

    def run(self) -> tuple[ExitCode, str]:
        lib.akvm_install_kick_signal(KICK_SIGNAL)
        self.serial.start(self.uart.receive,
                          on_quit=lambda: self.stop(ExitCode.POWEROFF, "quit (Ctrl-A x)"))
        self.serial_shortcut.start(self.uart.flush_shortcut)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, lambda signo, _: self.stop(
                    ExitCode.POWEROFF, f"stopped by {signal.Signals(signo).name}"))
        for device in self.virtio_devices + self.workers:
            device.start()
        for t in self.vcpus:
            t.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.stop(ExitCode.POWEROFF, "interrupted")
        for t in self.vcpus:
            t.join(timeout=2.0)
        self._close_serial()
        self._close_virtio()
        return self.result

    def _close_serial(self) -> None:
        """Stop the C transmit path, send what it still holds, close the console."""
        if self.serial_shortcut is not None:
            self.serial_shortcut.close()
            self.uart.flush_shortcut()
        if self.serial is not None:
            self.serial.close()

    def _close_virtio(self) -> None:
        for device in self.virtio_devices + self.workers:
            device.close()
        if self.gsi_routes is not None:
            self.gsi_routes.close()

    def format_stats(self) -> str:
        lines = ["akvm statistics:"]
        for t in self.vcpus:
            exits = [f"{k} {v}" for k, v in sorted(t.stats.exits.items())]
            if t.stats.fast_exits[0]:
                exits.append(f"{t.stats.fast_exits[0]} completed in C")
            exits = ", ".join(exits) or "none"
            lines.append(f"  vcpu{t.vcpu.index} exits: {exits}")
        fast = self.fastpath.stats()
        debug = self.debug_port.stats()
        lines.append(f"  completed in C: {fast['fast_exits']} exits, "
                     f"debug port {debug['writes']} writes (last {debug['last']:#04x})")
        for i, bus in enumerate((self.pio_bus, self.mmio_bus)):
            lines.append(f"  {bus.name} bus: {bus.accesses} accesses in Python, "
                         f"{bus.unclaimed_reads + fast['unclaimed_reads'][i]} unclaimed reads, "
                         f"{bus.unclaimed_writes + fast['unclaimed_writes'][i]} unclaimed writes")
        pc = self.pci_conf_shortcut.stats()
        lines.append(f"  pci config in C: {pc['latch_accesses']} CONFIG_ADDRESS accesses, "
                     f"{pc['absent_reads']} reads and {pc['absent_writes']} writes of absent functions")
        sc = self.serial_shortcut.stats()
        lines.append(f"  com1: {self.uart.tx_bytes} bytes out ({sc['tx_bytes']} through C), "
                     f"{self.uart.rx_bytes} bytes in, {sc['lsr_reads']} LSR reads in C")
        lines.append(f"  {self.completer.format_stats()}")
        for device in self.virtio_devices:
            sent, by_irqfd = device.transport.interrupt_counts()
            lines.append(f"  {device.format_stats()}; {sent} interrupts, {by_irqfd} by irqfd; "
                         f"{device.exit_kicks} notifications by exit")
        lines += [f"  {device.format_stats()}" for device in self.workers]
        if self.iommu is not None:
            lines += [f"  {line}" for line in self.iommu.format_stats()]
        return "\n".join(lines)
