"""Machine.pause()/resume(): every vCPU parked at an instruction boundary, and running again.

The bundled guest runs in this process (Machine.build, run() on a thread) so the
test can pause it while it loops on exits and look at its vCPUs meanwhile.
"""
import gc
import threading
import time

import pytest

from akvm import guest_kernel
from akvm.base.exitcode import ExitCode
from akvm.config import MachineConfig
from akvm.machine import Machine
from tests.conftest import needs_kvm

pytestmark = needs_kvm
PROMPT = "guest(Core 0)> "


class Running:
    def __init__(self, tmp_path, cpus=2):
        self.log = tmp_path / "serial.txt"
        self.machine = Machine.build(MachineConfig(kernel=str(guest_kernel.build()), cpus=cpus,
                                                   serial=f"file:{self.log}"))
        self.thread = threading.Thread(target=self.machine.run, daemon=True)
        self.thread.start()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, count: int = 1, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while self.output().count(text) < count:
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output()[-2000:]}"
            time.sleep(0.01)
        return self.output()

    def type(self, line: str) -> None:
        self.machine.uart.receive(line.encode() + b"\r")

    def close(self) -> None:
        """Stop the machine and let its descriptors go now (other tests count theirs)."""
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


def test_a_paused_machine_runs_nothing_until_resumed(running):
    m = running.machine
    assert m.pause()
    assert all(t.parked.is_set() for t in m.vcpus)
    regs = [t.vcpu.get_regs().rip for t in m.vcpus]
    running.type("cores")
    time.sleep(0.3)
    assert "core 0: APIC id" not in running.output()        # the keystrokes wait in the UART
    assert [t.vcpu.get_regs().rip for t in m.vcpus] == regs
    m.resume()
    running.wait_for("core 0: APIC id")


def test_pausing_a_guest_busy_with_exits_many_times(running):
    """`bench pio mmio` is 20000 exits; pause it 30 times on the way."""
    m = running.machine
    running.type("bench pio mmio")
    for _ in range(30):
        assert m.pause(timeout=5)
        rips = [t.vcpu.get_regs().rip for t in m.vcpus]
        time.sleep(0.002)
        assert [t.vcpu.get_regs().rip for t in m.vcpus] == rips
        m.resume()
        time.sleep(0.005)
    out = running.wait_for(PROMPT, count=2)
    assert "BENCH pio" in out and "BENCH mmio" in out


def test_owners_are_counted_apart(running):
    m = running.machine
    assert m.pause("snapshot") and m.pause("debugger")
    m.resume("snapshot")
    running.type("cores")
    time.sleep(0.3)
    assert "core 0: APIC id" not in running.output()        # the debugger still holds it
    m.resume("debugger")
    running.wait_for("core 0: APIC id")


def test_stop_ends_a_paused_machine(running):
    m = running.machine
    assert m.pause()
    m.stop(ExitCode.POWEROFF, "stopped while paused")
    running.thread.join(5)
    assert not running.thread.is_alive()
    assert m.result == (ExitCode.POWEROFF, "stopped while paused")
    del m
