"""The machine as a GDB target: vCPUs as threads, run control by the vCPUs' pause holds.

All-stop: a vCPU that stops for the debugger (akvm.vcpu.debug.DebugStop)
parks itself, held by "debug"; the first such stop pauses the others and
is reported; stops that happen meanwhile wait in a queue and are reported
at the next resume instead of running (unless what caused them is gone:
a breakpoint GDB removed, a step GDB no longer asks for). vCPU threads
tell the server thread through a pipe it polls (`wake_fd`).
"""
from __future__ import annotations

import logging
import os
import threading
import time

from akvm.base.exitcode import ExitCode
from akvm.gdb import registers
from akvm.gdb.session import (HW_BREAK, SIGINT, SIGSEGV, SIGTRAP, SW_BREAK, WATCH_KINDS, Exited,
                              Stop)
from akvm.vcpu.cpu import DEBUG_HOLD, format_registers
from akvm.vcpu.debug import FETCH, DebugError, DebugStop, GuestDebug, linear_ip
from akvm.vcpu.paging import PagingState

log = logging.getLogger("akvm.gdb")

PAUSE_TIMEOUT = 5.0       # for every vCPU to park (one stuck in a device model is left)
STEP_OVER_TIMEOUT = 2.0   # for the one instruction under a breakpoint (a HLT may never end)

MONITOR_HELP = """\
akvm monitor commands (gdb: monitor COMMAND):
  status              the machine and each vCPU: state, RIP, mode
  regs                this thread's registers as akvm prints them (CRs, segments, GDT, IDT)
  stats               akvm's exit and device counters
  phys ADDR [LEN]     guest-physical memory (hex dump, default 64 bytes, at most 4096)
  v2p ADDR            the guest-physical address of a linear address (this thread's tables)
"""


class MachineTarget:
    """A Machine's vCPUs under GDB."""

    def __init__(self, machine):
        self.machine = machine
        self.vcpus = list(machine.vcpus)
        self.debug = GuestDebug(machine.memory, machine.vm, machine.mmio_bus)
        self.debug.on_stop = self._vcpu_stopped
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._events: list[tuple[int, DebugStop]] = []     # (vCPU index, why), oldest first
        self._cache: dict[int, registers.VcpuRegisters] = {}
        self._kvm_pages: dict[int, str] | None = None     # while stopped: see _pages_of_kvm()
        self._stepping: set[int] = set()                   # vCPUs last resumed with "s"
        self.wake_fd, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stopped = False        # every vCPU parked, held by "debug"

    def close(self) -> None:
        for fd in (self.wake_fd, self._wake_w):
            os.close(fd)

    # --- attaching ------------------------------------------------------------

    def hold(self) -> None:
        """--gdb-wait: no vCPU runs until GDB says so (call before Machine.run)."""
        for t in self.vcpus:
            t.request_pause(DEBUG_HOLD)
        self.stopped = True

    def attach(self) -> Stop:
        """A client connected: stop the machine (if it runs) and say where it is."""
        for t in self.vcpus:
            t.debugger = self.debug
        if not self.stopped:
            self._stop_all()
        return self._stop(0, SIGTRAP)

    def detach(self) -> None:
        """Breakpoints out, debugging off, every vCPU running again."""
        if not self.stopped:
            self._stop_all()
        self.debug.clear()
        self.debug.commit()
        for t in self.vcpus:
            self.debug.apply(t)
            t.debugger = None
        with self._lock:
            self._events.clear()
        self._run({t.vcpu.index: "c" for t in self.vcpus})

    def kill(self) -> None:
        self.machine.stop(ExitCode.POWEROFF, "killed from gdb")

    def ended(self) -> Exited | None:
        result = self.machine.result
        return Exited(int(result[0])) if result is not None else None

    # --- threads and registers ----------------------------------------------------

    def threads(self) -> list[int]:
        return [t.vcpu.index + 1 for t in self.vcpus]

    def thread_name(self, tid: int) -> str:
        return f"CPU {tid - 1}"

    def _vcpu(self, tid: int):
        return self.vcpus[tid - 1]

    def _registers(self, tid: int) -> registers.VcpuRegisters:
        r = self._cache.get(tid)
        if r is None:
            r = self._cache[tid] = registers.VcpuRegisters(self._vcpu(tid).vcpu)
        return r

    def read_register(self, tid: int, number: int) -> bytes:
        return self._registers(tid).get(number)

    def write_register(self, tid: int, number: int, data: bytes) -> None:
        vcpu = self._vcpu(tid).vcpu
        self._kvm_pages = None
        r = self._registers(tid)
        changed = r.set(number, data)
        if changed == "regs":
            vcpu.set_regs(r.regs)
        elif changed == "sregs":
            vcpu.set_sregs(r.sregs)
        else:
            vcpu.set_fpu(r.fpu)

    def _paging(self, tid: int) -> PagingState:
        return PagingState.from_sregs(self._registers(tid).sregs)

    # --- memory and breakpoints -------------------------------------------------------

    def read_memory(self, tid: int, addr: int, length: int) -> bytes:
        return self.debug.read(self._paging(tid), addr, length) if length else b""

    def write_memory(self, tid: int, addr: int, data: bytes) -> None:
        self.debug.write(self._paging(tid), addr, data)

    def insert(self, type_: int, tid: int, addr: int, kind: int) -> bool:
        if type_ == SW_BREAK:
            if kind != 1:
                raise DebugError(f"an x86 breakpoint is 1 byte, not {kind}")
            how = self.debug.insert_breakpoint(self._paging(tid), addr)
            log.debug("breakpoint at %#x (%s)", addr, how)
        elif type_ == HW_BREAK:
            self.debug.insert_hw_breakpoint(addr)
        else:
            self.debug.insert_watchpoint(self._paging(tid), addr, kind, WATCH_KINDS[type_],
                                         self._pages_of_kvm())
        return True

    def remove(self, type_: int, tid: int, addr: int, kind: int) -> bool:
        if type_ == SW_BREAK:
            self.debug.remove_breakpoint(addr)
        elif type_ == HW_BREAK:
            self.debug.remove_hw_breakpoint(addr)
        else:
            self.debug.remove_watchpoint(addr, kind, WATCH_KINDS[type_])
        return True

    def _pages_of_kvm(self) -> dict[int, str]:
        """What KVM itself accesses for any vCPU (GuestDebug.kvm_pages), found once a stop:
        GDB inserts its watchpoints again before each resume."""
        if self._kvm_pages is None:
            self._kvm_pages = {}
            for t in self.vcpus:
                r = self._registers(t.vcpu.index + 1)
                for page, what in self.debug.kvm_pages(r.regs, r.sregs).items():
                    if what == "stack" or page not in self._kvm_pages:
                        self._kvm_pages[page] = what
        return self._kvm_pages

    # --- running and stopping -------------------------------------------------------------

    def _vcpu_stopped(self, thread, why: DebugStop) -> None:
        """From a vCPU thread, parked with `why`."""
        with self._lock:
            self._events.append((thread.vcpu.index, why))
            self._arrived.notify_all()
        try:
            os.write(self._wake_w, b".")
        except BlockingIOError:
            pass              # the server has a wake-up to read already

    def _stop_all(self) -> None:
        for t in self.vcpus:
            t.request_pause(DEBUG_HOLD)
        deadline = time.monotonic() + PAUSE_TIMEOUT
        for t in self.vcpus:
            if not t.wait_paused(max(0.0, deadline - time.monotonic())):
                log.warning("vcpu%d did not stop within %.0f s", t.vcpu.index, PAUSE_TIMEOUT)
        self._cache.clear()
        self._kvm_pages = None
        self.stopped = True

    def _stop(self, index: int, signal: int, why: DebugStop | None = None) -> Stop:
        tid = index + 1
        expedited = {n: self.read_register(tid, n) for n in registers.EXPEDITED}
        if why is not None and why.kind == FETCH:
            return Stop(tid, SIGSEGV, why, expedited,
                        f"akvm: CPU {index} runs code at {why.address:#x}, on a page a read or "
                        f"access watchpoint took from KVM, which cannot fetch instructions "
                        f"there: delete that watchpoint to go on\n")
        return Stop(tid, signal, why, expedited)

    def poll(self) -> Stop | None:
        """After wake_fd turned readable: the stop to report, if the machine stopped."""
        try:
            os.read(self.wake_fd, 512)
        except BlockingIOError:
            pass
        if self.stopped:
            return None
        with self._lock:
            if not self._events:
                return None
        self._stop_all()
        with self._lock:
            index, why = self._events.pop(0)
        return self._stop(index, SIGTRAP, why)

    def interrupt(self, tid: int) -> Stop:
        """Ctrl-C: stop every vCPU. The stop names thread `tid` (Session.interrupt_thread),
        unless a vCPU stopped on its own meanwhile: that stop is reported instead."""
        if not self.stopped:
            self._stop_all()
        with self._lock:
            if self._events:
                index, why = self._events.pop(0)
                return self._stop(index, SIGTRAP, why)
        return self._stop(tid - 1 if tid in self.threads() else 0, SIGINT)

    def _still_valid(self, index: int, why: DebugStop, plan: dict[int, str | None]) -> bool:
        """Whether a stop that waited in the queue still means something to GDB."""
        if why.kind == "step":
            return plan.get(index) == "s" and index in self._stepping
        if why.kind in ("swbreak", "hwbreak"):
            return self._at_breakpoint(index + 1)
        return True

    def _at_breakpoint(self, tid: int) -> bool:
        r = self._registers(tid)
        return self.debug.breakpoint_here(self._paging(tid), linear_ip(r.regs, r.sregs))

    def resume(self, actions: dict[int, str], default: str | None) -> Stop | None:
        """Run vCPUs: actions by thread id ("c" or "s"), `default` for the others (None:
        they stay stopped). A queued stop that still holds is reported instead."""
        plan = {t.vcpu.index: actions.get(t.vcpu.index + 1, default) for t in self.vcpus}
        for index, how in plan.items():
            if how == "s":
                self.debug.check_step(self._registers(index + 1).sregs)
        with self._lock:
            queued, self._events = self._events, []
        queued = [(i, why) for i, why in queued if self._still_valid(i, why, plan)]
        if queued:
            with self._lock:
                self._events[:0] = queued[1:]
            return self._stop(queued[0][0], SIGTRAP, queued[0][1])
        self.debug.commit()
        for index, how in plan.items():
            if how is not None:
                stop = self._step_over(index, how)
                if stop is not None:
                    return stop
        run = {i: how for i, how in plan.items() if how is not None}
        self._stepping = {i for i, how in run.items() if how == "s"}
        if run:
            self._run(run)
            return None
        return self._stop(0, SIGTRAP)         # nothing to run: still stopped

    def _run(self, plan: dict[int, str]) -> None:
        self._cache.clear()
        self._kvm_pages = None
        self.stopped = False
        for index, how in plan.items():
            self.debug.apply(self.vcpus[index], step=how == "s")
        for index in plan:
            self.vcpus[index].resume(DEBUG_HOLD)

    def _step_over(self, index: int, how: str) -> Stop | None:
        """A vCPU about to run from under one of our breakpoints (where it stopped)
        executes that instruction alone, the breakpoint out of the way, the other
        vCPUs held. Returns the stop to report now: the step, when a step was asked
        for or it ended on another breakpoint, or whatever else stopped it."""
        tid = index + 1
        if not self.debug.has_breakpoints() or not self._at_breakpoint(tid):
            return None
        thread = self.vcpus[index]
        r = self._registers(tid)
        ps, ip = self._paging(tid), linear_ip(r.regs, r.sregs)
        with self.debug.lifted(ps, ip):
            self.debug.apply(thread, step=True, skip=ip)
            self._cache.pop(tid, None)
            with self._lock:
                thread.resume(DEBUG_HOLD)
                deadline = time.monotonic() + STEP_OVER_TIMEOUT
                while not any(i == index for i, _ in self._events):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._arrived.wait(left)
                mine = [why for i, why in self._events if i == index]
                self._events = [e for e in self._events if e[0] != index]
            if not mine:          # still on that instruction (a HLT waiting?): stop it there
                thread.request_pause(DEBUG_HOLD)
                thread.wait_paused(PAUSE_TIMEOUT)
            self.debug.apply(thread)
        self._cache.pop(tid, None)
        if not mine:
            return None
        if mine[0].kind != "step":
            return self._stop(index, SIGTRAP, mine[0])      # a watchpoint, say
        if how == "s":
            return self._stop(index, SIGTRAP, mine[0])
        if self._at_breakpoint(tid):
            r = self._registers(tid)
            return self._stop(index, SIGTRAP, DebugStop("swbreak", linear_ip(r.regs, r.sregs)))
        return None

    # --- monitor ---------------------------------------------------------------------------

    def monitor(self, tid: int, command: str) -> str:
        words = command.split()
        if not words or words[0] == "help":
            return MONITOR_HELP
        try:
            if words[0] == "status":
                return self._status()
            if words[0] == "stats":
                return self.machine.format_stats() + "\n"
            if words[0] == "regs":
                r = self._registers(tid)
                return format_registers(r.regs, r.sregs) + "\n"
            if words[0] == "phys" and len(words) in (2, 3):
                addr = int(words[1], 0)
                length = int(words[2], 0) if len(words) == 3 else 64
                if not 0 < length <= 4096:
                    return "phys: LEN is 1 to 4096\n"
                return _hexdump(addr, self.debug.read_physical(addr, length))
            if words[0] == "v2p" and len(words) == 2:
                addr = int(words[1], 0)
                return f"{addr:#x} -> {self.debug.translate(self._paging(tid), addr):#x}\n"
        except ValueError:
            return f"bad number in '{command}'\n"
        except DebugError as e:
            return f"{e}\n"
        return f"unknown command '{command}' (monitor help)\n"

    def _status(self) -> str:
        code = self.machine.result
        lines = [f"akvm: {len(self.vcpus)} vCPUs, {self.machine.config.memory >> 20} MiB, "
                 f"{'stopped' if self.stopped else 'running'}"
                 + (f", ended: {code[1]}" if code else "")]
        for t in self.vcpus:
            tid = t.vcpu.index + 1
            if not self.stopped:
                lines.append(f"  CPU {t.vcpu.index}: running")
                continue
            r = self._registers(tid)
            mode = PagingState.from_sregs(r.sregs).mode
            bits = 64 if r.sregs.efer & (1 << 10) and r.sregs.cs.l else 32 if r.sregs.cs.db else 16
            lines.append(f"  CPU {t.vcpu.index}: rip {r.regs.rip:#x}, {bits}-bit, CPL {r.sregs.cs.dpl}, "
                         f"paging {mode}, cr3 {r.sregs.cr3:#x}")
        return "\n".join(lines) + "\n"


def _hexdump(addr: int, data: bytes) -> str:
    lines = []
    for off in range(0, len(data), 16):
        row = data[off:off + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{addr + off:016x}  {row.hex(' '):<47}  {text}")
    return "\n".join(lines) + "\n"
