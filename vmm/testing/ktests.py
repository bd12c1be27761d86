"""Akaros's own kernel tests as pytest items: `pytest --akaros-ktests KERNEL`.

A kernel built with CONFIG_KERNEL_TESTING runs its registered suites at boot
and prints, per suite (kern/src/ktest/ktest.c):

    <-- BEGIN_KERNEL_<SUITE>_TESTS -->
    \tPASSED   [test_name](S.UUUUUUs)   
    \tFAILED   [test_name](S.UUUUUUs)   Assertion failure in f() at file:line: message
    \tDISABLED [test_name]
    <-- END_KERNEL_<SUITE>_TESTS -->
    <-- END_KERNEL_TESTS -->

The tests are known before the kernel runs: every suite is a static `struct
ktest_suite` with its `struct ktest ktests[]` beside it in one source file,
and the kernel's symbol table has both (pyelftools reads them). So each test
is an item from the start, in the suite's order, and a test the kernel never
reports -- it panicked, hung, or akvm ended -- fails, with why and the serial
log. The kernel runs once, under akvm, when the first item runs; each item
waits for its own line, so results come as the kernel prints them.

DISABLED is a skip, FAILED a failure with Akaros's message, and the time the
kernel measured is the item's `akaros_seconds` property (in --junitxml).
"""
from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# struct ktest { char name[256]; bool (*func)(void); bool enabled; } on x86_64
KTEST_SIZE, KTEST_NAME, KTEST_ENABLED = 272, 256, 264
# struct ktest_suite { SLIST_ENTRY link; char name[256]; struct ktest *ktests; int num; }
SUITE_NAME_OFFSET, SUITE_NAME = 8, 256

BEGIN_SUITE = re.compile(r"<-- BEGIN_KERNEL_(\w+)_TESTS -->")
RESULT = re.compile(r"^\s*(PASSED|FAILED)\s+\[([^\]]+)\]\((\d+\.\d+)s\)\s*(.*?)\s*$")
DISABLED = re.compile(r"^\s*DISABLED\s+\[([^\]]+)\]")
END_ALL = "<-- END_KERNEL_TESTS -->"
PANIC = re.compile(r"kernel panic at .*")
MONITOR = "ROS(Core 0)> "
PANIC_TAIL_S = 10.0          # after a panic, how long the backtrace may take to print
LOG_TAIL = 4000              # of the serial log, what a failure's message carries


class KtestsError(Exception):
    """The kernel cannot be used for --akaros-ktests (one line)."""


# --- the tests a kernel holds ------------------------------------------------------------

def read_suites(path: str) -> dict[str, list[tuple[str, bool]]]:
    """{suite: [(test name, enabled)]} from the kernel's symbol table, in the order the
    kernel runs them.

    Each suite's file registers it from a linker_func_1 function, which the kernel calls
    in the order of the `__register_*` pointers to them, and each registration puts the
    suite at the head of the list the suites run from: so the last registered runs first.
    """
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                raise KtestsError(f"{path} has no symbol table (a stripped kernel?)")
            found: dict[str, dict[str, object]] = {}
            functions: dict[int, str] = {}            # local function address -> its file
            pointers = []                             # the __register_* pointers
            source = None
            for sym in symtab.iter_symbols():
                kind = sym["st_info"]["type"]
                if kind == "STT_FILE":
                    source = sym.name
                elif sym.name in ("ktests", "ktest_suite") and sym["st_shndx"] != "SHN_UNDEF":
                    found.setdefault(source, {})[sym.name] = sym
                elif kind == "STT_FUNC" and sym["st_info"]["bind"] == "STB_LOCAL":
                    functions[sym["st_value"]] = source
                elif sym.name.startswith("__register_") and sym["st_size"] == 8:
                    pointers.append(sym)
            first_call = {}                           # file -> when its registration runs
            for sym in pointers:
                target = int.from_bytes(_read(elf, sym), "little") & 0xFFFF_FFFF
                if target in functions:
                    first_call.setdefault(functions[target], sym["st_value"])
            suites = {}
            for source, syms in sorted(found.items(), key=lambda kv: -first_call.get(kv[0], 0)):
                if set(syms) != {"ktests", "ktest_suite"}:
                    continue
                suite = _read(elf, syms["ktest_suite"])
                name = _cstr(suite[SUITE_NAME_OFFSET:SUITE_NAME_OFFSET + SUITE_NAME])
                table = _read(elf, syms["ktests"])
                suites[name] = [(_cstr(table[i:i + KTEST_NAME]), bool(table[i + KTEST_ENABLED]))
                                for i in range(0, len(table) - KTEST_SIZE + 1, KTEST_SIZE)]
    except (OSError, ELFError) as e:
        raise KtestsError(f"{path}: {e}") from None
    if not suites:
        raise KtestsError(f"{path} registers no ktest suites: build it with "
                          "CONFIG_KERNEL_TESTING (and keep its symbols)")
    return suites


def _read(elf, sym) -> bytes:
    section = elf.get_section(sym["st_shndx"])
    start = sym["st_value"] - section["sh_addr"]
    return section.data()[start:start + sym["st_size"]]


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


# --- the run --------------------------------------------------------------------------

@dataclass
class Result:
    outcome: str                  # PASSED, FAILED or DISABLED
    seconds: float | None = None
    message: str = ""


@dataclass
class KtestLog:
    """What the kernel printed, parsed as it comes."""
    results: dict[tuple[str, str], Result] = field(default_factory=dict)
    suite: str | None = None
    finished: bool = False        # END_KERNEL_TESTS
    panic: str | None = None
    text: str = ""

    def feed(self, line: str) -> None:
        line = line.replace("\r", "")
        self.text += line + "\n"
        if m := BEGIN_SUITE.search(line):
            self.suite = m.group(1)
        elif m := RESULT.match(line):
            self.results[(self.suite, m.group(2))] = Result(m.group(1), float(m.group(3)),
                                                            m.group(4))
        elif m := DISABLED.match(line):
            self.results[(self.suite, m.group(1))] = Result("DISABLED")
        elif END_ALL in line:
            self.finished = True
        elif self.panic is None and (m := PANIC.search(line)):
            self.panic = m.group(0)


class KtestRun:
    """One run of the kernel under akvm, read as far as the items need."""

    def __init__(self, kernel: str, cpus: int, memory: str, timeout: float):
        self.kernel, self.timeout = kernel, timeout
        self.command = [sys.executable, "-m", "akvm", "run", "--kernel", kernel,
                        "--cpus", str(cpus), "--memory", memory, "--serial", "stdio"]
        self.log = KtestLog()
        self.proc: subprocess.Popen | None = None
        self.ended: str | None = None          # why no more results will come
        self._partial = b""

    def result(self, suite: str, name: str) -> Result | None:
        """The kernel's verdict on a test, read on until it appears or the run ends."""
        if self.proc is None:
            self._start()
        while (suite, name) not in self.log.results and self.ended is None:
            self._read_more()
        return self.log.results.get((suite, name))

    def _start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)
        self._last_result = time.monotonic()

    def _read_more(self) -> None:
        count = len(self.log.results)
        deadline = self._last_result + self.timeout
        if not self._wait_for_output(deadline):
            self._end(f"no ktest result for {self.timeout:g} s: the kernel hangs")
            return
        if len(self.log.results) != count:
            self._last_result = time.monotonic()
        if self.log.finished:
            self._end("the kernel finished its tests (<-- END_KERNEL_TESTS -->) without it")
        elif self.log.panic is not None:
            tail = time.monotonic() + PANIC_TAIL_S     # let the backtrace reach the log
            while MONITOR not in self.log.text[-200:] and self._wait_for_output(tail):
                pass
            self._end(self.log.panic)

    def _wait_for_output(self, deadline: float) -> bool:
        """Read what is there (waiting until `deadline`); False at the deadline or EOF."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                return False
            data = os.read(self.proc.stdout.fileno(), 65536)
            if not data:
                self.proc.wait()
                if self.ended is None:
                    self.ended = f"akvm exited with status {self.proc.returncode}"
                return False
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                self.log.feed(line.decode(errors="replace"))
            if MONITOR in self._partial.decode(errors="replace"):
                self.log.feed(self._partial.decode(errors="replace"))
                self._partial = b""
            return True

    def _end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)      # akvm ends the VM: exit status 0
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.proc.stdout.close()


# --- pytest ---------------------------------------------------------------------------

_RUN = pytest.StashKey[KtestRun]()
_SUITES = pytest.StashKey[dict]()


def add_options(parser) -> None:
    group = parser.getgroup("akvm", "akvm guests")
    group.addoption("--akaros-ktests", metavar="KERNEL",
                    help="boot this Akaros kernel (built with CONFIG_KERNEL_TESTING) once "
                         "under akvm and report each of its ktests as a test")
    group.addoption("--akaros-ktests-cpus", type=int, default=2, metavar="N",
                    help="vCPUs for --akaros-ktests (default 2)")
    group.addoption("--akaros-ktests-memory", default="1G", metavar="SIZE",
                    help="guest RAM for --akaros-ktests (default 1G)")
    group.addoption("--akaros-ktests-timeout", type=float, default=300.0, metavar="S",
                    help="the kernel hangs when no test result comes for S seconds "
                         "(default 300; the first waits for the boot too)")


def configure(config) -> None:
    """Make the kernel a path to collect: the only one, unless paths were given too."""
    kernel = config.getoption("akaros_ktests", None)
    if not kernel:
        return
    if not os.path.isfile(kernel):
        raise pytest.UsageError(f"--akaros-ktests: no such file: {kernel}")
    try:
        config.stash[_SUITES] = read_suites(kernel)
    except KtestsError as e:
        raise pytest.UsageError(f"--akaros-ktests: {e}") from None
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = []
    config.args.append(kernel)


def collect(file_path: Path, parent):
    kernel = parent.config.getoption("akaros_ktests", None)
    if kernel and file_path.resolve() == Path(kernel).resolve():
        return KtestKernel.from_parent(parent, path=file_path)
    return None


class KtestKernel(pytest.File):
    """The kernel: one collector per suite."""

    def collect(self):
        for name, tests in self.config.stash[_SUITES].items():
            yield KtestSuite.from_parent(self, name=name, tests=tests)

    def run(self) -> KtestRun:
        """The session's one run of the kernel."""
        config = self.config
        if _RUN not in config.stash:
            run = KtestRun(str(self.path), config.getoption("akaros_ktests_cpus"),
                           config.getoption("akaros_ktests_memory"),
                           config.getoption("akaros_ktests_timeout"))
            config.stash[_RUN] = run
            config.add_cleanup(run.close)
        return config.stash[_RUN]


class KtestSuite(pytest.Collector):
    def __init__(self, *, tests, **kwargs):
        super().__init__(**kwargs)
        self.tests = tests

    def collect(self):
        for name, enabled in self.tests:
            yield KtestItem.from_parent(self, name=name, enabled=enabled)


class KtestFailure(Exception):
    """A ktest that FAILED or was never reported."""


class KtestItem(pytest.Item):
    def __init__(self, *, enabled: bool, **kwargs):
        super().__init__(**kwargs)
        self.enabled = enabled

    def runtest(self) -> None:
        run = self.parent.parent.run()
        result = run.result(self.parent.name, self.name)
        if result is None:
            if not self.enabled:
                raise pytest.skip.Exception(f"DISABLED in this kernel's configuration (not "
                                            f"listed: {run.ended})", _use_item_location=True)
            self.add_report_section("call", "serial log", run.log.text)
            raise KtestFailure(f"not reported: {run.ended}\n\nserial log (the last "
                               f"{LOG_TAIL} bytes; all of it above):\n{run.log.text[-LOG_TAIL:]}")
        if result.seconds is not None:
            self.user_properties.append(("akaros_seconds", result.seconds))
        if result.outcome == "DISABLED":
            raise pytest.skip.Exception("DISABLED in this kernel's configuration",
                                        _use_item_location=True)
        if result.outcome == "FAILED":
            raise KtestFailure(result.message or "FAILED (no message)")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, KtestFailure):
            return f"{self.parent.name} {self.name}: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, 0, f"{self.parent.name}::{self.name}"
