"""The GDB stub without KVM: framing, the packet dispatcher, the target description, and
GuestDebug's breakpoints, memory and watched pages over bytearray RAM with paging off.

Hypothesis throws arbitrary bytes at the reader and arbitrary packets at the
dispatcher: every packet gets a well-formed reply (or, for a resume or a
kill, none), nothing raises.
"""
import threading
import types
import xml.etree.ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from akvm.base import kvm
from akvm.base.bus import Bus
from akvm.base.memory import GuestMemory
from akvm.gdb import registers
from akvm.gdb.packets import (PACKET_SIZE, BadChecksum, Interrupt, Nak, Packet, PacketReader,
                              TooLong, escape, frame, unescape)
from akvm.gdb.session import E_BAD, E_MEMORY, E_THREAD, SIGINT, WATCH_KINDS, Session, Stop
from akvm.vcpu.debug import MAX_WATCH_LENGTH, DebugError, DebugStop, GuestDebug
from akvm.vcpu.paging import PAGE_SIZE, PagingState, table_pages

RAM = 1 << 20
FLAT = PagingState(cr0=0x11, cr3=0, cr4=0, efer=0)      # protected mode, paging off


class FakeSystem:
    def check_extension(self, cap):
        return {kvm.KVM_CAP_READONLY_MEM: 1, kvm.KVM_CAP_NR_MEMSLOTS: 64,
                kvm.KVM_CAP_SET_GUEST_DEBUG2: 0x1F0003}.get(cap, 0)


class FakeVm:
    """Records KVM_SET_USER_MEMORY_REGION: slot id -> (gpa, size, flags)."""

    def __init__(self):
        self.system = FakeSystem()
        self.slots = {0: (0, RAM, 0)}

    def set_user_memory_region(self, slot, gpa, size, host_addr, flags=0):
        if size == 0:
            del self.slots[slot]
        else:
            assert slot not in self.slots
            self.slots[slot] = (gpa, size, flags)


def make_debug():
    memory = GuestMemory.from_bytearray(RAM)
    memory.host_address = lambda slot: 0x7F00_0000_0000
    return GuestDebug(memory, FakeVm(), Bus("mmio"))


class FakeTarget:
    """The Target a Session drives, over a GuestDebug with two vCPUs in flat 32-bit mode."""

    def __init__(self):
        self.debug = make_debug()
        self.regs = {}
        for tid in (1, 2):
            sregs = kvm.kvm_sregs(cr0=0x11)
            self.regs[tid] = registers.VcpuRegisters(regs=kvm.kvm_regs(rip=0x1000 * tid),
                                                     sregs=sregs, fpu=kvm.kvm_fpu())
        self.resumed = []
        self.detached = self.killed = False

    def threads(self):
        return [1, 2]

    def thread_name(self, tid):
        return f"CPU {tid - 1}"

    def read_register(self, tid, number):
        return self.regs[tid].get(number)

    def write_register(self, tid, number, data):
        self.regs[tid].set(number, data)

    def read_memory(self, tid, addr, length):
        return self.debug.read(FLAT, addr, length) if length else b""

    def write_memory(self, tid, addr, data):
        self.debug.write(FLAT, addr, data)

    def insert(self, type_, tid, addr, kind):
        if type_ == 0:
            if kind != 1:
                raise DebugError("kind")
            self.debug.insert_breakpoint(FLAT, addr)
        elif type_ == 1:
            self.debug.insert_hw_breakpoint(addr)
        else:
            self.debug.insert_watchpoint(FLAT, addr, kind, WATCH_KINDS[type_])
        return True

    def remove(self, type_, tid, addr, kind):
        if type_ == 0:
            self.debug.remove_breakpoint(addr)
        elif type_ == 1:
            self.debug.remove_hw_breakpoint(addr)
        else:
            self.debug.remove_watchpoint(addr, kind, WATCH_KINDS[type_])
        return True

    def resume(self, actions, default):
        self.resumed.append((actions, default))
        return None

    def interrupt(self, tid):
        return Stop(tid, SIGINT)

    def detach(self):
        self.detached = True

    def kill(self):
        self.killed = True

    def monitor(self, tid, command):
        return f"thread {tid}: {command}\n"


def session():
    target = FakeTarget()
    return Session(target, Stop(1, why=DebugStop("swbreak", 0x1000))), target


def reply_is_a_packet(reply: bytes) -> None:
    """What the server would send parses back as the same packet."""
    events = PacketReader().feed(frame(reply))
    assert events == [Packet(reply)]


# --- framing ---------------------------------------------------------------------

@given(st.binary(max_size=3000), st.integers(1, 64))
def test_reader_takes_any_escaped_packet_in_any_chunks(data, chunk):
    wire = frame(escape(data))
    reader, events = PacketReader(), []
    for i in range(0, len(wire), chunk):
        events += reader.feed(wire[i:i + chunk])
    assert events == [Packet(escape(data))]
    assert unescape(events[0].data) == data


@given(st.binary(max_size=2000))
def test_reader_survives_any_bytes_and_then_reads_a_good_packet(noise):
    reader = PacketReader(max_size=512)
    events = reader.feed(noise)
    assert all(isinstance(e, (Packet, BadChecksum, TooLong, Interrupt, Nak)) for e in events)
    assert all(len(e.data) <= 512 for e in events if isinstance(e, Packet))
    # Whatever state the noise left, a complete packet after it still arrives (a `$`
    # inside an unfinished packet is data, so the reader may need the `#xx` first).
    tail = reader.feed(b"#00" + frame(b"qC"))
    assert tail[-1] == Packet(b"qC")


def test_reader_reports_bad_checksums_interrupts_and_naks():
    assert PacketReader().feed(b"$g#00") == [BadChecksum()]
    assert PacketReader().feed(b"$g#6G") == [BadChecksum()]
    assert PacketReader().feed(b"$g# 7") == [BadChecksum()]
    assert PacketReader().feed(b"+\x03-$g#67") == [Interrupt(), Nak(), Packet(b"g")]


def test_reader_drops_a_packet_longer_than_packet_size_and_reads_the_next():
    reader = PacketReader()
    events = reader.feed(b"$" + b"M" * (PACKET_SIZE * 4) + b"#00" + frame(b"?"))
    assert events == [TooLong(), Packet(b"?")]
    assert len(reader._data) <= PACKET_SIZE


def test_unescape_refuses_a_trailing_escape():
    with pytest.raises(ValueError):
        unescape(b"ab}")


# --- the dispatcher under hypothesis --------------------------------------------------

COMMANDS = [b"?", b"g", b"G", b"p", b"P", b"m", b"M", b"X", b"Z", b"z", b"c", b"s", b"C", b"S",
            b"H", b"Hg", b"Hc", b"T", b"D", b"D;1", b"k", b"q", b"Q", b"v", b"vCont;", b"vCont?",
            b"vKill;1", b"vMustReplyEmpty", b"qSupported:", b"QStartNoAckMode", b"qAttached",
            b"qC", b"qfThreadInfo", b"qsThreadInfo", b"qThreadExtraInfo,", b"qRcmd,",
            b"qXfer:features:read:target.xml:", b"qXfer:threads:read::", b"qXfer:memory-map:read::",
            b"Z0,", b"Z1,", b"Z2,", b"Z3,", b"Z4,", b"z0,", b"z4,", b"m1000,", b"M1000,", b"X1000,",
            b"p10", b"P10="]
ARGS = st.one_of(st.binary(max_size=48),
                 st.text("0123456789abcdefABCDEF,:;=-p.x", max_size=48).map(str.encode))
PACKETS = st.builds(lambda c, a: c + a, st.sampled_from(COMMANDS), ARGS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PACKETS, min_size=1, max_size=12))
def test_dispatch_answers_any_packet_without_raising(packets):
    s, target = session()
    for data in packets:
        reply = s.dispatch(data)
        if reply is None:         # resumed or killed: the target runs, a stop comes later
            assert s.running or s.killed
            if s.running:
                s.stopped(Stop(2, why=DebugStop("step")))
            continue
        assert isinstance(reply, bytes)
        reply_is_a_packet(reply)
        assert len(reply) <= PACKET_SIZE * 2 + 2


def test_dispatch_while_running_answers_e_and_ctrl_c_stops():
    s, target = session()
    assert s.dispatch(b"c") is None and s.running
    assert s.dispatch(b"g") == b"E04"
    assert s.interrupted().startswith(b"T02thread:1;")
    assert not s.running


def test_ctrl_c_names_the_thread_resumed_by_name_else_the_last_reported():
    s, _ = session()
    s.stopped(Stop(2))
    assert s.dispatch(b"vCont;c") is None and s.interrupted().startswith(b"T02thread:2;")
    assert s.dispatch(b"vCont;c:1") is None and s.interrupted().startswith(b"T02thread:1;")
    assert s.dispatch(b"Hg2") == b"OK"                 # registers only: not a resume choice
    assert s.dispatch(b"c") is None and s.interrupted().startswith(b"T02thread:1;")
    assert s.dispatch(b"Hc2") == b"OK"
    assert s.dispatch(b"c") is None and s.interrupted().startswith(b"T02thread:2;")


# --- the dispatcher, packet by packet ----------------------------------------------------

def test_qsupported_and_no_ack_mode():
    s, _ = session()
    features = s.dispatch(b"qSupported:multiprocess+;swbreak+;hwbreak+").split(b";")
    assert b"PacketSize=%x" % PACKET_SIZE in features
    assert b"qXfer:features:read+" in features and b"swbreak+" in features
    assert s.ack and s.dispatch(b"QStartNoAckMode") == b"OK" and not s.ack


def test_target_xml_read_in_chunks_describes_every_register():
    s, _ = session()
    doc, offset = b"", 0
    while True:
        reply = s.dispatch(b"qXfer:features:read:target.xml:%x,%x" % (offset, 300))
        assert reply[:1] in (b"m", b"l")
        chunk = unescape(reply[1:])
        doc += chunk
        offset += len(chunk)
        if reply[:1] == b"l":
            break
    root = ET.fromstring(doc.decode())
    assert root.find("architecture").text == "i386:x86-64"
    regs = [(r.get("name"), int(r.get("regnum")), int(r.get("bitsize"))) for r in root.iter("reg")]
    assert [name for name, _, _ in regs] == [r.name for r in registers.REGISTERS]
    assert [n for _, n, _ in regs] == list(range(len(registers.REGISTERS)))
    assert sum(bits for _, _, bits in regs) // 8 == registers.G_SIZE
    names = {f.get("name"): f for f in root.iter("feature")}
    assert {"org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments"} <= set(names)
    builtin = {"int", "int32", "int64", "data_ptr", "code_ptr", "i387_ext", "uint128"}
    for feature in names.values():     # GDB scopes a type to the feature that defines it
        defined = {t.get("id") for t in feature if t.tag in ("flags", "vector", "union")}
        for reg in feature.iter("reg"):
            assert reg.get("type") in defined | builtin, reg.get("name")
    assert s.dispatch(b"qXfer:features:read:other.xml:0,100") == E_BAD


def test_threads_are_vcpus_named_cpu_n():
    s, _ = session()
    assert s.dispatch(b"qfThreadInfo") == b"m1,2"
    assert s.dispatch(b"qsThreadInfo") == b"l"
    assert s.dispatch(b"qC") == b"QC1"
    assert s.dispatch(b"qThreadExtraInfo,2") == b"CPU 1".hex().encode()
    xml = unescape(s.dispatch(b"qXfer:threads:read::0,1000")[1:]).decode()
    assert 'name="CPU 0"' in xml and 'name="CPU 1"' in xml
    assert s.dispatch(b"Hg2") == b"OK" and s.dispatch(b"qC") == b"QC2"
    assert s.dispatch(b"Hg3") == E_THREAD and s.dispatch(b"T3") == E_THREAD
    assert s.dispatch(b"T2") == b"OK"


def test_registers_g_p_and_writes():
    s, target = session()
    g = bytes.fromhex(s.dispatch(b"g").decode())
    assert len(g) == registers.G_SIZE
    rip = registers.NUMBER["rip"]
    assert s.dispatch(b"p%x" % rip) == (0x1000).to_bytes(8, "little").hex().encode()
    assert s.dispatch(b"P%x=%s" % (rip, (0x4242).to_bytes(8, "little").hex().encode())) == b"OK"
    assert target.regs[1].regs.rip == 0x4242
    assert s.dispatch(b"P%x=00" % rip) == E_BAD                 # wrong size
    assert s.dispatch(b"p%x" % len(registers.REGISTERS)) == E_BAD
    assert s.dispatch(b"G" + g.hex().encode()) == b"OK" and target.regs[1].regs.rip == 0x1000
    assert s.dispatch(b"G00") == E_BAD


def test_stop_replies_name_the_thread_and_why():
    s, _ = session()
    assert s.stop_reply(Stop(2, 5, DebugStop("watch", 0xABC), {16: b"\x01" * 8})) == \
        b"T05thread:2;10:0101010101010101;watch:abc;"
    assert s.stop_reply(Stop(1, 5, DebugStop("swbreak", 1))).endswith(b"swbreak:;")
    assert s.stop_reply(Stop(1, 5, DebugStop("hwbreak", 1))).endswith(b"hwbreak:;")
    assert s.stop_reply(Stop(1, 5, DebugStop("rwatch", 0x10))).endswith(b";rwatch:10;")
    assert s.stop_reply(Stop(1, 5, DebugStop("awatch", 0x10))).endswith(b";awatch:10;")
    # A message goes to GDB's console first (an O packet), once.
    stop = Stop(1, 11, DebugStop("fetch", 0x10), message="why\n")
    assert s.stopped(stop).startswith(b"T0bthread:1;")
    assert s.take_output() == [b"O" + b"why\n".hex().encode()] and s.take_output() == []


def test_vcont_actions_reach_the_target():
    s, target = session()
    for packet, expected in ((b"vCont;s:1;c", ({1: "s"}, "c")), (b"vCont;c:2", ({2: "c"}, None)),
                             (b"vCont;S05:p1.2;c:1", ({2: "s", 1: "c"}, None)),
                             (b"c", ({}, "c")), (b"s", ({1: "s"}, None))):
        assert s.dispatch(packet) is None
        assert target.resumed[-1] == expected
        s.stopped(Stop(1))
    assert s.dispatch(b"vCont;s:3") == E_THREAD
    assert s.dispatch(b"vCont;x") == E_BAD
    assert s.dispatch(b"vCont?") == b"vCont;c;C;s;S"


def test_monitor_detach_kill():
    s, target = session()
    assert s.dispatch(b"Hg2") == b"OK"
    assert s.dispatch(b"qRcmd," + b"status".hex().encode()) == b"thread 2: status\n".hex().encode()
    assert s.dispatch(b"D") == b"OK" and target.detached and s.detached
    s, target = session()
    assert s.dispatch(b"k") is None and target.killed and s.killed


# --- memory and breakpoints through GuestDebug -------------------------------------------

def test_memory_reads_show_the_original_bytes_under_breakpoints():
    s, target = session()
    ram = target.debug.memory
    ram.write(0x2000, bytes(range(16)))
    assert s.dispatch(b"Z0,2004,1") == b"OK"
    assert ram.read(0x2004, 1) == b"\xcc"
    assert s.dispatch(b"m2000,10") == bytes(range(16)).hex().encode()
    assert s.dispatch(b"M2003,2:aabb") == b"OK"            # over the int3: it stays
    assert ram.read(0x2003, 2) == b"\xaa\xcc"
    assert s.dispatch(b"m2003,2") == b"aabb"
    assert s.dispatch(b"X2004,1:" + escape(b"#")) == b"OK"
    assert s.dispatch(b"m2004,1") == b"23"
    assert s.dispatch(b"z0,2004,1") == b"OK"
    assert ram.read(0x2004, 1) == b"#"
    assert s.dispatch(b"Z0,2004,2") == E_MEMORY             # x86 breakpoints are 1 byte


def test_memory_outside_ram_is_an_error_or_a_short_read():
    s, _ = session()
    assert s.dispatch(b"m%x,10" % RAM) == E_MEMORY
    assert s.dispatch(b"m%x,10" % (RAM - 8)) == bytes(8).hex().encode()   # what there is
    assert s.dispatch(b"M%x,2:0000" % (RAM - 1)) == E_MEMORY             # all or nothing
    assert s.dispatch(b"m1000,5") == bytes(5).hex().encode()
    assert s.dispatch(b"M1000,3:00") == E_BAD                            # length mismatch
    assert s.dispatch(b"mfffffffffffffffff,1") == E_BAD                   # not a 64-bit number


def test_breakpoints_not_yet_mapped_take_debug_registers_and_mmio_is_refused():
    s, target = session()
    high = 0xFFFF_FFFF_8010_0000            # not reachable before long mode
    for i in range(4):
        assert s.dispatch(b"Z0,%x,1" % (high + i)) == b"OK"
    assert s.dispatch(b"Z0,%x,1" % (high + 4)) == E_MEMORY        # four debug registers
    assert s.dispatch(b"Z1,%x,1" % (high + 4)) == E_MEMORY
    assert s.dispatch(b"z0,%x,1" % high) == b"OK"
    assert s.dispatch(b"Z1,%x,1" % (high + 4)) == b"OK"
    assert s.dispatch(b"Z0,fee00000,1") == E_MEMORY              # not RAM (the LAPIC)
    assert target.debug.breakpoint_here(FLAT, high + 1)


def test_watchpoint_write_protects_its_page_only_when_committed():
    s, target = session()
    debug, vm = target.debug, target.debug.vm
    assert s.dispatch(b"Z2,5004,4") == b"OK"
    assert vm.slots == {0: (0, RAM, 0)}                  # nothing until the vCPUs run
    debug.commit()
    pieces = sorted(vm.slots.values())
    assert pieces == [(0, 0x5000, 0), (0x5000, 0x1000, kvm.KVM_MEM_READONLY),
                      (0x6000, RAM - 0x6000, 0)]
    assert debug.mmio_bus.find(0x5004) is not None
    # GDB removes and re-inserts at every stop: no slot changes for that.
    assert s.dispatch(b"z2,5004,4") == b"OK" and s.dispatch(b"Z2,5004,4") == b"OK"
    debug.commit()
    assert sorted(vm.slots.values()) == pieces
    # A write through the page's bus device lands in RAM and hits only inside the range.
    page = debug.mmio_bus.find(0x5000).device
    page.write(0x8, 4, 0x11223344)
    assert debug.memory.read(0x5008, 4) == bytes.fromhex("44332211")
    assert debug.watch_hit(0x5008, 4, write=True) is None
    assert debug.watch_hit(0x5006, 4, write=True) == DebugStop("watch", 0x5004)
    assert debug.watch_hit(0x5006, 4, write=False) is None          # reads are not watched
    assert s.dispatch(b"Z2,6ffe,4") == b"OK"             # across two pages, merged
    debug.commit()
    assert (0x5000, 0x3000, kvm.KVM_MEM_READONLY) in vm.slots.values()    # 5000-7fff
    assert s.dispatch(b"z2,5004,4") == b"OK" and s.dispatch(b"z2,6ffe,4") == b"OK"
    debug.commit()
    assert vm.slots == {0: (0, RAM, 0)} and debug.mmio_bus.find(0x5004) is None
    assert s.dispatch(b"Z2,%x,4" % RAM) == E_MEMORY


class VcpuThread(threading.Thread):
    """Where a watched page's device leaves its stop, as akvm.vcpu.cpu.VcpuThread."""
    debug_event = None


def on_a_vcpu(*accesses):
    """The accesses, run by a vCPU thread: (what the last returned, the stop it was left)."""
    result = []
    thread = VcpuThread(target=lambda: result.extend(access() for access in accesses))
    thread.start()
    thread.join()
    return result[-1], thread.debug_event


def test_read_and_access_watchpoints_leave_their_page_without_a_slot():
    s, target = session()
    debug, vm = target.debug, target.debug.vm
    assert s.dispatch(b"Z3,5004,4") == b"OK"
    debug.commit()
    assert sorted(vm.slots.values()) == [(0, 0x5000, 0), (0x6000, RAM - 0x6000, 0)]
    assert debug.mmio_bus.find(0x5004).device.gpa == 0x5000
    # A write watchpoint on the same page too: the hole wins; the next page is read-only.
    assert s.dispatch(b"Z2,5ff0,20") == b"OK"
    debug.commit()
    assert sorted(vm.slots.values()) == [(0, 0x5000, 0), (0x6000, 0x1000, kvm.KVM_MEM_READONLY),
                                         (0x7000, RAM - 0x7000, 0)]
    assert s.dispatch(b"z3,5004,4") == b"OK"             # only writes watched now
    debug.commit()
    assert sorted(vm.slots.values()) == [(0, 0x5000, 0), (0x5000, 0x2000, kvm.KVM_MEM_READONLY),
                                         (0x7000, RAM - 0x7000, 0)]
    assert s.dispatch(b"Z4,0,1") == b"OK"                # the slot's first page
    debug.commit()
    assert sorted(vm.slots.values()) == [(0x1000, 0x4000, 0),
                                         (0x5000, 0x2000, kvm.KVM_MEM_READONLY),
                                         (0x7000, RAM - 0x7000, 0)]
    assert s.dispatch(b"z4,0,1") == b"OK" and s.dispatch(b"z2,5ff0,20") == b"OK"
    debug.commit()
    assert vm.slots == {0: (0, RAM, 0)} and debug.mmio_bus.ranges() == []
    # What GDB may not ask for: an E reply each time, nothing inserted.
    for packet in (b"Z3,5000,0", b"Z4,5000,0", b"Z3,5000,%x" % (MAX_WATCH_LENGTH + 1),
                   b"Z3,%x,4" % RAM, b"Z4,%x,4" % (RAM - 2), b"Z4,fee00000,4",
                   b"Z3,ffffffff80000000,8", b"Z4,5000,ffffffffffffffff"):
        assert s.dispatch(packet) == E_MEMORY, packet
    assert s.dispatch(b"Z3,5000") == E_BAD and s.dispatch(b"Z4,5000,1,2") == E_BAD
    debug.commit()
    assert vm.slots == {0: (0, RAM, 0)}


def test_a_page_without_a_slot_serves_every_access_size_and_reports_its_kind():
    s, target = session()
    debug = target.debug
    ram = debug.memory
    ram.write(0x4ff0, bytes(range(1, 0x41)))        # 0x4ff0-0x502f: pages 4 (a slot) and 5
    assert s.dispatch(b"Z4,5010,2") == b"OK" and s.dispatch(b"Z3,5020,1") == b"OK"
    debug.commit()
    bus = debug.mmio_bus
    for gpa in (0x5000, 0x5001, 0x5003, 0x5007, 0x500e, 0x501f):
        for size in (1, 2, 4, 8):
            value, stop = on_a_vcpu(lambda: bus.read(gpa, size))
            assert value == int.from_bytes(ram.read(gpa, size), "little"), (gpa, size)
            touched = range(gpa, gpa + size)
            want = (DebugStop("awatch", 0x5010) if {0x5010, 0x5011} & set(touched)
                    else DebugStop("rwatch", 0x5020) if 0x5020 in touched else None)
            assert stop == want, (gpa, size)
    # Up to the page's end, then on into the next page (KVM splits there: read as it is).
    ram.write(0x5ffc, bytes(range(0xA0, 0xA8)))
    assert on_a_vcpu(lambda: bus.read(0x5ffc, 8)) == (0xA7A6A5A4A3A2A1A0, None)
    # Writes land in RAM; a read watchpoint does not see them, an access watchpoint does.
    _, stop = on_a_vcpu(lambda: bus.write(0x501f, 2, 0xBBAA))
    assert ram.read(0x501f, 2) == b"\xaa\xbb" and stop is None
    _, stop = on_a_vcpu(lambda: bus.write(0x500e, 4, 0x44332211))
    assert ram.read(0x500e, 4) == bytes.fromhex("11223344") and stop == DebugStop("awatch", 0x5010)
    _, stop = on_a_vcpu(lambda: bus.write(0x5ffd, 8, 0x0807060504030201))
    assert ram.read(0x5ffd, 8) == bytes(range(1, 9)) and stop is None
    # One instruction, two accesses (a read-modify-write): the first stop is kept.
    _, stop = on_a_vcpu(lambda: bus.read(0x5010, 1), lambda: bus.write(0x5020, 1, 0))
    assert stop == DebugStop("awatch", 0x5010)


def test_code_on_a_page_without_a_slot_is_a_stop():
    debug = make_debug()
    vcpu = FakeVcpu()
    thread = types.SimpleNamespace(vcpu=vcpu)
    debug.insert_watchpoint(FLAT, 0x5004, 4, "rwatch")
    vcpu.regs.rip = 0x5010
    assert debug.fetch_stop(thread) is None              # not committed: the page has its slot
    debug.commit()
    assert debug.fetch_stop(thread) == DebugStop("fetch", 0x5010)
    vcpu.regs.rip = 0x4ffa                               # its last bytes would be on 0x5000
    assert debug.fetch_stop(thread) == DebugStop("fetch", 0x4ffa)
    for rip in (0x4ff0, 0x6000):
        vcpu.regs.rip = rip
        assert debug.fetch_stop(thread) is None
    debug.insert_watchpoint(FLAT, 0x5004, 4, "watch")
    debug.remove_watchpoint(0x5004, 4, "rwatch")
    debug.commit()
    vcpu.regs.rip = 0x5010                               # read-only: KVM fetches from it
    assert debug.fetch_stop(thread) is None


class FakeVcpu:
    def __init__(self):
        self.regs, self.sregs = kvm.kvm_regs(), kvm.kvm_sregs(cr0=0x11)

    def get_regs(self):
        return self.regs

    def get_sregs(self):
        return self.sregs


def test_x87_tag_word_round_trip():
    fpu = kvm.kvm_fpu(fsw=3 << 11)                       # TOP = 3
    fpu.ftwx = 0b0000_1001                               # physical 0 and 3 in use
    fpu.fpr[0][9] = 0x3F                                 # ST0 = physical 3: a normal number
    fpu.fpr[0][7] = 0x80
    tag = registers.full_tag_word(fpu)
    assert (tag >> 6) & 3 == 0 and tag & 3 == 1           # physical 3 valid, physical 0 zero
    assert all((tag >> (2 * p)) & 3 == 3 for p in (1, 2, 4, 5, 6, 7))
    assert registers.abridged_tag(tag) == 0b0000_1001


def long_mode_tables(memory) -> PagingState:
    """4-level tables in RAM: linear 0x5000 a supervisor page, 0x6000 a user page."""
    p, w, u = 1, 2, 4
    memory.write_u64(0x1000, 0x2000 | p | w | u)          # PML4[0]
    memory.write_u64(0x2000, 0x3000 | p | w | u)          # PDPT[0]
    memory.write_u64(0x3000, 0x4000 | p | w | u)          # PD[0]
    memory.write_u64(0x4000 + 5 * 8, 0x5000 | p | w)      # PT[5]: supervisor
    memory.write_u64(0x4000 + 6 * 8, 0x6000 | p | w | u)  # PT[6]: user
    return PagingState(cr0=0x8000_0011, cr3=0x1000, cr4=0x20, efer=0x500)


def test_breakpoints_through_page_tables_leave_them_untouched(monkeypatch):
    import akvm.vcpu.debug as debug_module
    debug = make_debug()
    ps = long_mode_tables(debug.memory)
    tables = debug.memory.read(0x1000, 0x4000)
    debug.memory.write(0x5010, b"\x90\x90")
    assert debug.read(ps, 0x5010, 2) == b"\x90\x90"
    assert debug.insert_breakpoint(ps, 0x5010) == "int3"
    assert debug.memory.read(0x5010, 1) == b"\xcc" and debug.read(ps, 0x500f, 3) == b"\x00\x90\x90"
    assert debug.memory.read(0x1000, 0x4000) == tables       # no accessed or dirty bits set
    assert debug.insert_breakpoint(ps, 0x7000) == "debug register"   # not mapped (yet)
    # Where ring 3 never exits (kvm_pvm), an int3 on a user page would go to the guest.
    monkeypatch.setattr(debug_module, "RING3_TRAPS_EXIT", False)
    with pytest.raises(DebugError, match="user page"):
        debug.insert_breakpoint(ps, 0x6000)
    user = kvm.kvm_sregs(cr0=0x8000_0011)
    user.cs.selector = 0x2B
    with pytest.raises(DebugError, match="ring 3"):
        debug.check_step(user)
    debug.check_step(kvm.kvm_sregs(cr0=0x8000_0011))           # ring 0 steps
    monkeypatch.setattr(debug_module, "RING3_TRAPS_EXIT", True)
    assert debug.insert_breakpoint(ps, 0x6000) == "int3"
    debug.check_step(user)


def test_pages_kvm_accesses_itself_refuse_the_watchpoints_that_would_fault_the_vcpu():
    debug = make_debug()
    ps = long_mode_tables(debug.memory)
    debug.memory.write_u64(0x4000 + 1 * 8, 0x1000 | 3)       # PT[1]: linear 0x1000 -> the PML4
    debug.memory.write_u64(0x1000 + 511 * 8, 0x1000 | 3)     # a self-map: walked once
    debug.memory.write_u64(0x3000 + 8, 0x20_0000 | 0x83)      # PD[1]: a 2 MiB page, no table
    tables = {0x1000, 0x2000, 0x3000, 0x4000}
    assert table_pages(debug.memory, ps) == tables
    assert len(table_pages(debug.memory, ps, limit=2)) == 2
    sregs = kvm.kvm_sregs(cr0=ps.cr0, cr3=ps.cr3, cr4=ps.cr4, efer=ps.efer)
    sregs.cs.l = 1
    sregs.gdt.base, sregs.gdt.limit = 0x5000, 0x3F
    sregs.idt.base, sregs.idt.limit = 0x5800, 0xFFF           # on into page 0x6000
    sregs.tr.base, sregs.tr.limit = 0x7000, 0x67              # not mapped: nothing to take
    pages = debug.kvm_pages(kvm.kvm_regs(rsp=0x6FF8), sregs)
    assert pages == {**dict.fromkeys(tables, "page tables"), 0x5000: "IDT", 0x6000: "stack"}
    with pytest.raises(DebugError, match="page tables, which KVM reads itself"):
        debug.insert_watchpoint(ps, 0x1008, 8, "awatch", pages)
    with pytest.raises(DebugError, match="IDT, which KVM reads itself"):
        debug.insert_watchpoint(ps, 0x5000, 1, "rwatch", pages)
    for kind in ("watch", "rwatch", "awatch"):
        with pytest.raises(DebugError, match="stack"):
            debug.insert_watchpoint(ps, 0x6100, 8, kind, pages)
    debug.insert_watchpoint(ps, 0x1008, 8, "watch", pages)    # KVM only reads it: read-only works
    debug.insert_watchpoint(ps, 0x5000, 1, "watch", pages)
    assert len(debug._watches) == 2


def test_table_pages_in_32_bit_and_pae_paging():
    memory = GuestMemory.from_bytearray(RAM)
    memory.write_u32(0x1000, 0x2000 | 1)                      # PDE[0] -> a page table
    memory.write_u32(0x1004, 0x40_0000 | 0x81)                # PDE[1]: 4 MiB with CR4.PSE
    flat32 = PagingState(cr0=0x8000_0011, cr3=0x1000, cr4=0, efer=0)
    assert table_pages(memory, flat32) == {0x1000, 0x2000, 0x40_0000}
    pse = PagingState(cr0=0x8000_0011, cr3=0x1000, cr4=0x10, efer=0)
    assert table_pages(memory, pse) == {0x1000, 0x2000}
    memory.write_u64(0x5020, 0x6000 | 1)                      # PDPTE[0], 32-byte aligned CR3
    memory.write_u64(0x6000, 0x7000 | 1)                      # PD[0] -> a page table
    memory.write_u64(0x6008, 0x20_0000 | 0x81)                # PD[1]: 2 MiB
    pae = PagingState(cr0=0x8000_0011, cr3=0x5020, cr4=0x20, efer=0)
    assert table_pages(memory, pae) == {0x5000, 0x6000, 0x7000}


def test_watched_pages_above_4g_split_their_own_slot():
    memory = GuestMemory.from_bytearray(RAM)
    memory.add_slot(1 << 32, bytearray(RAM))
    memory.host_address = lambda slot: 0x7F00_0000_0000 + slot.index * (1 << 30)
    vm = FakeVm()
    vm.slots[1] = (1 << 32, RAM, 0)
    debug = GuestDebug(memory, vm, Bus("mmio"))
    ps = PagingState(cr0=0x8000_0011, cr3=0x1000, cr4=0x20, efer=0x500)
    long_mode_tables(memory)
    memory.write_u64(0x4000 + 7 * 8, (1 << 32) + 0x3000 | 3)   # PT[7] -> 4 GiB + 0x3000
    debug.insert_watchpoint(ps, 0x7008, 8)
    debug.commit()
    assert vm.slots[0] == (0, RAM, 0)                            # the low slot untouched
    assert sorted(v for k, v in vm.slots.items() if k != 0) == [
        (1 << 32, 0x3000, 0), ((1 << 32) + 0x3000, 0x1000, kvm.KVM_MEM_READONLY),
        ((1 << 32) + 0x4000, RAM - 0x4000, 0)]
    assert max(vm.slots) == 63                                   # split-off ids from the top
    debug.remove_watchpoint(0x7008, 8)
    debug.commit()
    assert vm.slots == {0: (0, RAM, 0), 1: (1 << 32, RAM, 0)}


def test_a_slot_of_one_watched_page_goes_and_comes_back():
    memory = GuestMemory.from_bytearray(RAM)
    memory.add_slot(0x20_0000, bytearray(PAGE_SIZE))
    memory.host_address = lambda slot: 0x7F00_0000_0000 + slot.index * (1 << 30)
    vm = FakeVm()
    vm.slots[1] = (0x20_0000, PAGE_SIZE, 0)
    debug = GuestDebug(memory, vm, Bus("mmio"))
    debug.insert_watchpoint(FLAT, 0x20_0ff8, 8, "awatch")
    debug.commit()
    assert vm.slots == {0: (0, RAM, 0)}
    debug.remove_watchpoint(0x20_0ff8, 8, "awatch")
    debug.insert_watchpoint(FLAT, 0x20_0ff8, 8, "watch")
    debug.commit()
    assert vm.slots == {0: (0, RAM, 0), 1: (0x20_0000, PAGE_SIZE, kvm.KVM_MEM_READONLY)}
