"""What guest RAM holds at power-on, built on another CPU while the VM is built.

The kernel's segments and multiboot information and the ACPI and MP tables
depend only on the configuration, the kernel file and two facts about the
devices (their PCI INTx wiring, the IOMMU's address width). Building them
takes pyelftools and construct, whose imports cost more than the rest of
akvm's start-up; in a thread they would not overlap with building the VM
(both are Python under one GIL). So the `akvm` command forks a builder
first thing (BootImage.prepare): it imports the loaders while this process
imports the rest of akvm and parses the command line; start() sends it the
configuration, and it parses and places the kernel, recording the writes;
finish() sends it the device facts and gets back every write and the entry
registers; apply() makes the writes in guest RAM.

Without a fork (other threads running, where forking is unsafe, or no
process to spare) finish() does the same work in this process.
"""
from __future__ import annotations

import gc
import marshal
import os
import signal
import threading
from typing import BinaryIO, NamedTuple

from akvm.boot.files import BadFile, open_regular
from akvm.base.errors import ConfigError
from akvm.base.memory import GuestMemory, ram_ranges


class BootImageError(ConfigError):
    """Bad kernel or module: the message is one line for the user (exit status 2)."""


class EntryState(NamedTuple):
    """Multiboot's machine state at the kernel's entry (32-bit protected mode)."""
    entry: int   # EIP
    eax: int     # 0x2BADB002
    ebx: int     # guest-physical address of the multiboot information


class DeviceFacts(NamedTuple):
    """What the tables need to know about the devices built meanwhile."""
    pci_interrupts: tuple       # (device, pin, ioapic_pin) for each wired INTx pin
    dmar_width: int | None      # the IOMMU's host address width; None: no IOMMU


class Job(NamedTuple):
    """The part of a MachineConfig the builder needs (it crosses the pipe)."""
    kernel: str
    cmdline: str
    memory: int
    cpus: int
    modules: tuple              # (path, args) for each multiboot module

    @classmethod
    def of(cls, config) -> "Job":
        """From a MachineConfig."""
        return cls(config.kernel, config.cmdline, config.memory, config.cpus,
                   tuple((m.path, m.args) for m in config.modules))


class RamWrites:
    """The loaders' view of guest RAM (size, contains, write, zero) that records
    the writes instead of making them; replay() makes them in real RAM."""

    def __init__(self, size: int):
        self._ranges = ram_ranges(size)
        self.ops: list[tuple[int, bytes | int]] = []  # (gpa, data) or (gpa, length to zero)

    @property
    def size(self) -> int:
        return sum(length for _, length in self._ranges)

    def contains(self, gpa: int, length: int = 1) -> bool:
        return gpa >= 0 and length >= 0 and any(
            base <= gpa and gpa + length <= base + size for base, size in self._ranges)

    def write(self, gpa: int, data) -> None:
        self.ops.append((gpa, bytes(data)))

    def zero(self, gpa: int, length: int) -> None:
        self.ops.append((gpa, length))


def replay(ops, memory: GuestMemory) -> None:
    for gpa, op in ops:
        if isinstance(op, int):
            memory.zero(gpa, op)
        else:
            memory.write(gpa, op)


def _import_loaders() -> None:
    import akvm.boot.multiboot  # noqa: F401
    import akvm.tables.acpi  # noqa: F401
    import akvm.tables.mptable  # noqa: F401


class _Loader:
    """The work itself: the kernel when constructed, the tables when finished."""

    def __init__(self, job: Job):
        from akvm.boot import multiboot
        from akvm.tables import layout
        self.job = job
        self.kernel_ram = RamWrites(job.memory)
        modules = [multiboot.BootModule(path, args) for path, args in job.modules]
        try:
            image = multiboot.parse(multiboot.load_file(job.kernel), job.kernel)
            boot = multiboot.load(image, self.kernel_ram, layout.memory_map(job.memory),
                                  cmdline=job.cmdline, modules=modules)
        except multiboot.BootError as e:
            raise BootImageError(str(e)) from None
        self.entry = EntryState(boot.entry, boot.eax, boot.ebx)

    def finish(self, facts: DeviceFacts) -> tuple[list, EntryState]:
        from akvm.tables.acpi import build_acpi
        from akvm.tables.mptable import PciInterrupt, build_mptable
        tables = RamWrites(self.job.memory)
        extra = []
        if facts.dmar_width is not None:
            from akvm.tables.dmar import build_dmar
            extra.append(build_dmar(facts.dmar_width))
        build_acpi(tables, self.job.cpus, extra_tables=extra)
        build_mptable(tables, self.job.cpus,
                      pci_interrupts=[PciInterrupt(*p) for p in facts.pci_interrupts])
        return tables.ops + self.kernel_ram.ops, self.entry


PIPE_LIMIT = 64 << 20


def _check_readable(path: str) -> int:
    """The kernel file's size; one akvm cannot use is a BootImageError now."""
    try:
        fd = open_regular(path, "kernel")
    except BadFile as e:
        raise BootImageError(str(e)) from None
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0                    # the loader reports it, in one line


class BootImage:
    """A boot image being built (by a child process, or later in this one)."""

    def __init__(self):
        self.job: Job | None = None
        self._pid: int | None = None
        self._to_child = self._from_child = -1
        self.ops: list = []

    @classmethod
    def prepare(cls, fork: bool | None = None) -> "BootImage":
        """Fork the builder, which starts importing the loaders now.
        fork=None forks only while this is the process's one thread."""
        image = cls()
        if fork is None:
            fork = threading.active_count() == 1
        if fork:
            image._fork()
        return image

    def start(self, config) -> None:
        """Give the builder the job a MachineConfig describes; a kernel that cannot be opened is reported now.
        A kernel and modules of more than PIPE_LIMIT bytes are loaded here: through
        the pipe they would cost more than the builder saves."""
        size = _check_readable(config.kernel)
        self.job = Job.of(config)
        if self._pid is not None:
            if size + sum(_file_size(m.path) for m in config.modules) > PIPE_LIMIT:
                self.cancel()
            else:
                self._send(self.job)

    def _send(self, message: tuple) -> None:
        data = memoryview(marshal.dumps(tuple(message)))
        try:
            while data:
                data = data[os.write(self._to_child, data):]
        except BrokenPipeError:
            pass                            # it stopped early: its reply says why

    def _fork(self) -> None:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        # SIGINT blocked across the fork: the child must never run the
        # caller's handler (a KeyboardInterrupt would unwind into its code).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pid = os.fork()
        except OSError:                                # no process to spare: work here
            pid = -1
        if pid == 0:                                   # the child: never returns
            status = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)    # a Ctrl-C ends it quietly
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                os.close(down_w)
                os.close(up_r)
                status = self._child(down_r, up_w)
            finally:
                os._exit(status)    # no atexit handlers, no stdio flush: they are the parent's
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if pid < 0:
            for fd in (down_r, down_w, up_r, up_w):
                os.close(fd)
            return
        os.close(down_r)
        os.close(up_w)
        self._pid, self._to_child, self._from_child = pid, down_w, up_r

    @staticmethod
    def _child(down: int, up: int) -> int:
        gc.disable()            # short-lived: collections would only copy the parent's pages
        with os.fdopen(down, "rb") as requests:
            reply = BootImage._serve(requests)
        if reply is None:
            return 0
        try:
            data = marshal.dumps(reply)
        except ValueError as e:                     # e.g. an object over 2 GiB
            data = marshal.dumps(("crash", f"the reply cannot be sent: {e}"))
        with os.fdopen(up, "wb") as f:
            f.write(data)
        return 0

    @staticmethod
    def _serve(requests: BinaryIO) -> tuple | None:
        """The builder's whole life; None when the parent gave up."""
        try:
            _import_loaders()
            try:
                loader = _Loader(Job(*marshal.load(requests)))
                facts = DeviceFacts(*marshal.load(requests))
            except EOFError:
                return None
            ops, entry = loader.finish(facts)
            return ("ok", ops, tuple(entry))
        except BootImageError as e:
            return ("error", str(e))
        except BaseException:
            import traceback
            return ("crash", traceback.format_exc())

    def finish(self, facts: DeviceFacts) -> EntryState:
        """Wait for the image; its writes are then in self.ops."""
        if self._pid is None:
            self.ops, entry = _Loader(self.job).finish(facts)
            return entry
        try:
            self._send(facts)
            os.close(self._to_child)
            self._to_child = -1
            with os.fdopen(self._from_child, "rb") as f:
                self._from_child = -1
                data = f.read()
        except BaseException:
            self.cancel()
            raise
        # It exits once it has replied; reap it without waiting for its teardown.
        threading.Thread(target=_reap, args=(self._pid,), name="boot-image-reaper",
                         daemon=True).start()
        self._pid = None
        try:
            kind, *rest = marshal.loads(data)
        except (EOFError, ValueError, TypeError):
            raise RuntimeError("the boot image builder died without a reply") from None
        if kind == "error":
            raise BootImageError(rest[0])
        if kind == "crash":
            raise RuntimeError(f"the boot image builder failed:\n{rest[0]}")
        self.ops, entry = rest
        return EntryState(*entry)

    def apply(self, memory: GuestMemory) -> None:
        replay(self.ops, memory)
        self.ops = []

    def cancel(self) -> None:
        """Stop and reap the builder, if there is one; idempotent."""
        for fd in (self._to_child, self._from_child):
            if fd >= 0:
                os.close(fd)
        self._to_child = self._from_child = -1
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(self._pid)
            self._pid = None


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass                        # SIGCHLD ignored by whoever started us: already reaped
