"""Drive gdb through its command line with pexpect: akvm's GDB stub in tests and benchmarks.

    with Guest(args=["--gdb", "tcp::1234"]) as guest:
        gdb = Gdb("guest/build/kernel.elf64")
        gdb.cmd("target remote :1234")
        gdb.cmd("break cmd_cores")
        gdb.start("continue")
        guest.send("cores\r")
        assert "Breakpoint 1, cmd_cores" in gdb.wait_stop()
"""
from __future__ import annotations

import os
import re
import shutil

import pexpect

PROMPT = r"\(gdb\) $"


class GdbError(Exception):
    pass


class Gdb:
    """A gdb process on an ELF; cmd() types a command and returns what it printed."""

    def __init__(self, elf: str, timeout: float = 30):
        if shutil.which("gdb") is None:
            raise GdbError("gdb is not installed")
        self.timeout = timeout
        # TERM=dumb: no readline escapes (bracketed paste) in what is parsed.
        self.child = pexpect.spawn("gdb", ["-q", "-nx", str(elf)], timeout=timeout,
                                   dimensions=(200, 300), encoding="utf-8", codec_errors="replace",
                                   env={**os.environ, "TERM": "dumb"}, use_poll=True)
        self.transcript = []
        self.running = False          # a started command has not stopped yet
        self._expect_prompt()
        for setting in ("pagination off", "confirm off", "width 0", "height 0", "style enabled off"):
            self.cmd(f"set {setting}")

    def _expect_prompt(self, timeout: float | None = None) -> str:
        try:
            self.child.expect(PROMPT, timeout=timeout or self.timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as e:
            raise GdbError(f"gdb: no prompt ({type(e).__name__}); last output:\n"
                           f"{self.child.before[-3000:] if self.child.before else ''}\n"
                           f"transcript:\n{self.log}") from None
        out = self.child.before.replace("\r", "")
        self.transcript.append(out)
        self.running = False
        return out

    @property
    def log(self) -> str:
        return "".join(self.transcript)[-6000:]

    def cmd(self, line: str, timeout: float | None = None) -> str:
        """Run a command to its next prompt; its output without the echoed command."""
        self.child.sendline(line)
        out = self._expect_prompt(timeout)
        return out.split("\n", 1)[1] if "\n" in out else ""

    def start(self, line: str) -> None:
        """A command that runs the target (continue, next...): returns at once."""
        self.child.sendline(line)
        self.transcript.append(f"{line}\n")
        self.running = True

    def wait_stop(self, timeout: float | None = None) -> str:
        """The output up to the prompt after a started command stops."""
        return self._expect_prompt(timeout)

    def interrupt(self, timeout: float | None = None) -> str:
        self.child.sendintr()
        return self._expect_prompt(timeout)

    def value(self, expression: str) -> str:
        out = self.cmd(f"print {expression}")
        m = re.search(r"^\$\d+ = (.*)$", out, re.M)
        if not m:
            raise GdbError(f"print {expression}: {out}")
        return m.group(1)

    def close(self) -> None:
        """Quit; a gdb still waiting on a running target is killed (the stub then detaches)."""
        if self.child.isalive() and not self.running:
            self.child.sendline("quit")
            try:
                self.child.expect(pexpect.EOF, timeout=5)
            except pexpect.TIMEOUT:
                pass
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()
