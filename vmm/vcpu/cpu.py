"""vCPUs: initial state per boot protocol, CPUID, the run thread and exit dispatch.

A vCPU thread loops on KVM_RUN (in C, without the GIL) and hands each exit
to the port-I/O or MMIO bus. Exits that end the VM (triple fault, reset,
poweroff, an error KVM cannot recover from) are reported to the Machine
through its `stop` callback with an ExitCode.

Guest debugging (akvm.vcpu.debug): with a `debugger` attached, a debug
exit, the debugger's own int3 (an emulation failure where ring 0 is
emulated), an access to a watched range, or code KVM cannot fetch from a
page a read watchpoint took away ends in a DebugStop: the thread pauses
itself, held by DEBUG_HOLD, and tells the debugger once parked.
While `stepping`, every exit ends the step: the instruction that caused
it has executed (on kvm_pvm an instruction that exits to akvm ends with
that exit, not a debug exit).
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING

from akvm.base import kvm
from akvm.base.exitcode import ExitCode
from akvm.base.native import ffi, lib

if TYPE_CHECKING:
    from akvm.vcpu.debug import DebugStop     # imported by a debugger, not at every start

log = logging.getLogger("akvm.cpu")

# A real-time signal nothing else uses: sent to a vCPU thread to end KVM_RUN.
KICK_SIGNAL = signal.SIGRTMIN + 3

# What _run_once returns for an exit the C fast path completed (not a KVM exit reason).
EXIT_DONE_IN_C = 1 << 16
# Who holds a paused vCPU: Machine.pause() (every vCPU), or a debugger (one at a time).
PAUSE_HOLD, DEBUG_HOLD = "pause", "debug"


class VcpuStats:
    __slots__ = ("exits", "fast_exits")

    def __init__(self, fast_exits):
        self.exits: dict[str, int] = {}     # handled in Python, by kind
        self.fast_exits = fast_exits        # unsigned long long[1]: completed in C (runloop.c)

    def count(self, reason: str) -> None:
        self.exits[reason] = self.exits.get(reason, 0) + 1


# --- initial register state ----------------------------------------------

def _flat_segment(seg: kvm.kvm_segment, selector: int, type_: int) -> None:
    seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFFFFFF, selector, type_
    seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.avl, seg.unusable = 1, 0, 1, 1, 0, 1, 0, 0


def enter_protected_mode(vcpu: kvm.Vcpu, entry: int, eax: int, ebx: int) -> None:
    """32-bit protected mode, paging off, flat 4 GiB segments: the Multiboot 1 machine state."""
    sregs = vcpu.get_sregs()
    _flat_segment(sregs.cs, 0x08, 0xB)            # execute/read, accessed
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _flat_segment(seg, 0x10, 0x3)             # read/write, accessed
    sregs.cr0 = 0x11                               # PE | ET
    sregs.cr4 = 0
    sregs.efer = 0
    vcpu.set_sregs(sregs)
    regs = kvm.kvm_regs()
    regs.rip, regs.rax, regs.rbx, regs.rflags = entry, eax, ebx, 0x2
    vcpu.set_regs(regs)


# "GenuineIntel" as leaf 0 spells it in EBX, EDX, ECX.
INTEL_VENDOR = (0x756E6547, 0x49656E69, 0x6C65746E)
# CPUID 0x80000007 EDX bit 8. Hidden, as QEMU's default CPU models hide it:
# Akaros runs a 1.5-billion-iteration TSC stability test when it is set,
# which takes hours where ring 0 is emulated (kvm_pvm).
INVARIANT_TSC = 1 << 8


# The hypervisor timing leaf (the VMware / Linux convention): EAX = TSC kHz,
# EBX = local APIC timer input kHz. KVM's APIC timer counts at 1 GHz.
TIMING_LEAF = 0x40000010
APIC_BUS_KHZ = 1_000_000


def configure_cpuid(vcpu: kvm.Vcpu, supported: list[kvm.kvm_cpuid_entry2]) -> None:
    """The host's supported CPUID with this vCPU's APIC id filled in, as an Intel CPU
    without an invariant TSC, with the timing leaf (so a guest need not calibrate).

    The machine is an Intel platform (VT-d, an Intel host bridge), and the
    vendor changes how KVM checks guest page tables: for an AMD guest, bit 8
    of a non-leaf PML4E is reserved, and Akaros sets it (PTE_G) in its
    PML4, so it would triple-fault as soon as it enables paging.
    """
    entries = []
    for src in supported:
        e = kvm.kvm_cpuid_entry2.from_buffer_copy(src)
        if e.function == 0:
            e.ebx, e.edx, e.ecx = INTEL_VENDOR
        elif e.function == 1:
            e.ebx = (e.ebx & 0x00FFFFFF) | (vcpu.index << 24)
        elif e.function in (0xB, 0x1F):
            e.edx = vcpu.index
        elif e.function == 0x80000007:
            e.edx &= ~INVARIANT_TSC
        elif e.function == 0x40000000:
            e.eax = max(e.eax, TIMING_LEAF)
        if e.function != TIMING_LEAF:
            entries.append(e)
    entries.append(kvm.kvm_cpuid_entry2(function=TIMING_LEAF, eax=vcpu.get_tsc_khz(),
                                        ebx=APIC_BUS_KHZ))
    vcpu.set_cpuid2(entries)


def format_completions(s: dict) -> str:
    """What akvm.vcpu.complete.Completer.stats() counted, as --stats prints it (here, so
    that printing it does not load the completer)."""
    done = ", ".join(f"{k} {v}" for k, v in sorted(s["counts"].items())) or "none"
    faults = ", ".join(f"{k} {v}" for k, v in sorted(s["faults"].items()))
    return f"completions: {done}" + (f"; faults injected: {faults}" if faults else "")


# --- register dump -------------------------------------------------------

def format_registers(regs: kvm.kvm_regs, sregs: kvm.kvm_sregs) -> str:
    """A readable dump of the state people ask for first when a guest dies."""
    g = lambda n: f"{n.upper():>3}={getattr(regs, n):016x}"
    lines = []
    names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]
    for i in range(0, len(names), 4):
        lines.append("  ".join(g(n) for n in names[i:i + 4]))
    lines.append(f"RIP={regs.rip:016x}  RFLAGS={regs.rflags:08x}")
    lines.append(f"CR0={sregs.cr0:08x}  CR2={sregs.cr2:016x}  CR3={sregs.cr3:016x}  "
                 f"CR4={sregs.cr4:08x}  EFER={sregs.efer:x}")
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr"):
        s = getattr(sregs, name)
        lines.append(f"{name.upper():>3}={s.selector:04x} base={s.base:016x} limit={s.limit:08x} "
                     f"type={s.type:x} dpl={s.dpl} p={s.present} db={s.db} l={s.l} g={s.g}")
    lines.append(f"GDT={sregs.gdt.base:016x}/{sregs.gdt.limit:04x}  "
                 f"IDT={sregs.idt.base:016x}/{sregs.idt.limit:04x}")
    return "\n".join(lines)


# --- the vCPU thread -----------------------------------------------------

class VcpuThread(threading.Thread):
    """Runs one vCPU until the machine stops."""

    def __init__(self, vcpu: kvm.Vcpu, pio_bus, mmio_bus, stop, fastpath, completer=None):
        super().__init__(name=f"vcpu{vcpu.index}", daemon=True)
        self.vcpu = vcpu
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.stop = stop                  # stop(ExitCode, message)
        self.completer = completer        # finishes instructions KVM gave up on, or None
        self.completion_report: str | None = None   # why the completer could not (akvm.vcpu.complete)
        self.stats = VcpuStats(fast_exits=ffi.new("unsigned long long[1]"))
        self.stopping = False
        self.fastpath = fastpath          # akvm.base.runloop.FastPath: exits completed in C
        self._run_ptr = ffi.cast("void *", vcpu.run_address)
        # Pausing (request_pause / wait_paused / resume): guarded by _pause. The vCPU
        # runs while nobody holds it.
        self._pause = threading.Condition()
        self._holds: set[str] = set()
        self.paused = False               # parked between two instructions, out of KVM_RUN
        # Guest debugging: None unless a debugger (akvm.vcpu.debug.GuestDebug) is attached.
        self.debugger = None
        self.stepping = False             # the debugger asked for one instruction
        self.debug_event: DebugStop | None = None   # what this exit means to the debugger
        self._stopped_for: DebugStop | None = None  # told to the debugger once parked

    def _signal(self) -> None:
        if self.is_alive() and self.ident is not None:
            try:
                signal.pthread_kill(self.ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def kick(self) -> None:
        """Make the thread leave KVM_RUN and exit its loop (a paused thread too)."""
        self.stopping = True
        self.vcpu.kvm_run.immediate_exit = 1
        with self._pause:
            self._pause.notify_all()
        self._signal()

    # --- pausing -------------------------------------------------------------
    #
    # A paused vCPU is parked in this thread, outside KVM_RUN, with every
    # instruction it started finished: the exit that handed an access to
    # akvm was completed by one more KVM_RUN with immediate_exit set (KVM
    # then writes an IN's value to RAX or an MMIO read's to its register,
    # and moves RIP past the instruction, without entering the guest). Its
    # registers, and anything the guest can see, hold still until resume(),
    # and other threads may use the vCPU's state ioctls meanwhile. Holders
    # are counted apart (PAUSE_HOLD, DEBUG_HOLD): a snapshot's pause and
    # resume leave a vCPU a debugger stopped where it is.

    def request_pause(self, owner: str = PAUSE_HOLD) -> None:
        """Ask the thread to park at the next instruction boundary; wait_paused() waits for it."""
        with self._pause:
            self._holds.add(owner)
            self.vcpu.kvm_run.immediate_exit = 1
            paused = self.paused        # then it sees the hold before it leaves
        if not paused:
            self._signal()

    def wait_paused(self, timeout: float | None = None) -> bool:
        """Whether the thread is parked within `timeout` seconds, or runs no guest code:
        not started (it parks before its first instruction) or ended."""
        with self._pause:
            return self._pause.wait_for(
                lambda: self.paused or self.ident is None or self.stopping, timeout)

    def resume(self, owner: str = PAUSE_HOLD) -> None:
        """Drop `owner`'s hold: the thread runs the guest again once nobody holds it."""
        with self._pause:
            self._holds.discard(owner)
            if not self._holds and not self.paused and not self.stopping:
                self.vcpu.kvm_run.immediate_exit = 0
            self._pause.notify_all()

    def _park(self) -> None:
        """Park here while anyone holds the thread: after KVM_RUN returned EINTR, or
        from _debug_stop() when no exit is left to complete."""
        with self._pause:
            if not self._holds or self.stopping:
                return
            self.paused = True
            stopped_for, self._stopped_for = self._stopped_for, None
            self._pause.notify_all()
        if stopped_for is not None and self.debugger is not None:
            self.debugger.stopped(self, stopped_for)
        with self._pause:
            self._pause.wait_for(lambda: not self._holds or self.stopping)
            self.paused = False
            if not self.stopping:
                self.vcpu.kvm_run.immediate_exit = 0

    def run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a bug in akvm must still end the VM cleanly
            log.exception("vcpu%d: internal error", self.vcpu.index)
            self.stop(ExitCode.GUEST_ERROR, f"vcpu{self.vcpu.index}: akvm internal error: {e}")
        finally:
            with self._pause:               # wait_paused() need not wait for a thread that ended
                self.stopping = True
                self._pause.notify_all()

    def _loop(self) -> None:
        run = self.vcpu.kvm_run
        fd, fast = self.vcpu.fd, self.fastpath.handle
        while not self.stopping:
            if self.stepping:
                reason = self._run_once()
            else:
                reason = lib.akvm_vcpu_loop(fd, self._run_ptr, fast, self.stats.fast_exits)
            if reason < 0:
                if -reason in (4, 11):   # EINTR, EAGAIN: a kick, a pause or a signal
                    self._park()
                    continue
                self.fatal(f"KVM_RUN failed: errno {-reason}")
                return
            if reason == kvm.KVM_EXIT_IO:
                self.stats.count("io")
                self._io(run.exit.io)
            elif reason == kvm.KVM_EXIT_MMIO:
                self.stats.count("mmio")
                self._mmio(run.exit.mmio)
            elif reason != EXIT_DONE_IN_C and not self._other_exit(reason, run):
                return
            if self.stepping and self.debug_event is None and reason != kvm.KVM_EXIT_DEBUG:
                from akvm.vcpu.debug import STEP
                self.debug_event = STEP       # an instruction that exits has executed
            if self.debug_event is not None:
                self._debug_stop(reason in (kvm.KVM_EXIT_IO, kvm.KVM_EXIT_MMIO, EXIT_DONE_IN_C))

    def _run_once(self) -> int:
        """One KVM_RUN, its exit completed in C when C can (the C loop would run on)."""
        try:
            reason = self.vcpu.run()
        except kvm.KvmError as e:
            return -e.errno
        if reason in (kvm.KVM_EXIT_IO, kvm.KVM_EXIT_MMIO) and \
                self.fastpath.complete(self.vcpu.run_address):
            self.stats.fast_exits[0] += 1
            return EXIT_DONE_IN_C
        return reason

    def _debug_stop(self, io_pending: bool) -> None:
        """Pause this vCPU for the debugger, and tell it once parked. After an I/O or
        MMIO exit the next KVM_RUN (immediate_exit set) completes it and returns EINTR,
        and the thread parks then; after any other exit it parks at once."""
        with self._pause:
            self._stopped_for, self.debug_event = self.debug_event, None
            self._holds.add(DEBUG_HOLD)
            self.vcpu.kvm_run.immediate_exit = 1
        self.stepping = False
        if not io_pending:
            self._park()

    def _io(self, io: kvm.kvm_run_io) -> None:
        size, port = io.size, io.port
        buf = self.vcpu.run_mmap
        off = io.data_offset
        if io.direction == kvm.KVM_EXIT_IO_OUT:
            for i in range(io.count):
                p = off + i * size
                self.pio_bus.write(port, size, int.from_bytes(buf[p:p + size], "little"))
        else:
            for i in range(io.count):
                p = off + i * size
                buf[p:p + size] = self.pio_bus.read(port, size).to_bytes(size, "little")

    def _mmio(self, mmio: kvm.kvm_run_mmio) -> None:
        size = mmio.len
        if mmio.is_write:
            self.mmio_bus.write(mmio.phys_addr, size, int.from_bytes(bytes(mmio.data)[:size], "little"))
        else:
            value = self.mmio_bus.read(mmio.phys_addr, size)
            for i in range(size):
                mmio.data[i] = (value >> (8 * i)) & 0xFF

    def _other_exit(self, reason: int, run: kvm.kvm_run) -> bool:
        """Handle a rare exit; False ends the loop."""
        name = kvm.EXIT_REASON_NAMES.get(reason, str(reason)).lower()
        self.stats.count(name)
        if reason in (kvm.KVM_EXIT_HLT, kvm.KVM_EXIT_IRQ_WINDOW_OPEN, kvm.KVM_EXIT_INTR):
            return True
        if reason == kvm.KVM_EXIT_DEBUG:
            if self.debugger is not None:
                self.debug_event = self.debugger.debug_exit(self, run.exit.debug)
            return True
        if reason == kvm.KVM_EXIT_SHUTDOWN:
            self.fatal("triple fault", ExitCode.TRIPLE_FAULT)
            return False
        if reason == kvm.KVM_EXIT_SYSTEM_EVENT:
            kind = run.exit.system_event.type
            if kind == kvm.KVM_SYSTEM_EVENT_SHUTDOWN:
                self.stop(ExitCode.POWEROFF, "guest powered off")
            elif kind == kvm.KVM_SYSTEM_EVENT_RESET:
                self.stop(ExitCode.RESET, "guest reset the machine")
            else:
                self.fatal(f"system event {kind}")
            return False
        if reason == kvm.KVM_EXIT_INTERNAL_ERROR:
            internal = run.exit.internal
            if internal.suberror == kvm.KVM_INTERNAL_ERROR_EMULATION and self.debugger is not None:
                self.debug_event = self.debugger.breakpoint_at(self)
                if self.debug_event is not None:
                    return True
            if (internal.suberror == kvm.KVM_INTERNAL_ERROR_EMULATION
                    and self.completer is not None and self.completer(self)):
                return True
            if internal.suberror == kvm.KVM_INTERNAL_ERROR_EMULATION and self.debugger is not None:
                # What akvm completes needs no fetch by KVM; anything else on a watched
                # page with no memory slot stops for the debugger, which says why.
                self.debug_event = self.debugger.fetch_stop(self)
                if self.debug_event is not None:
                    self.completion_report = None
                    return True
            report, self.completion_report = self.completion_report, None
            self.fatal(f"KVM internal error, suberror {internal.suberror}"
                       f"{' (emulation failure)' if internal.suberror == 1 else ''}"
                       f"{chr(10) + report if report else ''}")
            return False
        if reason == kvm.KVM_EXIT_FAIL_ENTRY:
            fe = run.exit.fail_entry
            self.fatal(f"VM entry failed, hardware reason {fe.hardware_entry_failure_reason:#x}")
            return False
        self.fatal(f"unexpected exit {name}")
        return False

    def fatal(self, what: str, code: ExitCode = ExitCode.GUEST_ERROR) -> None:
        """Stop the VM with what happened and the registers of this vCPU."""
        try:
            dump = format_registers(self.vcpu.get_regs(), self.vcpu.get_sregs())
        except kvm.KvmError as e:
            dump = f"(registers unavailable: {e})"
        self.stop(code, f"vcpu{self.vcpu.index}: {what}\n{dump}")
