"""Machine.pause()/resume() (VcpuThread.request_pause): vCPUs park between two instructions.

The guest reads a port in a loop, so almost every moment is inside an exit
akvm is completing; a pause must never leave an IN half done (the device
read, the value not yet in AL, RIP still on the IN).
"""
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
