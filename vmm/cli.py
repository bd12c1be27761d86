"""The `akvm` command line.

Every failure the user can cause (bad options, missing files, no /dev/kvm)
ends with one line on stderr and exit status 2; how a guest run ended is
the exit status documented in README.md (akvm.base.exitcode.ExitCode).
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys

from akvm import __version__
from akvm.base.outqueue import TextOutput
from akvm.boot.image import BootImage
from akvm.config import (GDB_DEFAULT, ConfigError, MachineConfig, parse_cpus, parse_gdb,
                         parse_memory, parse_module)
from akvm.devicetable import help_text, parse_device, parse_iommu
from akvm.base.exitcode import ExitCode

# How long akvm's closing lines may wait for a stalled stderr before the process exits.
STDERR_FLUSH_S = 0.25

EPILOG = """\
serial console: Ctrl-A x quits, Ctrl-A h shows the escape keys.
exit status: 0 poweroff or quit, 2 bad input, 3 guest reset,
4 triple fault, 5 guest error (see README.md)."""


class LogFormatter(logging.Formatter):
    """`akvm: iommu: message`: the component's logger name without the package's."""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name.removeprefix("akvm.")
        return f"akvm: {name}: {super().format(record)}"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, sized to the terminal as shutil.get_terminal_size() would (COLUMNS,
    then stdout's width, else 80) without importing shutil: argparse makes one formatter
    per option while the parser is built, so every start, a restore's too, paid shutil's
    import (about 3 ms)."""

    def __init__(self, prog: str):
        try:
            columns = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(1).columns
            except OSError:
                columns = 0
        super().__init__(prog, width=(columns or 80) - 2)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2, as for every other bad input
        self.exit(ExitCode.USAGE, f"akvm: error: {message}\n")


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (made once: --restore asks it for the defaults too)."""
    parser = _Parser(prog="akvm", description="Run a kernel in a KVM virtual machine.",
                     epilog=EPILOG, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"akvm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="boot a kernel", epilog=f"{help_text()}\n\n{EPILOG}",
                         formatter_class=_Formatter)
    run.add_argument("--kernel", metavar="PATH",
                     help="Multiboot kernel (ELF32/ELF64, or with the a.out kludge); "
                          "default: the bundled guest kernel, built with make on demand")
    run.add_argument("--cmdline", default="", metavar="STR", help="kernel command line")
    run.add_argument("--memory", "-m", default="512M", metavar="SIZE",
                     help="guest RAM, e.g. 512M or 2G (default 512M)")
    run.add_argument("--cpus", default="1", metavar="N", help="number of vCPUs (default 1)")
    run.add_argument("--serial", metavar="BACKEND",
                     help="COM1 backend: stdio, file:PATH, unix:PATH or none (default stdio)")
    run.add_argument("--module", action="append", default=[], metavar="PATH[,ARGS]",
                     help="a Multiboot module, with its command line after the comma; repeatable")
    run.add_argument("--device", action="append", default=[], metavar="KIND[,KEY=VALUE...]",
                     help="add a device (kinds and options below); repeatable")
    run.add_argument("--iommu", metavar="vtd[,KEY=VALUE...]",
                     help="an IOMMU in front of the PCI devices (options below)")
    run.add_argument("--control", metavar="unix:PATH",
                     help="a control socket: JSON commands in QMP's shape (see README)")
    run.add_argument("--gdb", nargs="?", const=GDB_DEFAULT, metavar="tcp:[HOST]:PORT",
                     help="serve the GDB remote protocol (bare --gdb: tcp:127.0.0.1:1234; "
                          "port 0: any free one); see README, Debugging the guest")
    run.add_argument("--gdb-wait", action="store_true",
                     help="no vCPU runs until GDB continues (implies --gdb)")
    run.add_argument("--stats", action="store_true", help="print exit and device counters at exit")
    run.add_argument("--restore", metavar="DIR",
                     help="resume the machine a snapshot saved (snapshot-save on --control); "
                          "its configuration is the snapshot's: only --serial, --control, --gdb "
                          "and --stats may be given with it")
    run.add_argument("--restore-force", action="store_true",
                     help="restore even when a disk image changed since the snapshot")
    run.add_argument("--sandbox", choices=("on", "off"), default="on",
                     help="once the VM is built, allow only the system calls a run needs "
                          "(seccomp; default on; off to rule it out when debugging)")
    run.add_argument("--verbose", "-v", action="count", default=0, help="log more (-vv: debug)")
    return parser


def _gdb_options(args) -> dict:
    """MachineConfig's gdb and gdb_wait from --gdb and --gdb-wait (which implies --gdb)."""
    gdb = parse_gdb(args.gdb or GDB_DEFAULT) if args.gdb or args.gdb_wait else None
    return {"gdb": gdb, "gdb_wait": args.gdb_wait}


def config_from_args(args) -> MachineConfig:
    devices = [parse_device(d) for d in args.device]
    iommu = parse_iommu(args.iommu) if args.iommu else None
    kernel = args.kernel
    if kernel is None:
        from akvm import guest_kernel   # imported here: it needs subprocess, --kernel does not
        try:
            kernel = str(guest_kernel.build())
        except guest_kernel.GuestBuildError as e:
            raise ConfigError(str(e)) from None
    return MachineConfig(kernel=kernel, cmdline=args.cmdline, memory=parse_memory(args.memory),
                         cpus=parse_cpus(args.cpus), serial=args.serial or "stdio",
                         modules=[parse_module(m) for m in args.module],
                         devices=devices, iommu=iommu,
                         stats=args.stats, **_gdb_options(args))


# What --restore takes from the snapshot instead: (attribute, option) of each.
_SNAPSHOT_OPTIONS = (("kernel", "--kernel"), ("cmdline", "--cmdline"), ("memory", "--memory"),
                     ("cpus", "--cpus"), ("module", "--module"), ("device", "--device"),
                     ("iommu", "--iommu"))


def restored_config(args):
    """--restore DIR: the snapshot and the configuration it was saved with."""
    from akvm.snapshot import load
    defaults = build_parser().parse_args(["run"])
    for attr, option in _SNAPSHOT_OPTIONS:
        if getattr(args, attr) != getattr(defaults, attr):
            raise ConfigError(f"{option}: a restored machine has the snapshot's configuration "
                              "(only --serial, --control, --gdb and --stats may go with --restore)")
    snap = load(args.restore)
    config = snap.config(serial=args.serial, stats=args.stats)._replace(**_gdb_options(args))
    snap.check_disks(force=args.restore_force)
    return snap, config


def main(argv: list[str] | None, image: BootImage) -> int:
    """`image`: the boot image builder akvm.__main__ forked first; the caller cancels it."""
    args = build_parser().parse_args(argv)
    # Messages while the VM runs, and its closing lines, go through a queue: a terminal
    # or pipe nobody reads never blocks a vCPU that logs, nor the exit.
    err = TextOutput(sys.stderr.fileno(), "stderr-output")
    handler = logging.StreamHandler(err)
    handler.setFormatter(LogFormatter())
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        handlers=[handler])
    try:
        return _run(args, image, err)
    finally:
        err.queue.close(STDERR_FLUSH_S)


def _run(args, image: BootImage, err: TextOutput) -> int:
    control = early = listener = None
    try:
        if args.restore:
            snap, config = restored_config(args)
            from akvm.snapshot import EarlyVm
            early = EarlyVm(snap)      # KVM's part, while the rest of akvm is imported
            early.start()
        else:
            if args.restore_force:
                raise ConfigError("--restore-force goes with --restore")
            config = config_from_args(args)
            image.start(config)
        if config.gdb is not None:
            from akvm.gdb.server import listen
            listener = listen(*config.gdb)
        if args.control:
            from akvm.control import ControlServer, parse_control
            control = ControlServer(parse_control(args.control))
        from akvm.machine import Machine
        machine = (Machine.restore(snap, config, early) if args.restore
                   else Machine.build(config, image))
    except ConfigError as e:    # and its kinds: BootImageError, akvm.machine.UserError
        for server in (control, listener):
            if server is not None:
                server.close()
        print(f"akvm: error: {e}", file=err)
        return ExitCode.USAGE
    if args.sandbox == "on":
        from akvm.base import sandbox
        try:
            sandbox.apply()
        except (OSError, RuntimeError) as e:
            print(f"akvm: error: --sandbox: cannot load the system-call filter ({e}); "
                  "--sandbox off runs without it", file=err)
            for server in (control, listener):
                if server is not None:
                    server.close()
            machine.close()
            return ExitCode.USAGE
    if control is not None:
        control.start(machine)
    stub = None
    if listener is not None:
        from akvm.gdb.server import GdbServer
        stub = GdbServer(machine, listener, wait=config.gdb_wait).start()
        host, port = stub.address
        print(f"akvm: gdb: listening on {host}:{port}"
              f"{', waiting for it to start the guest' if config.gdb_wait else ''}", file=err)
    try:
        code, message = machine.run()
    finally:
        for server in (control, stub):
            if server is not None:
                server.close()
    print(f"akvm: {message}", file=err)
    if config.stats:
        print(machine.format_stats(), file=err)
    return code

