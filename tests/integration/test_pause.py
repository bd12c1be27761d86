"""Machine.pause()/resume() (VcpuThread.request_pause): vCPUs park between two instructions.

The guest reads a port in a loop, so almost every moment is inside an exit
akvm is completing; a pause must never leave an IN half done (the device
read, the value not yet in AL, RIP still on the IN).
"""
import gc
import shutil
import subprocess
import threading
import time

import pytest

from tests.conftest import needs_binutils, needs_kvm

pytestmark = [needs_kvm, needs_binutils]

PORT = 0x99
LOOP_ASM = f"""
	.set MB_MAGIC, 0x1BADB002
	.code32
	.text
	.long MB_MAGIC, 0, -MB_MAGIC
	.globl _start
_start:
	xor %ebx, %ebx
loop:
	in ${PORT:#x}, %al
after_in:
	inc %ebx
	jmp loop
"""


class Counter:
    """Port PORT: each read returns how many reads there were (low byte)."""

    def __init__(self):
        self.reads = 0

    def read(self, offset, size):
        self.reads += 1
        return self.reads & 0xFF

    def write(self, offset, size, value):
        pass


@pytest.fixture(scope="module")
def loop_kernel(tmp_path_factory):
    d = tmp_path_factory.mktemp("pause")
    (d / "loop.S").write_text(LOOP_ASM)
    subprocess.run(["as", "--32", "-o", str(d / "loop.o"), str(d / "loop.S")], check=True)
    elf = d / "loop.elf"
    subprocess.run(["ld", "-m", "elf_i386", "-N", "-Ttext=0x100000", "--no-warn-rwx-segments",
                    "-o", str(elf), str(d / "loop.o")], check=True)
    symbols = dict((n, int(a, 16)) for a, _, n in (
        line.split() for line in subprocess.run(["nm", str(elf)], capture_output=True, text=True,
                                                check=True).stdout.splitlines()))
    return elf, symbols


def test_pause_parks_every_vcpu_between_instructions(loop_kernel, tmp_path):
    from akvm.base.exitcode import ExitCode
    from akvm.config import MachineConfig
    from akvm.machine import Machine

    elf, sym = loop_kernel
    machine = Machine.build(MachineConfig(kernel=str(elf), serial="none", memory=16 << 20,
                                          cpus=2))
    counter = Counter()
    machine.pio_bus.register(PORT, 1, counter, "counter")
    events = []
    machine.listeners.append(lambda name, data: events.append(name))
    runner = threading.Thread(target=machine.run)
    runner.start()
    try:
        while counter.reads == 0:
            time.sleep(0.01)
        seen = set()
        for _ in range(300):
            machine.pause()
            assert machine.paused and machine.vcpus[0].paused
            regs = machine.vcpus[0].vcpu.get_regs()
            reads = counter.reads
            # Whatever instruction is next, the last IN the device saw has finished: its
            # value is in AL (one still pending would leave RIP on it and AL one behind).
            assert regs.rip in (sym["loop"], sym["after_in"], sym["after_in"] + 1)
            assert regs.rax & 0xFF == reads & 0xFF
            seen.add(regs.rip)
            again = machine.vcpus[0].vcpu.get_regs()
            assert (again.rip, again.rbx, counter.reads) == (regs.rip, regs.rbx, reads)   # still
            machine.resume()
            deadline = time.monotonic() + 10       # let it run (a loaded host may not at once)
            while counter.reads == reads and time.monotonic() < deadline:
                time.sleep(0)
        assert sym["after_in"] in seen
        assert counter.reads > 100
        machine.pause()                       # nested: stays paused until both are undone
        machine.pause()
        machine.resume()
        assert machine.paused
        machine.resume()
        assert not machine.paused
        assert events[:2] == ["stop", "resume"] and events.count("stop") == 301
    finally:
        machine.stop(ExitCode.POWEROFF, "test over")
        runner.join(10)
    assert not runner.is_alive()


def test_a_device_without_snapshot_support_fails_the_snapshot(loop_kernel, tmp_path):
    """The counter above is registered straight on the bus, with no snapshot(): saving
    says which device it is, and the machine runs on."""
    from akvm.base.exitcode import ExitCode
    from akvm.config import MachineConfig
    from akvm.machine import Machine
    from akvm.snapshot import SnapshotError

    elf, _ = loop_kernel
    machine = Machine.build(MachineConfig(kernel=str(elf), serial="none", memory=16 << 20))
    counter = Counter()
    machine.pio_bus.register(PORT, 1, counter, "counter")
    runner = threading.Thread(target=machine.run)
    runner.start()
    try:
        with pytest.raises(SnapshotError, match=r"cannot save counter \(Counter\) on the pio "
                                                r"bus at 0x99: it has no snapshot support"):
            machine.save_snapshot(str(tmp_path / "snap"))
        assert not machine.paused
        reads = counter.reads
        time.sleep(0.2)
        assert counter.reads > reads
    finally:
        machine.stop(ExitCode.POWEROFF, "test over")
        runner.join(10)

# --- with the bundled guest: nothing runs while paused; a debugger's holds are its own ---

PROMPT = "guest(Core 0)> "


class Running:
    """The bundled guest in this process (run() on a thread), its console in a file."""

    def __init__(self, tmp_path, cpus=2):
        from akvm import guest_kernel
        from akvm.config import MachineConfig
        from akvm.machine import Machine
        self.log = tmp_path / "serial.txt"
        self.machine = Machine.build(MachineConfig(kernel=str(guest_kernel.build()), cpus=cpus,
                                                   serial=f"file:{self.log}"))
        self.thread = threading.Thread(target=self.machine.run, daemon=True)
        self.thread.start()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output()[-2000:]}"
            time.sleep(0.01)
        return self.output()

    def type(self, line: str) -> None:
        self.machine.uart.receive(line.encode() + b"\r")

    def close(self) -> None:
        """Stop the machine and let its descriptors go now (other tests count theirs)."""
        from akvm.base.exitcode import ExitCode
        self.machine.stop(ExitCode.POWEROFF, "test over")
        self.thread.join(10)
        self.machine = self.thread = None
        gc.collect()


@pytest.fixture
def running(tmp_path):
    r = Running(tmp_path)
    r.wait_for(PROMPT)
    yield r
    r.close()


def test_a_paused_guest_does_nothing_until_resumed(running):
    m = running.machine
    m.pause()
    assert all(t.paused for t in m.vcpus)
    rips = [t.vcpu.get_regs().rip for t in m.vcpus]
    running.type("cores")
    time.sleep(0.3)
    assert "core 0: APIC id" not in running.output()       # the keystrokes wait in the UART
    assert [t.vcpu.get_regs().rip for t in m.vcpus] == rips
    m.resume()
    running.wait_for("core 0: APIC id")


def test_a_debuggers_hold_outlasts_a_pause(running):
    """What a snapshot does while gdb has the machine stopped leaves it stopped."""
    from akvm.vcpu.cpu import DEBUG_HOLD
    m = running.machine
    for t in m.vcpus:
        t.request_pause(DEBUG_HOLD)
    assert all(t.wait_paused(5) for t in m.vcpus)
    m.pause()
    m.resume()
    running.type("cores")
    time.sleep(0.3)
    assert "core 0: APIC id" not in running.output()
    assert all(t.paused for t in m.vcpus)
    for t in m.vcpus:
        t.resume(DEBUG_HOLD)
    running.wait_for("core 0: APIC id")


def test_stop_ends_a_paused_machine(running):
    from akvm.base.exitcode import ExitCode
    m = running.machine
    m.pause()
    m.stop(ExitCode.POWEROFF, "stopped while paused")
    running.thread.join(5)
    assert not running.thread.is_alive()
    assert m.result == (ExitCode.POWEROFF, "stopped while paused")
