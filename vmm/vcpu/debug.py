"""Guest debugging: breakpoints, watchpoints and single-step, for a debugger (akvm.gdb).

GuestDebug is the state a debugger attaches to a machine's vCPU threads
(VcpuThread.debugger); it knows nothing of GDB. Addresses are guest
linear addresses (segment bases are not applied), translated through the
page tables of the vCPU the caller names, without permission checks and
without setting accessed or dirty bits (akvm.vcpu.paging.INSPECT).

How each feature is built follows what KVM does on this host (kvm_pvm,
measured; README "Debugging the guest"):

- Single-step: KVM_GUESTDBG_SINGLESTEP with BLOCKIRQ (an interrupt that
  becomes pending is not stepped into). KVM stops after each ring-0
  instruction with a debug exit, but an instruction that exits to
  userspace (port I/O, MMIO) ends with that exit and no debug exit:
  VcpuThread counts any exit as the end of a step.
- Software breakpoints: an int3 written at the guest-physical address;
  reads through GuestDebug show the original byte. A ring-0 int3 ends
  KVM_RUN as an emulation failure (with or without USE_SW_BP): one at a
  breakpoint is a stop, any other still goes to the completer, which
  delivers the guest's #BP. Where KVM intercepts #BP (USE_SW_BP on VMX
  or SVM) the debug exit is handled the same way. A ring-3 int3 on
  kvm_pvm goes straight to the guest (no exit at all), so a breakpoint on
  a page user code can reach is refused there: the guest would get the
  #BP. So is a single step of ring-3 code: its #DB would be the guest's.
- A breakpoint on an address nothing maps yet (the guest still in 32-bit
  code, paging off) takes a debug register on that linear address: the
  execution breakpoint fires once code runs there, in any mode.
  Execution breakpoints stop at the instruction, and RFLAGS.RF does not
  carry the vCPU past one here: a debugger steps over with the register
  cleared for that step (`apply(..., skip=address)`).
- Watchpoints: debug-register data breakpoints never fire on this host,
  so a watched page is taken from the guest's direct access instead. For
  writes (WATCH) it gets a KVM_MEM_READONLY memory slot carved out of the
  RAM slot, so the guest's writes exit as MMIO whatever the ring; for reads
  (RWATCH) or both (AWATCH) it gets no memory slot at all, so every read and
  write does (the hole wins on a page with both). A bus device (WatchedPage)
  does the access on RAM and stops the vCPU, after the instruction, when it
  touched a watched range of a kind that matches.
  KVM accesses some pages itself, not through exits: the paging structures,
  GDT, IDT and TSS (read) and the stack (interrupt frames written). Without
  a slot there, or read-only under the stack, the vCPU faults (a triple
  fault here), so a watchpoint on such a page of any vCPU (as it is at the
  stop: other address spaces and stacks are not known) is refused. KVM
  cannot fetch instructions from a page with no slot either: that is an
  emulation failure (in ring 0 and ring 3 here), reported as a FETCH stop.
  Accesses by DMA, by KVM itself and by akvm's completer are not seen.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

from akvm.base import kvm
from akvm.base.bus import Bus
from akvm.base.memory import GuestMemory, GuestMemoryError
from akvm.vcpu.paging import (BP, CR0_PE, CR0_PG, DB, INSPECT, PAGE_SIZE, Access, GuestFault,
                              PagingState, table_pages, translate)

INT3 = 0xCC
NUM_DEBUG_REGISTERS = 4
DR6_BS = 1 << 14                 # single-step
MAX_WATCH_LENGTH = 16 * PAGE_SIZE
# Watchpoint kinds, as GDB's stop replies name them: writes, reads, either.
WATCH, RWATCH, AWATCH = "watch", "rwatch", "awatch"
FETCH = "fetch"                  # a stop: code on a page a read or access watchpoint took away
# What a watched page's memory slot becomes: read-only (only writes exit), or none (all do).
READONLY, HOLE = "read-only", "hole"
# Where ring 3 runs natively under kvm_pvm, its int3 (and its debug traps) never exit.
RING3_TRAPS_EXIT = not os.path.isdir("/sys/module/kvm_pvm")


def dr7_enable(index: int) -> int:
    """DR7's G<index> bit: an execution breakpoint (R/W and LEN 00) in DR<index>."""
    return 2 << (2 * index)


@dataclass(frozen=True)
class DebugStop:
    """Why a vCPU stopped for the debugger."""
    kind: str          # "step", "swbreak", "hwbreak", WATCH, RWATCH, AWATCH, FETCH, "trap"
    address: int | None = None   # the breakpoint's, the watched range's, or (FETCH) the code's


STEP = DebugStop("step")


class DebugError(Exception):
    """A request the guest's state cannot satisfy: unmapped, not RAM, no register left."""


def linear_ip(regs, sregs) -> int:
    """The linear address of the next instruction (CS base applied outside 64-bit mode)."""
    if sregs.efer & (1 << 10) and sregs.cs.l:
        return regs.rip
    return (sregs.cs.base + (regs.rip & 0xFFFF_FFFF)) & 0xFFFF_FFFF


def linear_sp(regs, sregs) -> int:
    """The linear address of the top of the stack (SS base applied outside 64-bit mode)."""
    if sregs.efer & (1 << 10) and sregs.cs.l:
        return regs.rsp
    return (sregs.ss.base + (regs.rsp & 0xFFFF_FFFF)) & 0xFFFF_FFFF


@dataclass
class _SwBreak:
    original: int
    addresses: set[int]


class WatchedPage:
    """The bus device behind a watched page: does the guest's accesses that exit (writes to
    a read-only page, reads and writes of a page with no slot at all), reports hits."""

    def __init__(self, debug: "GuestDebug", gpa: int):
        self.debug = debug
        self.gpa = gpa

    def read(self, offset: int, size: int) -> int:
        gpa = self.gpa + offset
        value = int.from_bytes(self.debug.memory.read(gpa, size), "little")
        self._hit(gpa, size, write=False)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        gpa = self.gpa + offset
        self.debug.memory.write(gpa, value.to_bytes(8, "little")[:size])
        self._hit(gpa, size, write=True)

    def _hit(self, gpa: int, size: int, write: bool) -> None:
        hit = self.debug.watch_hit(gpa, size, write)
        if hit is not None:
            thread = threading.current_thread()     # the VcpuThread doing the access
            if hasattr(thread, "debug_event") and thread.debug_event is None:
                thread.debug_event = hit


class GuestDebug:
    """Breakpoints and watchpoints of one machine, and each vCPU's KVM_SET_GUEST_DEBUG."""

    def __init__(self, memory: GuestMemory, vm: kvm.Vm, mmio_bus: Bus):
        self.memory = memory
        self.vm = vm
        self.mmio_bus = mmio_bus
        self.on_stop = None                  # on_stop(thread, DebugStop): a vCPU parked
        self._lock = threading.RLock()
        self._sw: dict[int, _SwBreak] = {}   # guest-physical address -> the int3 there
        self._sw_at: dict[int, int] = {}     # linear address -> guest-physical address
        self._dr: list[tuple[str, int] | None] = [None] * NUM_DEBUG_REGISTERS  # ("hw"|"sw", linear)
        # (WATCH|RWATCH|AWATCH, linear, length) -> its (gpa, n) pieces
        self._watches: dict[tuple[str, int, int], list[tuple[int, int]]] = {}
        self._pages: dict[int, str] = {}           # watched page gpa -> READONLY or HOLE, as set
        self._ranges: dict[int, object] = {}       # watched page gpa -> its bus range
        self._slot_ids: dict[int, list[int]] = {}  # RAM slot index -> KVM slot ids now used for it
        self._applied: dict[int, tuple] = {}       # vCPU index -> what KVM_SET_GUEST_DEBUG was given
        system = vm.system
        self.readonly_memory = bool(system.check_extension(kvm.KVM_CAP_READONLY_MEM))
        self._control_mask = system.check_extension(kvm.KVM_CAP_SET_GUEST_DEBUG2) or (
            kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP |
            kvm.KVM_GUESTDBG_USE_SW_BP | kvm.KVM_GUESTDBG_USE_HW_BP)
        # Split-off slots take ids from the top, far from RAM's and anyone else's.
        self._free_ids: list[int] = []
        self._next_id = (system.check_extension(kvm.KVM_CAP_NR_MEMSLOTS) or 32) - 1

    # --- addresses --------------------------------------------------------------

    def translate(self, ps: PagingState, linear: int) -> int:
        """The guest-physical address of `linear`, or DebugError when nothing maps it."""
        if not ps.long_mode and linear >> 32:
            raise DebugError(f"{linear:#x} is above 4 GiB and the vCPU is not in long mode")
        try:
            return translate(self.memory, ps, linear, INSPECT, set_accessed=False)
        except (GuestFault, GuestMemoryError) as e:
            raise DebugError(f"{linear:#x} is not mapped ({e})") from None

    def _pieces(self, ps: PagingState, linear: int, length: int, partial: bool):
        """(gpa, n) page pieces of RAM for [linear, linear + length): all of them, or
        with `partial` as many as can be had from the start (DebugError if none)."""
        pieces = []
        wrap = 1 << (64 if ps.long_mode else 32)
        while length > 0:
            n = min(length, PAGE_SIZE - (linear & (PAGE_SIZE - 1)))
            try:
                gpa = self.translate(ps, linear)
                if not self.memory.contains(gpa, n):
                    raise DebugError(f"{linear:#x} -> {gpa:#x} is not RAM")
            except DebugError:
                if partial and pieces:
                    break
                raise
            pieces.append((gpa, n))
            linear = (linear + n) % wrap
            length -= n
        return pieces

    # --- memory, as the guest would see it without the debugger's int3s ----------

    def read(self, ps: PagingState, linear: int, length: int) -> bytes:
        """Up to `length` bytes at `linear`: fewer when a later page is unmapped or not
        RAM, DebugError when the first is."""
        with self._lock:
            out = bytearray()
            for gpa, n in self._pieces(ps, linear, length, partial=True):
                out += self.read_physical(gpa, n)
            return bytes(out)

    def write(self, ps: PagingState, linear: int, data: bytes) -> None:
        """All of `data` at `linear`, or nothing (DebugError)."""
        with self._lock:
            off = 0
            for gpa, n in self._pieces(ps, linear, len(data), partial=False):
                self.write_physical(gpa, data[off:off + n])
                off += n

    def read_physical(self, gpa: int, length: int) -> bytes:
        try:
            data = bytearray(self.memory.read(gpa, length))
        except GuestMemoryError as e:
            raise DebugError(str(e)) from None
        with self._lock:
            for at, bp in self._sw.items():
                if gpa <= at < gpa + length:
                    data[at - gpa] = bp.original
        return bytes(data)

    def write_physical(self, gpa: int, data: bytes) -> None:
        """Write RAM; bytes under an int3 become its original and the int3 stays."""
        if not self.memory.contains(gpa, len(data)):
            raise DebugError(f"{gpa:#x}+{len(data):#x} is not RAM")
        data = bytearray(data)
        with self._lock:
            for at, bp in self._sw.items():
                if gpa <= at < gpa + len(data):
                    bp.original = data[at - gpa]
                    data[at - gpa] = INT3
            self.memory.write(gpa, data)

    # --- breakpoints -------------------------------------------------------------

    def insert_breakpoint(self, ps: PagingState, linear: int) -> str:
        """A software breakpoint: "int3" when written into RAM, "debug register" when
        the address is not mapped yet. DebugError on MMIO or with no register left."""
        with self._lock:
            if linear in self._sw_at or ("sw", linear) in self._dr:
                return "int3" if linear in self._sw_at else "debug register"
            try:
                gpa = self.translate(ps, linear)
            except DebugError:
                self._take_register("sw", linear)
                return "debug register"
            if not self.memory.contains(gpa):
                raise DebugError(f"{linear:#x} -> {gpa:#x} is not RAM")
            if not RING3_TRAPS_EXIT and self._user_page(ps, linear):
                raise DebugError(f"{linear:#x} is in a user page: an int3 there would go to "
                                 f"the guest (ring 3 never exits to akvm on kvm_pvm)")
            bp = self._sw.get(gpa)
            if bp is None:
                bp = self._sw[gpa] = _SwBreak(self.memory.read(gpa, 1)[0], set())
                self.memory.write(gpa, bytes([INT3]))
            bp.addresses.add(linear)
            self._sw_at[linear] = gpa
            return "int3"

    def _user_page(self, ps: PagingState, linear: int) -> bool:
        if not ps.cr0 & CR0_PG:
            return False
        try:
            translate(self.memory, ps, linear, Access(user=True), set_accessed=False)
            return True
        except (GuestFault, GuestMemoryError):
            return False

    def remove_breakpoint(self, linear: int) -> bool:
        with self._lock:
            gpa = self._sw_at.pop(linear, None)
            if gpa is None:
                return self._free_register("sw", linear)
            bp = self._sw[gpa]
            bp.addresses.discard(linear)
            if not bp.addresses:
                del self._sw[gpa]
                if self.memory.read(gpa, 1)[0] == INT3:    # else the guest rewrote it
                    self.memory.write(gpa, bytes([bp.original]))
            return True

    def insert_hw_breakpoint(self, linear: int) -> None:
        with self._lock:
            if ("hw", linear) not in self._dr:
                self._take_register("hw", linear)

    def remove_hw_breakpoint(self, linear: int) -> bool:
        with self._lock:
            return self._free_register("hw", linear)

    def _take_register(self, kind: str, linear: int) -> None:
        for i, slot in enumerate(self._dr):
            if slot is None:
                self._dr[i] = (kind, linear)
                return
        raise DebugError("all four debug registers are in use")

    def _free_register(self, kind: str, linear: int) -> bool:
        if (kind, linear) in self._dr:
            self._dr[self._dr.index((kind, linear))] = None
            return True
        return False

    @contextlib.contextmanager
    def lifted(self, ps: PagingState, linear: int):
        """The int3 at `linear`, if any, replaced by its original byte meanwhile."""
        with self._lock:
            try:
                gpa = self.translate(ps, linear)
            except DebugError:
                gpa = None
            bp = self._sw.get(gpa)
            if bp is not None and self.memory.read(gpa, 1)[0] == INT3:
                self.memory.write(gpa, bytes([bp.original]))
            else:
                bp = None
        try:
            yield
        finally:
            with self._lock:
                if bp is not None and self._sw.get(gpa) is bp:
                    self.memory.write(gpa, bytes([INT3]))

    def check_step(self, sregs) -> None:
        """DebugError where a single step cannot stop: in ring 3 on kvm_pvm, where the
        step's #DB would be delivered to the guest instead."""
        if not RING3_TRAPS_EXIT and sregs.cr0 & 1 and sregs.cs.selector & 3 == 3:
            raise DebugError("cannot single-step ring 3 here: its #DB would go to the guest "
                             "(kvm_pvm runs ring 3 natively)")

    def has_breakpoints(self) -> bool:
        return bool(self._sw) or any(slot is not None for slot in self._dr)

    def breakpoint_here(self, ps: PagingState, linear: int) -> bool:
        """Whether the instruction at `linear` is under one of our breakpoints."""
        with self._lock:
            if any(slot is not None and slot[1] == linear for slot in self._dr):
                return True
            if not self._sw:
                return False
            try:
                return self.translate(ps, linear) in self._sw
            except DebugError:
                return False

    # --- watchpoints ---------------------------------------------------------------

    def insert_watchpoint(self, ps: PagingState, linear: int, length: int, kind: str = WATCH,
                          kvm_pages: dict[int, str] | None = None) -> None:
        """Stop after any write (WATCH), read (RWATCH) or either (AWATCH) of
        [linear, linear + length); it takes effect at commit(). DebugError when that
        would take from KVM a page it needs (`kvm_pages`, from kvm_pages())."""
        if kind == WATCH and not self.readonly_memory:
            raise DebugError("this KVM cannot write-protect guest memory (KVM_CAP_READONLY_MEM)")
        if not 0 < length <= MAX_WATCH_LENGTH:
            raise DebugError(f"a watched range is 1 to {MAX_WATCH_LENGTH} bytes")
        with self._lock:
            pieces = self._pieces(ps, linear, length, partial=False)
            for gpa, _ in pieces:
                what = kvm_pages.get(gpa & ~(PAGE_SIZE - 1)) if kvm_pages else None
                if what == "stack":
                    raise DebugError(f"{linear:#x} is on the page of a vCPU's stack, where KVM "
                                     f"itself writes interrupt frames: watched, the vCPU would "
                                     f"fault")
                if what is not None and kind != WATCH:
                    raise DebugError(f"{linear:#x} is on a page of a vCPU's {what}, which KVM "
                                     f"reads itself: watched for reads, the vCPU would fault "
                                     f"(a write watchpoint works)")
            self._watches[(kind, linear, length)] = pieces

    def kvm_pages(self, regs, sregs) -> dict[int, str]:
        """The guest-physical pages KVM accesses itself for a vCPU in this state, by what
        they hold: its paging structures, GDT, IDT and TSS (read), and the page of its
        stack (interrupt frames written). With no memory slot under one, or a read-only
        one under the stack, the vCPU does not exit but faults (a triple fault, measured)."""
        ps = PagingState.from_sregs(sregs)
        pages = dict.fromkeys(table_pages(self.memory, ps), "page tables")
        areas = [("IDT", sregs.idt.base, sregs.idt.limit + 1), ("stack", linear_sp(regs, sregs), 1)]
        if sregs.cr0 & CR0_PE:                   # real mode has no GDT or TSS
            areas[:0] = [("GDT", sregs.gdt.base, sregs.gdt.limit + 1),
                         ("TSS", sregs.tr.base, sregs.tr.limit + 1)]
        for what, base, size in areas:
            try:
                for gpa, _ in self._pieces(ps, base, min(size, MAX_WATCH_LENGTH), partial=True):
                    pages[gpa & ~(PAGE_SIZE - 1)] = what
            except DebugError:
                pass                             # not mapped: nothing of it to take away
        return pages

    def remove_watchpoint(self, linear: int, length: int, kind: str = WATCH) -> bool:
        with self._lock:
            return self._watches.pop((kind, linear, length), None) is not None

    def watch_hit(self, gpa: int, size: int, write: bool) -> DebugStop | None:
        """The stop a guest write (or read) of [gpa, gpa + size) makes, or None."""
        with self._lock:
            for (kind, linear, _), pieces in self._watches.items():
                if kind == (RWATCH if write else WATCH):
                    continue
                for at, n in pieces:
                    if at < gpa + size and gpa < at + n:
                        return DebugStop(kind, linear)
        return None

    def commit(self) -> None:
        """Give each watched page what its watchpoints need: no memory slot at all when
        one watches reads, else a read-only slot. Only while no vCPU runs: a memory
        slot being replaced is briefly absent. Removing and re-inserting a watchpoint
        between two runs (as GDB does at every stop) costs nothing."""
        with self._lock:
            want: dict[int, str] = {}                # page gpa -> HOLE or READONLY
            for (kind, _, _), pieces in self._watches.items():
                for gpa, _ in pieces:
                    page = gpa & ~(PAGE_SIZE - 1)
                    want[page] = HOLE if kind != WATCH or want.get(page) == HOLE else READONLY
            have = self._pages
            if want == have:
                return
            for page in sorted(want.keys() - self._ranges.keys()):
                self._ranges[page] = self.mmio_bus.register(page, PAGE_SIZE,
                                                            WatchedPage(self, page),
                                                            "gdb watchpoint")
            for slot in self.memory.slots:
                inside = lambda pages: {p: m for p, m in pages.items() if slot.gpa <= p < slot.end}
                if inside(want) != inside(have):
                    self._program_slot(slot, inside(want))
            for page in sorted(self._ranges.keys() - want.keys()):
                self.mmio_bus.unregister(self._ranges.pop(page))
            self._pages = want

    def _program_slot(self, slot, pages: dict[int, str]) -> None:
        """Replace a RAM slot's KVM memory slots by pieces: `pages` read-only or left out."""
        pieces, at = [], slot.gpa                    # (gpa, size, READONLY, HOLE or None: RAM)
        for page in sorted(pages):
            if page > at:
                pieces.append((at, page - at, None))
            if pieces and pieces[-1][2] == pages[page] and pieces[-1][0] + pieces[-1][1] == page:
                pieces[-1] = (pieces[-1][0], pieces[-1][1] + PAGE_SIZE, pages[page])
            else:
                pieces.append((page, PAGE_SIZE, pages[page]))
            at = page + PAGE_SIZE
        if at < slot.end:
            pieces.append((at, slot.end - at, None))
        mapped = [piece for piece in pieces if piece[2] != HOLE]
        old = self._slot_ids.get(slot.index, [slot.index])
        spare = old[1:]
        fresh = self._next_id + 1 - len(self.memory.slots)     # ids _slot_id() can still make
        if len(mapped) - 1 > len(spare) + len(self._free_ids) + fresh:
            raise DebugError("no KVM memory slot left to watch one more page")
        ids = [slot.index] + [spare.pop() if spare else self._slot_id() for _ in mapped[1:]]
        ids = ids[:len(mapped)]                  # none when the whole slot is one hole
        host = self.memory.host_address(slot)
        for sid in old:
            self.vm.set_user_memory_region(sid, slot.gpa, 0, host)      # size 0: delete
        self._free_ids += spare
        self._slot_ids[slot.index] = ids
        for sid, (gpa, size, mode) in zip(ids, mapped):
            self.vm.set_user_memory_region(sid, gpa, size, host + gpa - slot.gpa,
                                           kvm.KVM_MEM_READONLY if mode == READONLY else 0)

    def _slot_id(self) -> int:
        if self._free_ids:
            return self._free_ids.pop()
        self._next_id -= 1
        return self._next_id + 1

    # --- the vCPUs -----------------------------------------------------------------

    def apply(self, thread, step: bool = False, skip: int | None = None) -> None:
        """KVM_SET_GUEST_DEBUG for a parked vCPU: our breakpoints (but a debug register
        on `skip`, being stepped over), single-step when `step`."""
        with self._lock:
            control, regs = 0, [0] * 8
            for i, slot in enumerate(self._dr):
                if slot is not None and slot[1] != skip:
                    regs[i] = slot[1]
                    regs[7] |= dr7_enable(i)
            if regs[7]:
                control |= kvm.KVM_GUESTDBG_USE_HW_BP
            if self._sw:
                control |= kvm.KVM_GUESTDBG_USE_SW_BP
            if step:
                control |= kvm.KVM_GUESTDBG_SINGLESTEP | kvm.KVM_GUESTDBG_BLOCKIRQ
            if control:
                control |= kvm.KVM_GUESTDBG_ENABLE
            control &= self._control_mask
            key = (control, tuple(regs))
            index = thread.vcpu.index
            # kvm_pvm sets the guest's TF when this is called and a guest POPF or IRET
            # may clear it: a step always calls it again.
            if step or self._applied.get(index, (0, (0,) * 8)) != key:
                thread.vcpu.set_guest_debug(control, regs)
                self._applied[index] = key
            thread.stepping = step

    def clear(self) -> None:
        """Take every breakpoint and watchpoint out (commit() and apply() still to do)."""
        with self._lock:
            for linear in list(self._sw_at):
                self.remove_breakpoint(linear)
            self._dr = [None] * NUM_DEBUG_REGISTERS
            self._watches.clear()

    # --- called by vCPU threads -----------------------------------------------------

    def debug_exit(self, thread, arch: kvm.kvm_debug_exit_arch) -> DebugStop | None:
        """A KVM_EXIT_DEBUG: which breakpoint, or the end of a step."""
        if arch.exception == DB:
            with self._lock:
                for i, slot in enumerate(self._dr):
                    if arch.dr6 & (1 << i) and slot is not None:
                        return DebugStop("swbreak" if slot[0] == "sw" else "hwbreak", slot[1])
            return STEP if arch.dr6 & DR6_BS else DebugStop("trap")
        if arch.exception == BP:          # where KVM intercepts #BP (USE_SW_BP on VMX/SVM)
            hit = self.breakpoint_at(thread)
            if hit is not None:
                return hit
            if thread.completer is not None and thread.completer(thread):
                return None               # the guest's own int3: its #BP delivered
        return DebugStop("trap")

    def breakpoint_at(self, thread) -> DebugStop | None:
        """The stop for an emulation failure at one of our int3s, or None."""
        if not self._sw:
            return None
        vcpu = thread.vcpu
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
        linear = linear_ip(regs, sregs)
        try:
            gpa = self.translate(PagingState.from_sregs(sregs), linear)
        except DebugError:
            return None
        with self._lock:
            if gpa in self._sw and self.memory.read(gpa, 1)[0] == INT3:
                return DebugStop("swbreak", linear)
        return None

    def fetch_stop(self, thread) -> DebugStop | None:
        """The stop for an emulation failure at an instruction on a page a read or access
        watchpoint left without a memory slot (KVM cannot fetch from it), or None."""
        if HOLE not in self._pages.values():
            return None
        regs, sregs = thread.vcpu.get_regs(), thread.vcpu.get_sregs()
        ps, linear = PagingState.from_sregs(sregs), linear_ip(regs, sregs)
        with self._lock:
            for at in (linear, linear + 14):     # its first and (at most 15 bytes) last byte
                try:
                    gpa = self.translate(ps, at)
                except DebugError:
                    continue
                if self._pages.get(gpa & ~(PAGE_SIZE - 1)) == HOLE:
                    return DebugStop(FETCH, linear)
        return None

    def stopped(self, thread, event: DebugStop) -> None:
        if self.on_stop is not None:
            self.on_stop(thread, event)
