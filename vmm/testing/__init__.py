"""Drive a guest's serial console from Python: boot, wait for the prompt, run commands.

`Guest` boots a kernel under akvm (or QEMU, for cross-checks) behind a
pseudo-terminal with pexpect, and keeps the whole serial log so that a
failing test can show it. The pytest plugin (akvm.testing.plugin) wraps it
in fixtures.
"""
from __future__ import annotations

import io
import json
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

from akvm import guest_kernel

GUEST_PROMPT = r"guest\(Core 0\)> "
_SUMMARY = re.compile(rb"^(\d+) passed, (\d+) failed\s*$", re.M)


class GuestError(Exception):
    """The guest did not do what the harness waited for; the message carries the log tail."""


@dataclass
class SelftestResult:
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)   # device absent, and why
    output: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and bool(self.passed)


def parse_selftest(text: str) -> SelftestResult:
    """The guest's `PASS name` / `FAIL name: reason` / `SKIP name: reason` lines, checked
    against its summary line (which counts passes and failures)."""
    result = SelftestResult(output=text)
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("PASS "):
            result.passed.append(line[5:].strip())
        elif line.startswith("FAIL "):
            name, _, reason = line[5:].partition(":")
            result.failed[name.strip()] = reason.strip()
        elif line.startswith("SKIP "):
            name, _, reason = line[5:].partition(":")
            result.skipped[name.strip()] = reason.strip()
    m = _SUMMARY.search(text.encode())
    if m is None:
        raise GuestError(f"no 'N passed, M failed' line in:\n{text}")
    if (int(m.group(1)), int(m.group(2))) != (len(result.passed), len(result.failed)):
        raise GuestError(f"summary {m.group(0).decode()!r} disagrees with the PASS/FAIL lines")
    return result


def qemu_command(kernel: Path, cpus: int, memory: str, cmdline: str = "",
                 extra: list[str] = ()) -> list[str]:
    """QEMU with KVM booting the same kernel through its own Multiboot loader."""
    cmd = ["qemu-system-x86_64", "-enable-kvm", "-kernel", str(kernel),
           "-smp", str(cpus), "-m", memory, "-display", "none", "-serial", "stdio",
           "-monitor", "none", "-no-reboot", *extra]
    if cmdline:
        cmd += ["-append", cmdline]
    return cmd


class ControlClient:
    """A client of akvm's control socket (--control unix:PATH, akvm.control): send a
    command, get its return value; events that arrive meanwhile collect in `events`."""

    def __init__(self, path: Path | str, timeout: float = 30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise GuestError(f"no control socket at {path}") from None
                time.sleep(0.02)
        self._file = self.sock.makefile("rb")
        self.events: list[dict] = []
        self.greeting = self._line()

    def _line(self) -> dict:
        line = self._file.readline()
        if not line:
            raise GuestError("the control socket closed")
        return json.loads(line)

    def execute(self, name: str, **arguments):
        """The command's "return" value; GuestError with the desc of an "error" reply."""
        self.sock.sendall(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        return self.reply()

    def reply(self):
        while True:
            message = self._line()
            if "event" in message:
                self.events.append(message)
                continue
            if "error" in message:
                raise GuestError(f"{message['error']['class']}: {message['error']['desc']}")
            return message["return"]

    def wait_event(self, name: str, timeout: float | None = None) -> dict:
        """The first event called `name`, received or to come."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            for event in self.events:
                if event["event"] == name:
                    self.events.remove(event)
                    return event
            self.events.append(self._line())

    def close(self) -> None:
        self._file.close()
        self.sock.close()


class Guest:
    """A kernel booted under a VMM, driven through its serial console."""

    def __init__(self, kernel: Path | str | None = None, *, cpus: int = 1, memory: str = "512M",
                 cmdline: str = "", args: list[str] = (), vmm: str = "akvm",
                 prompt: str = GUEST_PROMPT, timeout: float = 120,
                 restore: Path | str | None = None, control: Path | str | None = None):
        """`restore`: resume this snapshot (akvm run --restore) instead of booting; the
        kernel, cpus, memory and cmdline are then the snapshot's. `control`: give akvm a
        control socket there (control_client() talks to it)."""
        self.restore = restore
        self.kernel = None if restore else Path(kernel) if kernel else guest_kernel.build()
        self.cpus, self.memory, self.cmdline = cpus, memory, cmdline
        self.args = list(args)
        self.vmm = vmm
        self.prompt = prompt
        self.timeout = timeout
        self.control = control
        self._control_client: ControlClient | None = None
        self.log = io.BytesIO()
        self.child: pexpect.spawn | None = None
        self.exitstatus: int | None = None

    def command_line(self) -> list[str]:
        if self.vmm == "qemu":
            if shutil.which("qemu-system-x86_64") is None:
                raise GuestError("qemu-system-x86_64 is not installed")
            return qemu_command(self.kernel, self.cpus, self.memory, self.cmdline, self.args)
        if self.restore:
            cmd = [sys.executable, "-m", "akvm", "run", "--restore", str(self.restore),
                   "--serial", "stdio", *self.args]
        else:
            cmd = [sys.executable, "-m", "akvm", "run", "--kernel", str(self.kernel),
                   "--cpus", str(self.cpus), "--memory", self.memory, *self.args]
            if self.cmdline:
                cmd += ["--cmdline", self.cmdline]
        if self.control:
            cmd += ["--control", f"unix:{self.control}"]
        return cmd

    def control_client(self) -> ControlClient:
        """A client of the control socket (Guest(control=PATH)), connected once."""
        if self._control_client is None:
            if not self.control:
                raise GuestError("this guest was started without a control socket")
            self._control_client = ControlClient(self.control, timeout=self.timeout)
        return self._control_client

    def snapshot(self, path: Path | str) -> dict:
        """Save the running machine to `path` (the control socket's snapshot-save)."""
        return self.control_client().execute("snapshot-save", path=str(path))

    # --- lifecycle ----------------------------------------------------------

    def start(self, wait_prompt: bool = True) -> "Guest":
        """Start the VMM; wait for the prompt (a restored guest is asked for a fresh one:
        its prompt was printed before the snapshot)."""
        cmd = self.command_line()
        self.child = pexpect.spawn(cmd[0], cmd[1:], timeout=self.timeout, dimensions=(50, 200),
                                   use_poll=True)   # a test process may hold 1024+ fds
        self.child.delaybeforesend = None   # (pexpect's default: 50 ms before every send)
        self.child.logfile_read = self.log
        if wait_prompt:
            if self.restore:
                self.wait_console()
                self.child.send("\r")
            self.expect(self.prompt)
        return self

    def wait_console(self) -> None:
        """Wait until akvm has the console in raw mode: what is typed before that goes
        through the terminal's line discipline (a CR turned into LF, echoed by the
        terminal), which a guest reading raw bytes need not take as a CR."""
        deadline = time.monotonic() + self.timeout
        while self.child.getecho():
            if not self.child.isalive() or time.monotonic() > deadline:
                raise GuestError(f"akvm did not take the console; its output:\n"
                                 f"{self.serial_log[-2000:]}")
            time.sleep(0.002)

    def __enter__(self) -> "Guest":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Quit the VMM if it still runs (Ctrl-A x for akvm), and reap it."""
        if self._control_client is not None:
            self._control_client.close()
            self._control_client = None
        if self.child is None:
            return
        if self.child.isalive():
            if self.vmm == "akvm":
                self.child.sendcontrol("a")
                self.child.send("x")
            else:
                self.child.terminate(force=True)
            try:
                self.child.expect(pexpect.EOF, timeout=15)
            except pexpect.TIMEOUT:
                self.child.terminate(force=True)
        self.child.close()
        self.exitstatus = self.child.exitstatus
        self.child = None

    def wait_exit(self, timeout: float | None = None) -> int:
        """Wait for the VMM to end by itself (poweroff, reset, ...) and return its status."""
        self.expect(pexpect.EOF, timeout=timeout)
        self.child.close()
        self.exitstatus = self.child.exitstatus
        self.child = None
        return self.exitstatus

    # --- console ------------------------------------------------------------

    @property
    def serial_log(self) -> str:
        return self.log.getvalue().decode(errors="replace").replace("\r", "")

    def expect(self, pattern, timeout: float | None = None) -> int:
        try:
            return self.child.expect(pattern, timeout=timeout or self.timeout)
        except pexpect.TIMEOUT:
            raise GuestError(f"timed out waiting for {pattern!r}; serial log tail:\n"
                             f"{self.serial_log[-2000:]}") from None
        except pexpect.EOF:
            raise GuestError(f"the VMM exited while waiting for {pattern!r}; serial log tail:\n"
                             f"{self.serial_log[-2000:]}") from None

    def send(self, text: str) -> None:
        self.child.send(text)

    def command(self, line: str, timeout: float | None = None) -> str:
        """Type a monitor command, wait for the next prompt, return what it printed."""
        self.child.send(line + "\r")
        self.expect(re.escape(line), timeout)
        self.expect(self.prompt, timeout)
        return self.child.before.decode(errors="replace").replace("\r", "").strip("\n")

    def selftest(self, *names: str, timeout: float | None = None) -> SelftestResult:
        return parse_selftest(self.command(" ".join(("selftest",) + names), timeout))
