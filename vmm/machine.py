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
import os
import signal
import threading
import time

from akvm.devices.acpi_pm import AcpiPm
from akvm.devices.chardev import ChardevError, parse_serial
from akvm.devices.cmos import Cmos
from akvm.devices.debugport import DebugPort, DebugPortShortcut
from akvm.devices.i8042 import I8042, ResetControl
from akvm.devices.pci.device import PciDevice
from akvm.devices.pci.host import CONFIG_ADDRESS, CONFIG_DATA, PciHostBridge, PciRoot
from akvm.devices.uart import Uart16550
from akvm.base import kvm
from akvm.boot.image import BootImage, DeviceFacts
from akvm.base.bus import Bus
from akvm.base.dma import DirectDma
from akvm.config import ConfigError, MachineConfig, format_memory
from akvm.devicetable import DEVICES, IOMMUS
from akvm.base.runloop import MMIO, FastPath
from akvm.base.snapdata import pack, unpack
from akvm.devices.pci.pciconf import PciConfShortcut
from akvm.devices.serial import SerialShortcut
from akvm.vcpu.cpu import (KICK_SIGNAL, VcpuThread, configure_cpuid, enter_protected_mode,
                           format_completions)
from akvm.base.exitcode import ExitCode
from akvm.base.irq import KvmIrqLine
from akvm.base.memory import GuestMemory, PCI_HOLE_START
from akvm.base.native import lib
from akvm.tables import layout

log = logging.getLogger("akvm.machine")

COM1_PORT, COM1_IRQ = 0x3F8, 4
# After the VM stops, how long run() waits for the vCPU threads (kicked out of KVM_RUN,
# they end at once); each console and device thread has its own bound as well.
VCPU_JOIN_S = 0.5
# Addresses KVM needs on Intel VMX hosts (real-mode TSS, identity page table); unused elsewhere.
TSS_ADDR = 0xFFFB_D000
IDENTITY_MAP_ADDR = 0xFFFB_C000


# How long pause() waits for every vCPU to reach an instruction boundary, and a
# device's thread to finish what it is doing.
PAUSE_TIMEOUT = 5.0
# How long the end of a run waits for a snapshot being written.
SNAPSHOT_WAIT = 30.0
# The event each way a run can end is reported as (the control socket's events).
END_EVENTS = {ExitCode.POWEROFF: "powered-off", ExitCode.RESET: "reset",
              ExitCode.TRIPLE_FAULT: "guest-error", ExitCode.GUEST_ERROR: "guest-error"}


class UserError(ConfigError):
    """Bad user input found while building the machine (exit status 2)."""


class PauseError(RuntimeError):
    """A vCPU did not stop in time, or the machine is no longer running."""


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

    def stats(self) -> dict:
        return self._completer.stats() if self._completer else {"counts": {}, "faults": {}}


class Machine:
    def __init__(self, config: MachineConfig):
        self.config = config
        self.serial = None                  # the COM1 backend (akvm.devices.chardev)
        self.pio_bus = Bus("pio")
        self.mmio_bus = Bus("mmio")
        self.vcpus: list[VcpuThread] = []
        self.iommu = None                   # akvm.iommu.vtd.VtdIommu with --iommu vtd
        self.virtio_devices: list = []      # served by their own threads from run() on
        self.threaded_devices: list = []    # other devices with threads: start(), close(), stats()
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
        # Device models with state, by name, besides the PCI functions, the virtio-mmio
        # transports and the IOMMU (snapshots: _stateful()).
        self.devices: dict[str, object] = {}
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self.result: tuple[ExitCode, str] | None = None
        self._pause_lock = threading.RLock()   # also held while a snapshot is taken
        self._pauses = 0                        # pause() calls not yet resumed
        # Called with (event name, data dict) on stop/resume and when the run ends
        # (akvm.control sends them to its clients); from any thread, so they must not block.
        self.listeners: list = []

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

    def _create_vm(self, memory: GuestMemory | None = None, vm: kvm.Vm | None = None) -> None:
        """The VM with `memory` (a snapshot's), or fresh anonymous RAM; `vm`: one made
        already, with `memory` as its slots (akvm.snapshot.EarlyVm)."""
        if vm is not None:
            self.vm, self.memory = vm, memory
        else:
            self.vm = self.system.create_vm()
            # RAM first: once the VM has its in-kernel irqchip, adding a memory
            # slot waits for KVM to synchronize (5-10 ms per slot on kvm_pvm).
            try:
                self.memory = memory or GuestMemory.anonymous(self.config.memory)
                for slot in self.memory.slots:
                    self.vm.set_user_memory_region(slot.index, slot.gpa, slot.size,
                                                   self.memory.host_address(slot))
            except OSError as e:
                raise UserError(f"--memory {format_memory(self.config.memory)}: the host "
                                f"cannot give that much guest RAM ({e.strerror or e})") from None
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
        debug = DebugPort()
        debug.register(pio)
        self.debug_port = DebugPortShortcut(self.fastpath)
        self.i8042 = I8042(reset=self._guest_reset)
        self.i8042.register(pio)
        self._add_iommu()
        self._add_pci()
        self._add_user_devices()
        # 0xCF9 sits inside CONFIG_ADDRESS (0xCF8-0xCFB): byte accesses pass through to it.
        reset = ResetControl(reset=self._guest_reset)
        reset.register(self.pci.config_address_port.legacy_io)
        below_4g = min(self.config.memory, PCI_HOLE_START)
        cmos = Cmos(below_4g, self.config.memory - below_4g, self.config.cpus)
        pio.register(layout.CMOS_PORT, layout.CMOS_PORT_SIZE, cmos, "cmos")
        pm = AcpiPm(poweroff=lambda: self.stop(ExitCode.POWEROFF, "guest powered off"))
        pio.register(layout.ACPI_PM_BASE, layout.ACPI_PM_SIZE, pm, "acpi-pm")
        self.devices.update({"com1": self.uart, "debugport": debug, "debugport-c": self.debug_port,
                             "i8042": self.i8042, "reset-control": reset, "cmos": cmos,
                             "acpi-pm": pm, "pci": self.pci})

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

    def _create_vcpus(self, cpuids: list | None = None) -> None:
        """The vCPUs and their threads (not started), with akvm's CPUID, or `cpuids` (a
        snapshot's, one table per vCPU)."""
        supported = self.system.supported_cpuid()
        # Instructions KVM reports as emulation failures (kvm_pvm hosts): vmm/vcpu/complete.py.
        self.completer = LazyCompleter(self.memory, supported)
        for i in range(self.config.cpus):
            vcpu = self.vm.create_vcpu(i)
            if cpuids is None:
                configure_cpuid(vcpu, supported)
            else:
                vcpu.set_cpuid2(cpuids[i])
            self.vcpus.append(VcpuThread(vcpu, self.pio_bus, self.mmio_bus, self.stop,
                                         self.fastpath, completer=self.completer))

    def _load(self, image: BootImage) -> None:
        """vCPUs created (while the boot image is still being built), guest RAM
        as the image has it, vCPU 0 at the kernel's entry."""
        self._create_vcpus()
        boot = image.finish(DeviceFacts(
            pci_interrupts=tuple((r.device, r.pin, r.ioapic_pin) for r in self.pci.intx_routes()),
            dmar_width=self.iommu.config.aw if self.iommu is not None else None))
        image.apply(self.memory)
        enter_protected_mode(self.vcpus[0].vcpu, boot.entry, boot.eax, boot.ebx)

    # --- snapshots (akvm.snapshot) ---------------------------------------------

    @classmethod
    def restore(cls, snap, config: MachineConfig, early=None) -> "Machine":
        """A machine as a snapshot (akvm.snapshot.load) saved it, built from `config`
        (snap.config(), with this run's console) and ready to run(); `early`: an
        akvm.snapshot.EarlyVm started for it."""
        from akvm.snapshot import SnapshotError
        from akvm.vcpu import state as vcpu_state
        m = cls(config)
        try:
            try:
                m.serial = parse_serial(config.serial)
            except ChardevError as e:
                raise UserError(str(e)) from None
            made = early.take() if early is not None else None
            if made is not None:
                m.system, vm, memory = made
                m._create_vm(memory, vm)
            else:
                m.system = open_kvm()
                fd, slots = snap.open_ram()
                try:
                    memory = GuestMemory.from_ram_file(fd, slots)
                except OSError as e:
                    raise SnapshotError(f"snapshot {snap.path}: {e.strerror or e}") from None
                finally:
                    os.close(fd)
                m._create_vm(memory)
            m._add_devices()
            saved = snap.state
            try:
                if len(saved["vcpus"]) != config.cpus:
                    raise ValueError(f"{len(saved['vcpus'])} vCPUs saved, {config.cpus} configured")
                m._create_vcpus([vcpu_state.cpuid_of(v) for v in saved["vcpus"]])
                m._restore_state(saved)
            except (KeyError, IndexError, TypeError, ValueError, OverflowError, AttributeError,
                    vcpu_state.VcpuStateError, kvm.KvmError) as e:
                raise SnapshotError(f"snapshot {snap.path}: cannot restore it: "
                                    f"{type(e).__name__}: {e}") from None
        except BaseException:
            m._close_serial()
            m._close_virtio()
            m._close_vm()
            raise
        return m

    def _restore_state(self, saved: dict) -> None:
        """Devices first (their interrupt lines take their levels, which KVM's irqchip
        state then overwrites), then the vCPUs, then the VM's own devices."""
        from akvm.vcpu import state as vcpu_state
        stateful = self._stateful()
        devices = saved["devices"]
        if set(devices) != set(stateful):
            raise ValueError(f"saved devices {sorted(set(devices) - set(stateful))} are not in "
                             f"the configuration, {sorted(set(stateful) - set(devices))} are "
                             f"missing")
        for name, device in stateful.items():
            try:
                device.restore(devices[name])
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise ValueError(f"{name}: {type(e).__name__}: {e}") from None
        for t, state in zip(self.vcpus, saved["vcpus"]):
            vcpu_state.restore(t.vcpu, state)
        vm = saved["vm"]
        self.vm.set_pit2(kvm.kvm_pit_state2.from_buffer_copy(unpack(vm["pit2"])))
        clock = kvm.kvm_clock_data.from_buffer_copy(unpack(vm["clock"]))
        clock.flags = 0                  # set kvmclock to the saved value
        self.vm.set_clock(clock)
        for chip in vm["irqchip"]:
            self.vm.set_irqchip(kvm.kvm_irqchip.from_buffer_copy(unpack(chip)))
        for t in self.vcpus:
            try:
                t.vcpu.kvmclock_ctrl()   # a guest using kvmclock: it was paused, not hung
            except kvm.KvmError:
                pass                     # EINVAL: it does not use kvmclock

    def _stateful(self) -> dict[str, object]:
        """Every device model with state, by the name its state is saved under."""
        found = dict(self.devices)
        if self.iommu is not None:
            found["vtd"] = self.iommu
        for address, function in self.pci.devices():
            found[f"pci/{address}"] = function
        for device in self.virtio_devices:
            if not isinstance(device.transport, PciDevice):     # the PCI ones are above
                found[f"virtio-mmio/{device.name}"] = device.transport
        return found

    def _unsaved_devices(self, stateful: dict[str, object]) -> list[str]:
        """Devices on the buses that no state in `stateful` covers (a model without
        snapshot support that was registered directly)."""
        covered = {id(obj) for obj in stateful.values()}
        return [f"{rng.name} ({type(rng.device).__name__}) on the {bus.name} bus at {rng.base:#x}"
                for bus in (self.pio_bus, self.mmio_bus) for rng in bus.ranges()
                if id(getattr(rng.device, "state_owner", rng.device)) not in covered]

    def save_snapshot(self, path: str) -> dict:
        """Pause, hold every device thread, save everything (akvm.snapshot.write), go on.
        Raises SnapshotError (a device without snapshot support, a write that failed) or
        PauseError; the machine runs on either way."""
        from akvm import snapshot
        from akvm.devices.state import SnapshotUnsupported
        from akvm.vcpu import state as vcpu_state
        snapshot.make_dir(path)
        with self._pause_lock:
            self.pause()
            held = []
            try:
                stateful = self._stateful()
                unsaved = self._unsaved_devices(stateful)
                if unsaved:
                    raise snapshot.SnapshotError(f"cannot save {unsaved[0]}: it has no snapshot "
                                                 "support")
                for name, device in stateful.items():
                    if hasattr(device, "pause"):
                        if not device.pause(PAUSE_TIMEOUT):
                            raise PauseError(f"{name} did not stop within {PAUSE_TIMEOUT} s")
                        held.append(device)
                msrs = vcpu_state.msr_indices(self.system)
                try:
                    state = {
                        "config": snapshot.config_data(self.config),
                        "disks": snapshot.disks_of(self.config),
                        "created": time.time(),
                        "vcpus": [vcpu_state.save(t.vcpu, msrs) for t in self.vcpus],
                        "vm": self._vm_state(),
                        "devices": {name: device.snapshot() for name, device in stateful.items()},
                    }
                except SnapshotUnsupported as e:
                    raise snapshot.SnapshotError(f"cannot save {e}") from None
                except vcpu_state.VcpuStateError as e:
                    raise snapshot.SnapshotError(str(e)) from None
                return snapshot.write(path, state, self.memory)
            finally:
                for device in held:
                    device.resume()
                self.resume()

    def _vm_state(self) -> dict:
        """The in-kernel PIT, kvmclock, PICs and IOAPIC."""
        clock = self.vm.get_clock()
        clock.flags &= ~kvm.KVM_CLOCK_TSC_STABLE
        return {"pit2": pack(bytes(self.vm.get_pit2())), "clock": pack(bytes(clock)),
                "irqchip": [pack(bytes(self.vm.get_irqchip(chip)))
                            for chip in (kvm.KVM_IRQCHIP_PIC_MASTER, kvm.KVM_IRQCHIP_PIC_SLAVE,
                                         kvm.KVM_IRQCHIP_IOAPIC)]}

    # --- running ------------------------------------------------------------

    def _guest_reset(self) -> None:
        self.stop(ExitCode.RESET, "guest reset the machine")

    def stop(self, code: ExitCode, message: str) -> None:
        """End the run; the first reason given wins. Safe from any thread, returns at
        once: run() then tears the machine down, each step with a time bound, so a
        stalled console or device never holds the process."""
        with self._stop_lock:
            if self.result is not None:
                return
            self.result = (code, message)
        for t in self.vcpus:
            t.kick()
        self._stopped.set()
        self._emit(END_EVENTS.get(code, "guest-error"),
                   {"status": int(code), "reason": message.split("\n", 1)[0]})

    def _emit(self, event: str, data: dict) -> None:
        for listener in list(self.listeners):
            listener(event, data)

    # --- pausing ------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._pauses > 0

    def pause(self, timeout: float = PAUSE_TIMEOUT) -> None:
        """Stop every vCPU at an instruction boundary (VcpuThread.request_pause) and
        wait until all are parked; guest output so far is on the console. Pauses
        nest: the vCPUs run again after as many resume() calls; a vCPU a debugger
        stopped (akvm.gdb) stays stopped. Raises PauseError when a vCPU does not
        stop within `timeout` or the run is over."""
        with self._pause_lock:
            if self.result is not None:
                raise PauseError(f"the machine has stopped: {self.result[1]}")
            self._pauses += 1
            if self._pauses == 1:
                for t in self.vcpus:
                    t.request_pause()
            deadline = time.monotonic() + timeout
            for t in self.vcpus:
                if not t.wait_paused(max(0.0, deadline - time.monotonic())):
                    self.resume()
                    raise PauseError(f"vcpu{t.vcpu.index} did not stop within {timeout} s")
            if self.result is not None:
                self.resume()
                raise PauseError(f"the machine has stopped: {self.result[1]}")
            if self._pauses == 1:
                self.uart.flush_shortcut()
                self._emit("stop", {})

    def resume(self) -> None:
        """Undo one pause(); the last one lets the vCPUs run."""
        with self._pause_lock:
            if self._pauses == 0:
                return
            self._pauses -= 1
            if self._pauses == 0:
                for t in self.vcpus:
                    t.resume()
                if self.result is None:
                    self._emit("resume", {})

    def quit(self, reason: str) -> None:
        """The user ends the run (Ctrl-A x, SIGTERM, SIGHUP, Ctrl-C, a control
        command): exit status 0 with `reason` as the closing line. As stop()."""
        self.stop(ExitCode.POWEROFF, reason)

    def run(self) -> tuple[ExitCode, str]:
        lib.akvm_install_kick_signal(KICK_SIGNAL)
        self.serial.start(self.uart.receive, on_quit=lambda: self.quit("quit (Ctrl-A x)"))
        self.serial_shortcut.start(self.uart.flush_shortcut)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, lambda signo, _: self.quit(
                    f"stopped by {signal.Signals(signo).name}"))
        for device in self.virtio_devices + self.threaded_devices:
            device.start()
        for t in self.vcpus:
            t.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.quit("interrupted")
        deadline = time.monotonic() + VCPU_JOIN_S
        for t in self.vcpus:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        # A snapshot being written holds this; its devices must not close under it.
        if self._pause_lock.acquire(timeout=SNAPSHOT_WAIT):
            self._pause_lock.release()
        self._close_virtio()
        self._close_serial()
        return self.result

    def close(self) -> None:
        """Release a machine that was built and never ran (tests, tools/fuzz)."""
        self._close_virtio()
        self._close_serial()
        self._close_vm()

    def _close_serial(self) -> None:
        """Stop the C transmit path, send what it still holds, close the console."""
        if self.serial_shortcut is not None:
            self.serial_shortcut.close()
            self.uart.flush_shortcut()
        if self.serial is not None:
            self.serial.close()

    def _close_virtio(self) -> None:
        for device in self.virtio_devices + self.threaded_devices:
            device.close()
        if self.gsi_routes is not None:
            self.gsi_routes.close()

    def stats(self) -> dict:
        """Every counter --stats prints, as plain data (the control socket's query-stats)."""
        fast = self.fastpath.stats()
        buses = {}
        for i, bus in enumerate((self.pio_bus, self.mmio_bus)):
            buses[bus.name] = {"accesses_in_python": bus.accesses,
                               "unclaimed_reads": bus.unclaimed_reads + fast["unclaimed_reads"][i],
                               "unclaimed_writes": bus.unclaimed_writes + fast["unclaimed_writes"][i],
                               "device_errors": bus.device_errors}
        sc = self.serial_shortcut.stats()
        out = {
            "vcpus": [{"index": t.vcpu.index, "exits": dict(t.stats.exits),
                       "completed_in_c": t.stats.fast_exits[0]} for t in self.vcpus],
            "completed_in_c": fast["fast_exits"],
            "debug_port": self.debug_port.stats(),
            "buses": buses,
            "pci_config_in_c": self.pci_conf_shortcut.stats(),
            "com1": {"tx_bytes": self.uart.tx_bytes, "tx_bytes_in_c": sc["tx_bytes"],
                     "rx_bytes": self.uart.rx_bytes, "lsr_reads_in_c": sc["lsr_reads"],
                     "dropped": self.serial.dropped},
            "completions": self.completer.stats(),
            "virtio": [],
        }
        for device in self.virtio_devices:
            sent, by_irqfd = device.transport.interrupt_counts()
            out["virtio"].append({"name": device.name, **device.stats(), "interrupts": sent,
                                  "interrupts_by_irqfd": by_irqfd,
                                  "notifications_by_exit": device.exit_kicks})
        out["devices"] = [{"name": device.name, **device.stats()}
                          for device in self.threaded_devices]
        if self.iommu is not None:
            out["iommu"] = self.iommu.stats()
        return out

    def format_stats(self, s: dict | None = None) -> str:
        """stats() (or a dict it returned) as --stats prints it."""
        s = s or self.stats()
        lines = ["akvm statistics:"]
        for v in s["vcpus"]:
            exits = [f"{k} {n}" for k, n in sorted(v["exits"].items())]
            if v["completed_in_c"]:
                exits.append(f"{v['completed_in_c']} completed in C")
            lines.append(f"  vcpu{v['index']} exits: {', '.join(exits) or 'none'}")
        debug = s["debug_port"]
        lines.append(f"  completed in C: {s['completed_in_c']} exits, "
                     f"debug port {debug['writes']} writes (last {debug['last']:#04x})")
        for name, bus in s["buses"].items():
            lines.append(f"  {name} bus: {bus['accesses_in_python']} accesses in Python, "
                         f"{bus['unclaimed_reads']} unclaimed reads, "
                         f"{bus['unclaimed_writes']} unclaimed writes, "
                         f"{bus['device_errors']} device errors")
        pc = s["pci_config_in_c"]
        lines.append(f"  pci config in C: {pc['latch_accesses']} CONFIG_ADDRESS accesses, "
                     f"{pc['absent_reads']} reads and {pc['absent_writes']} writes of absent functions")
        com1 = s["com1"]
        lines.append(f"  com1: {com1['tx_bytes']} bytes out ({com1['tx_bytes_in_c']} through C), "
                     f"{com1['rx_bytes']} bytes in, {com1['lsr_reads_in_c']} LSR reads in C, "
                     f"{com1['dropped']} bytes dropped by a stalled console")
        lines.append(f"  {format_completions(s['completions'])}")
        for device, d in zip(self.virtio_devices, s["virtio"]):
            lines.append(f"  {device.format_stats(d)}; {d['interrupts']} interrupts, "
                         f"{d['interrupts_by_irqfd']} by irqfd; "
                         f"{d['notifications_by_exit']} notifications by exit")
        lines += [f"  {device.format_stats(d)}"
                  for device, d in zip(self.threaded_devices, s["devices"])]
        if "iommu" in s:
            lines += [f"  {line}" for line in self.iommu.format_stats(s["iommu"])]
        return "\n".join(lines)
