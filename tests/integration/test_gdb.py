"""akvm's GDB stub with the real gdb (Debian's), on the bundled guest built with symbols
(guest/build/kernel.elf64) and on Akaros (AKVM_AKAROS_KERNEL, with its 64-bit ELF in
AKVM_AKAROS_ELF64), as a kernel developer uses QEMU's -s -S.

gdb's command line is driven with pexpect (akvm.testing.gdb), the guest's console
with akvm.testing.Guest. Each test boots its own guest (tens of milliseconds) with
`--gdb tcp::0` and reads the port akvm picked from its console.
"""
import os
import re
import shutil
import socket
import time

import pytest
from elftools.elf.elffile import ELFFile

from akvm import guest_kernel
from akvm.base.exitcode import ExitCode
from akvm.gdb.packets import PacketReader, Packet, frame
from akvm.testing import GuestError
from tests.conftest import needs_kvm
from akvm.testing.gdb import Gdb

pytestmark = [needs_kvm, pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")]

AKAROS = os.environ.get("AKVM_AKAROS_KERNEL", "")
AKAROS_ELF = os.environ.get("AKVM_AKAROS_ELF64", "")


@pytest.fixture(scope="module")
def kernel():
    """The bundled guest (ELF32 wrapper, what akvm boots) and its 64-bit ELF (what gdb reads)."""
    path = guest_kernel.build()
    return path, path.with_name("kernel.elf64")


def symbols(elf) -> dict[str, int]:
    with open(elf, "rb") as f:
        return {s.name: s["st_value"] for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()}


@pytest.fixture
def debugged(akvm_guest_factory, kernel):
    """start(cpus=1, wait=False) -> (guest, gdb attached to it, port)."""
    gdbs = []

    def start(cpus=1, wait=False, guest_kernel=None, elf=None, **kwargs):
        args = ["--gdb", "tcp::0"] + (["--gdb-wait"] if wait else [])
        guest = akvm_guest_factory(kernel=guest_kernel or kernel[0], cpus=cpus, args=args,
                                   wait_prompt=False, **kwargs)
        guest.expect(r"gdb: listening on [\d.]+:(\d+)")
        port = int(guest.child.match.group(1))
        if not wait:
            guest.expect(guest.prompt)
        gdb = Gdb(elf or kernel[1])
        gdbs.append(gdb)
        out = gdb.cmd(f"target remote 127.0.0.1:{port}")
        assert "Remote debugging using" in out, out
        return guest, gdb, port

    yield start
    for gdb in gdbs:
        print(f"--- gdb transcript\n{gdb.log}")
        gdb.close()


def hit(gdb, guest, command: str) -> str:
    """Continue, type a monitor command on the guest's console, return gdb's stop output."""
    gdb.start("continue")
    gdb.child.expect("Continuing.")
    guest.send(command + "\r")
    return gdb.wait_stop()


def test_break_in_a_monitor_command_then_look_around(debugged, kernel):
    guest, gdb, _ = debugged()
    sym = symbols(kernel[1])
    assert "Breakpoint 1 at" in gdb.cmd("break cmd_cores")
    out = hit(gdb, guest, "cores")
    assert re.search(r"Breakpoint 1, cmd_cores \(argc=1", out), out
    frames = re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\w+)", gdb.cmd("bt"), re.M)
    assert frames[:3] == ["cmd_cores", "monitor_run", "kmain"], frames
    regs = gdb.cmd("info registers")
    assert re.search(rf"^rip\s+{sym['cmd_cores']:#x}\s", regs, re.M), regs
    assert re.search(r"^cr0\s+0x[0-9a-f]+\s+\[ PE .*PG \]", regs, re.M), regs
    assert re.search(r"^efer\s+0x[0-9a-f]+\s+\[ .*LMA.* \]", regs, re.M), regs
    assert gdb.value("ncpus") == "1"
    assert '"akvm"' in gdb.cmd("x/s bootinfo.loader")
    assert gdb.value("$fs_base") == "0"
    # The int3 under the breakpoint is not what gdb reads back.
    insn = gdb.cmd("x/1bx cmd_cores")
    assert "0xcc" not in insn, insn
    gdb.start("continue")
    guest.expect("1 cores online")
    guest.expect(guest.prompt)


def test_step_next_finish(debugged):
    guest, gdb, _ = debugged()
    gdb.cmd("break cmd_kerninfo")
    assert "cmd_kerninfo" in hit(gdb, guest, "kerninfo")
    assert re.search(r"^kerninfo \(\) at monitor\.c:\d+", gdb.cmd("step"), re.M)
    line = int(re.search(r'Line (\d+) of "monitor\.c"', gdb.cmd("info line *$pc")).group(1))
    out = gdb.cmd("next")
    assert int(re.match(r"(\d+)", out).group(1)) > line, out
    pc = gdb.value("$pc")
    gdb.cmd("stepi")
    assert gdb.value("$pc") != pc
    out = gdb.cmd("finish")
    assert "Run till exit from" in out and "cmd_kerninfo" in out, out
    gdb.cmd("delete")
    gdb.start("continue")
    guest.expect("TSC frequency")
    guest.expect(guest.prompt)


def test_watchpoint_on_a_global_the_guest_writes(debugged):
    guest, gdb, _ = debugged()
    assert "Hardware watchpoint 1: iommu_noflush" in gdb.cmd("watch iommu_noflush")
    out = hit(gdb, guest, "iommu noflush")
    assert "Hardware watchpoint 1: iommu_noflush" in out, out
    assert "Old value = false" in out and "New value = true" in out, out
    assert "cmd_iommu" in out, out
    gdb.cmd("delete")
    gdb.start("continue")
    guest.expect("does not invalidate")
    guest.expect(guest.prompt)
    assert "munmap invalidates" in guest.command("iommu flush")     # no stop: watchpoint gone


def mmio_in_python(gdb) -> int:
    return int(re.search(r"mmio bus: (\d+) accesses in Python", gdb.cmd("monitor stats")).group(1))


def test_read_watchpoint_on_a_global_a_command_reads(debugged):
    guest, gdb, _ = debugged()
    assert "Hardware read watchpoint 1: ncpus" in gdb.cmd("rwatch ncpus")
    gdb.start("continue")
    gdb.child.expect("Continuing.")
    for _ in range(2):                      # it stays: each "cores" reads ncpus once
        guest.send("cores\r")
        out = gdb.wait_stop()
        assert "Hardware read watchpoint 1: ncpus" in out and "Value = 1" in out, out
        assert "cmd_cores" in out, out
        gdb.start("continue")
        guest.expect("1 cores online")
        guest.expect(guest.prompt)
    assert "received signal SIGINT" in gdb.interrupt()
    gdb.cmd("delete")
    exits = mmio_in_python(gdb)
    gdb.start("continue")
    gdb.child.expect("Continuing.")
    assert "1 cores online" in guest.command("cores")      # no stop
    assert "received signal SIGINT" in gdb.interrupt()
    assert mmio_in_python(gdb) == exits                     # the page has its memory slot again


def test_access_watchpoint_sees_a_read_then_a_write(debugged):
    guest, gdb, _ = debugged()
    assert "Hardware access (read/write) watchpoint 1: next_pid" in gdb.cmd("awatch next_pid")
    out = hit(gdb, guest, "run hello")
    assert "Hardware access (read/write) watchpoint 1: next_pid" in out, out
    assert re.search(r"Value = (\d+)", out) and "proc_create" in out, out
    pid = int(re.search(r"Value = (\d+)", out).group(1))
    gdb.start("continue")
    out = gdb.wait_stop()
    assert f"Old value = {pid}" in out and f"New value = {pid + 1}" in out, out
    gdb.start("continue")
    guest.expect(r"\(hello\): exit status 0")
    guest.expect(guest.prompt)
    assert "received signal SIGINT" in gdb.interrupt()
    gdb.cmd("delete")
    gdb.start("continue")
    gdb.child.expect("Continuing.")
    assert f"pid {pid + 1} " in guest.command("run hello")


def test_read_watchpoints_where_kvm_needs_the_page(debugged):
    """Code, page tables, descriptor tables, a stack: KVM reads them itself, so a page
    with no memory slot there would fault the vCPU. Where akvm knows it (every vCPU's
    tables, GDT, IDT, TSS and stack page at the stop) the watchpoint is refused; code
    that runs from such a page stops with the reason on gdb's console."""
    guest, gdb, _ = debugged()
    gdb.cmd("awatch idt")
    gdb.start("continue")
    out = gdb.wait_stop()
    assert "Could not insert hardware watchpoint 1" in out, out
    guest.expect("refused Z4,.*: 0x[0-9a-f]+ is on a page of a vCPU's IDT, which KVM reads itself")
    gdb.cmd("delete")
    gdb.cmd("rwatch *(char *)cmd_cores")
    out = hit(gdb, guest, "cores")
    assert "cannot fetch instructions there: delete that watchpoint" in out, out
    assert "received signal SIGSEGV" in out and "cmd_cores" in out, out
    gdb.cmd("delete")
    gdb.start("continue")
    guest.expect("1 cores online")
    guest.expect(guest.prompt)


def test_a_snapshot_waits_for_the_watchpoints_to_go(debugged, tmp_path):
    """As with a write watchpoint: a watched page's device has no state to save."""
    guest, gdb, _ = debugged(control=tmp_path / "control")
    gdb.cmd("awatch iommu_noflush")
    gdb.start("continue")
    gdb.child.expect("Continuing.")
    with pytest.raises(GuestError, match="cannot save gdb watchpoint"):
        guest.snapshot(tmp_path / "snap")
    guest.send("iommu noflush\r")
    out = gdb.wait_stop()
    assert "Old value = false" in out and "New value = true" in out, out
    gdb.cmd("delete")
    gdb.start("continue")
    guest.expect("does not invalidate")
    assert guest.snapshot(tmp_path / "snap")["path"] == str(tmp_path / "snap")


def test_threads_ctrl_c_and_continue(debugged):
    guest, gdb, _ = debugged(cpus=2)
    threads = gdb.cmd("info threads")
    assert re.search(r'^\*?\s+1\s+Thread 1 "CPU 0"', threads, re.M), threads
    assert re.search(r'^\s+2\s+Thread 2 "CPU 1"', threads, re.M), threads
    assert "Switching to thread 2" in gdb.cmd("thread 2")
    assert "ap_main" in gdb.cmd("bt")
    gdb.start("continue")
    gdb.child.expect("Continuing.")
    time.sleep(0.3)
    assert "received signal SIGINT" in gdb.interrupt()
    gdb.start("continue")
    gdb.child.expect("Continuing.")
    assert "2 cores online" in guest.command("cores")
    assert "received signal SIGINT" in gdb.interrupt()
    status = gdb.cmd("monitor status")
    assert "2 vCPUs" in status and "CPU 1: rip 0x" in status, status
    assert re.search(r"00100000  [0-9a-f]{2} ", gdb.cmd("monitor phys 0x100000 16")), gdb.log
    # Ctrl-C names the thread gdb resumed alone (scheduler-locking), then the last reported.
    gdb.cmd("thread 2")
    gdb.cmd("set scheduler-locking on")
    gdb.start("continue")
    gdb.child.expect("Continuing.")
    assert 'Thread 2 "CPU 1" received signal SIGINT' in gdb.interrupt()
    gdb.cmd("set scheduler-locking off")
    gdb.cmd("thread 1")
    gdb.start("continue")
    gdb.child.expect("Continuing.")
    assert 'Thread 2 "CPU 1" received signal SIGINT' in gdb.interrupt()
    gdb.cmd("thread 1")
    # Stepping one vCPU while the other runs (gdb's vCont;s:1;c), then on.
    gdb.cmd("break cmd_kerninfo")
    assert "cmd_kerninfo" in hit(gdb, guest, "kerninfo")
    assert "kerninfo ()" in gdb.cmd("step")
    assert re.match(r"\d+\s", gdb.cmd("next"))
    gdb.cmd("delete")
    gdb.start("continue")
    guest.expect("TSC frequency")
    assert "2 cores online" in guest.command("cores")


def test_a_stop_in_user_code_cannot_step_but_runs_on(debugged):
    """kvm_pvm runs ring 3 natively: a step there would hand the guest a #DB, so it is
    refused, and the process runs on unharmed."""
    guest, gdb, _ = debugged()
    gdb.start("continue")
    gdb.child.expect("Continuing.")
    guest.send("run ubench loop 2000000000\r")       # about 1 s of ring-3 dec/jnz
    time.sleep(0.5)
    assert "SIGINT" in gdb.interrupt()
    assert gdb.value("$cs & 3") == "3", gdb.cmd("bt")
    out = gdb.cmd("stepi")
    assert "E03" in out, out
    gdb.start("continue")
    guest.expect("BENCH user-insn-loop-1k")
    guest.expect(guest.prompt)


def test_detach_leaves_the_guest_running_without_breakpoints(debugged):
    guest, gdb, _ = debugged()
    gdb.cmd("break cmd_cores")
    gdb.cmd("watch iommu_noflush")
    assert "detached" in gdb.cmd("detach")
    assert "1 cores online" in guest.command("cores")
    assert "does not invalidate" in guest.command("iommu noflush")


def test_kill_ends_akvm(debugged):
    guest, gdb, _ = debugged()
    assert "killed" in gdb.cmd("kill")
    assert guest.wait_exit(timeout=15) == ExitCode.POWEROFF
    assert "killed from gdb" in guest.serial_log


def test_gdb_wait_stops_before_the_first_instruction(debugged, kernel):
    guest, gdb, _ = debugged(wait=True)
    with open(kernel[0], "rb") as f:
        entry = ELFFile(f).header.e_entry
    assert gdb.value("/x $pc") == f"{entry:#x}"        # 32-bit, paging off
    assert "akvm guest kernel" not in guest.serial_log
    gdb.cmd("break kmain")        # not mapped yet: a debug register on its address
    gdb.start("continue")
    out = gdb.wait_stop()
    assert re.search(r"Breakpoint 1, kmain", out), out
    assert gdb.value("$cs") == "8" and "LMA" in gdb.cmd("p $efer")
    gdb.cmd("delete")
    gdb.start("continue")
    guest.expect(guest.prompt)


@pytest.mark.skipif(not (os.path.isfile(AKAROS) and os.path.isfile(AKAROS_ELF)),
                    reason="set AKVM_AKAROS_KERNEL and AKVM_AKAROS_ELF64 (its 64-bit ELF, "
                           "akaros-kernel-64b) to debug upstream Akaros")
def test_akaros_boot_function(debugged):
    guest, gdb, _ = debugged(wait=True, guest_kernel=AKAROS, elf=AKAROS_ELF, cpus=2,
                             memory="1G", prompt=r"ROS\(Core 0\)> ", timeout=120)
    gdb.cmd("break kernel_init")
    gdb.cmd("break pmem_init")
    gdb.start("continue")
    assert "kernel_init" in gdb.wait_stop(timeout=60)
    gdb.start("continue")
    out = gdb.wait_stop(timeout=60)
    assert re.search(r"Breakpoint 2, pmem_init", out), out
    frames = re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\w+)", gdb.cmd("bt"), re.M)
    assert frames[:2] == ["pmem_init", "kernel_init"], frames
    assert "killed" in gdb.cmd("kill")


# --- hostile clients --------------------------------------------------------------------

class Raw:
    """A bare protocol client (no gdb): what a broken or hostile peer can send."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = PacketReader(max_size=1 << 20)
        self.acks = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def packet(self) -> bytes:
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the stub closed the connection")
            self.acks += bytes(b for b in data if b in b"+-")
            for event in self.reader.feed(data):
                if isinstance(event, Packet):
                    return event.data

    def ask(self, data: bytes) -> bytes:
        self.send(frame(data))
        return self.packet()


def test_hostile_client_gets_errors_and_the_guest_runs_on(debugged, kernel):
    guest, gdb, port = debugged()
    sym = symbols(kernel[1])
    gdb.cmd("detach")
    raw = Raw(port)
    assert raw.ask(b"?").startswith(b"T05thread:1;")
    raw.send(b"$g#00")                                # bad checksum: a nak
    raw.send(b"garbage \x00\xff}}##")
    assert raw.ask(b"m%x,10" % (1 << 47)) == b"E03"    # non-canonical
    assert raw.ask(b"mffffffff00000000,10") == b"E03"  # not mapped
    assert raw.ask(b"mfee00000,4") == b"E03"           # the LAPIC: not RAM
    assert raw.ask(b"Z0,fee00000,1") == b"E03"         # a breakpoint on MMIO
    # Read and access watchpoints on MMIO, unmapped, of no length, too long.
    for where in (b"fee00000,4", b"ffffffff00000000,4", b"%x,0" % sym["ncpus"],
                  b"%x,ffffffff" % sym["ncpus"]):
        assert raw.ask(b"Z3," + where) == b"E03" and raw.ask(b"Z4," + where) == b"E03"
    assert raw.ask(b"Zz,1,1") == b"E01"
    raw.send(b"$" + b"M" * 100000 + b"#00")            # beyond PacketSize
    assert raw.packet() == b"E01"
    assert raw.ask(b"m%x,4" % sym["kmain"]) != b"E03"
    assert b"-" in raw.acks
    # One client at a time: a second one is closed at once.
    second = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert second.recv(100) == b""
    second.close()
    # A client that vanishes with a breakpoint set leaves the guest running without it.
    assert raw.ask(b"Z0,%x,1" % sym["cmd_cores"]) == b"OK"
    raw.sock.close()
    time.sleep(0.3)
    assert "1 cores online" in guest.command("cores")
    # ... and the stub takes the next client.
    raw = Raw(port)
    assert raw.ask(b"qC") == b"QC1"
    assert raw.ask(b"D") == b"OK"
    assert "1 cores online" in guest.command("cores")
