"""One GDB connection's packets and their replies, over a Target (the machine, or a test double).

The packets follow the GDB manual's "Remote Protocol" appendix. Threads
are vCPUs: thread id N is vCPU N - 1, named "CPU N-1". The target is
all-stop: when one vCPU stops, all do. Anything a peer sends that does not
parse, or asks for what the guest cannot give (an unmapped address, a
breakpoint on MMIO), gets an `E` reply; dispatch() never raises for it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Protocol

from akvm.gdb import registers
from akvm.gdb.packets import PACKET_SIZE, PacketError, escape, unescape
from akvm.vcpu.debug import AWATCH, RWATCH, WATCH, DebugError, DebugStop

log = logging.getLogger("akvm.gdb")

SIGINT, SIGTRAP, SIGSEGV = 2, 5, 11
E_BAD, E_THREAD, E_MEMORY, E_STATE = b"E01", b"E02", b"E03", b"E04"

# Z/z types: 0 software breakpoint, 1 hardware breakpoint, 2 write, 3 read, 4 access watchpoint.
SW_BREAK, HW_BREAK, WRITE_WATCH, READ_WATCH, ACCESS_WATCH = range(5)
WATCH_KINDS = {WRITE_WATCH: WATCH, READ_WATCH: RWATCH, ACCESS_WATCH: AWATCH}

FEATURES = (f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;qXfer:threads:read+;"
            "QStartNoAckMode+;swbreak+;hwbreak+;vContSupported+").encode()


@dataclass
class Stop:
    """What a stop reply says: the thread, the signal, why, and registers sent along;
    `message`, for GDB's console before it (an O packet)."""
    tid: int
    signal: int = SIGTRAP
    why: DebugStop | None = None
    expedited: dict[int, bytes] = field(default_factory=dict)
    message: str = ""


@dataclass
class Exited:
    """The machine ended (the guest powered off, reset, or akvm quit)."""
    status: int


class Target(Protocol):
    """What a Session drives. Memory and register calls happen only while stopped;
    DebugError means "cannot" (an E reply)."""

    def threads(self) -> list[int]: ...
    def thread_name(self, tid: int) -> str: ...
    def read_register(self, tid: int, number: int) -> bytes: ...
    def write_register(self, tid: int, number: int, data: bytes) -> None: ...
    def read_memory(self, tid: int, addr: int, length: int) -> bytes: ...
    def write_memory(self, tid: int, addr: int, data: bytes) -> None: ...
    def insert(self, type_: int, tid: int, addr: int, kind: int) -> bool: ...
    def remove(self, type_: int, tid: int, addr: int, kind: int) -> bool: ...
    def resume(self, actions: dict[int, str], default: str | None) -> Stop | None: ...
    def interrupt(self, tid: int) -> Stop: ...
    def detach(self) -> None: ...
    def kill(self) -> None: ...
    def monitor(self, tid: int, command: str) -> str: ...


def _hex_int(text: bytes) -> int:
    if not text or not re.fullmatch(rb"[0-9a-fA-F]+", text) or len(text) > 16:
        raise PacketError(f"not a hex number: {text[:20]!r}")
    return int(text, 16)


def _hex_bytes(text: bytes) -> bytes:
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise PacketError("bad hex data") from None


def _thread_id(text: bytes) -> int:
    """A thread-id: hex N, 0 (any), -1 (all), or pPID.TID; returns N, 0 or -1."""
    if text.startswith(b"p"):
        _, _, text = text.partition(b".")
    if text == b"-1":
        return -1
    return _hex_int(text)


class Session:
    """The protocol state of one connection: ack mode, selected threads, running or not."""

    def __init__(self, target: Target, stop: Stop):
        self.target = target
        self.ack = True
        self.running = False
        self.last_stop: Stop | Exited = stop
        self.g_thread = stop.tid         # for registers and memory (Hg)
        self.c_thread = -1               # for legacy s/c (Hc); -1: all
        self.interrupt_thread = stop.tid  # what a Ctrl-C stop names: see _resume()
        self.output: list[bytes] = []    # O packets to send before the next reply
        self.detached = False
        self.killed = False

    # --- entry points -----------------------------------------------------------

    def handle(self, data: bytes) -> bytes | None:
        """The reply to a packet (None while the target runs); never raises."""
        try:
            return self.dispatch(data)
        except Exception:      # a bug must not end the session: log it, answer E
            log.exception("packet %r", data[:64])
            return E_BAD

    def dispatch(self, data: bytes) -> bytes | None:
        """The reply to a packet, or None when the target was resumed."""
        if self.running:
            return E_STATE       # all-stop: nothing but Ctrl-C while running
        try:
            return self._dispatch(data)
        except (PacketError, ValueError, UnicodeDecodeError) as e:
            log.debug("bad packet %r: %s", data[:64], e)
            return E_BAD
        except DebugError as e:
            if data[:1] == b"Z":      # GDB only says "Could not insert": say why here
                log.warning("refused %s: %s", data[:64].decode("ascii", "replace"), e)
            else:
                log.debug("%r: %s", data[:64], e)
            return E_MEMORY

    def stopped(self, stop: Stop | Exited) -> bytes:
        """The stop reply to send now that the target stopped (or ended), after `output`."""
        self.running = False
        self.last_stop = stop
        if isinstance(stop, Stop):
            self.g_thread = stop.tid
            if stop.message:
                self.output.append(b"O" + stop.message.encode().hex().encode())
        return self.stop_reply(stop)

    def interrupted(self) -> bytes:
        """The stop reply to a Ctrl-C."""
        return self.stopped(self.target.interrupt(self.interrupt_thread))

    def take_output(self) -> list[bytes]:
        output, self.output = self.output, []
        return output

    def stop_reply(self, stop: Stop | Exited) -> bytes:
        if isinstance(stop, Exited):
            return b"W%02x" % (stop.status & 0xFF)
        parts = [b"T%02xthread:%x;" % (stop.signal, stop.tid)]
        for number, value in sorted(stop.expedited.items()):
            parts.append(b"%x:%s;" % (number, value.hex().encode()))
        why = stop.why
        if why is not None and why.kind == "swbreak":
            parts.append(b"swbreak:;")
        elif why is not None and why.kind == "hwbreak":
            parts.append(b"hwbreak:;")
        elif why is not None and why.kind in WATCH_KINDS.values():
            parts.append(b"%s:%x;" % (why.kind.encode(), why.address))
        return b"".join(parts)

    # --- dispatch ------------------------------------------------------------------

    def _thread(self, tid: int) -> int:
        threads = self.target.threads()
        if tid in (0, -1):
            return self.g_thread if self.g_thread in threads else threads[0]
        if tid not in threads:
            raise DebugError(f"no thread {tid}")
        return tid

    def _dispatch(self, data: bytes) -> bytes | None:
        if not data:
            return b""
        cmd, rest = data[:1], data[1:]
        if cmd == b"?":
            return self.stop_reply(self.last_stop)
        if isinstance(self.last_stop, Exited):
            return E_STATE
        if cmd == b"q" or cmd == b"Q":
            return self._query(data)
        if cmd == b"v":
            return self._v(data)
        if cmd == b"H":
            return self._select(rest)
        if cmd == b"T":
            return b"OK" if _thread_id(rest) in self.target.threads() else E_THREAD
        if cmd == b"g":
            tid = self._thread(self.g_thread)
            return b"".join(self.target.read_register(tid, n)
                            for n in range(len(registers.REGISTERS))).hex().encode()
        if cmd == b"G":
            return self._write_all_registers(_hex_bytes(rest))
        if cmd == b"p":
            number = _hex_int(rest)
            if number >= len(registers.REGISTERS):
                return E_BAD
            return self.target.read_register(self._thread(self.g_thread), number).hex().encode()
        if cmd == b"P":
            number, _, value = rest.partition(b"=")
            number = _hex_int(number)
            if number >= len(registers.REGISTERS):
                return E_BAD
            self.target.write_register(self._thread(self.g_thread), number, _hex_bytes(value))
            return b"OK"
        if cmd == b"m":
            addr, length = self._addr_length(rest)
            return self.target.read_memory(self._thread(self.g_thread), addr,
                                           min(length, PACKET_SIZE // 2 - 16)).hex().encode()
        if cmd in (b"M", b"X"):
            head, sep, payload = rest.partition(b":")
            if not sep:
                return E_BAD
            addr, length = self._addr_length(head)
            payload = _hex_bytes(payload) if cmd == b"M" else unescape(payload)
            if len(payload) != length:
                return E_BAD
            if length:
                self.target.write_memory(self._thread(self.g_thread), addr, payload)
            return b"OK"
        if cmd in (b"Z", b"z"):
            return self._breakpoint(cmd == b"Z", rest)
        if cmd in (b"c", b"s", b"C", b"S"):
            return self._legacy_resume(cmd.lower(), rest)
        if cmd == b"D":
            self.target.detach()
            self.detached = True
            return b"OK"
        if cmd == b"k":
            self.target.kill()
            self.killed = True
            return None
        return b""

    def _addr_length(self, text: bytes) -> tuple[int, int]:
        addr, sep, length = text.partition(b",")
        if not sep:
            raise PacketError("expected ADDR,LENGTH")
        return _hex_int(addr), _hex_int(length)

    def _select(self, rest: bytes) -> bytes:
        which, tid = rest[:1], _thread_id(rest[1:])
        if tid not in (0, -1) and tid not in self.target.threads():
            return E_THREAD
        if which == b"g":
            self.g_thread = self._thread(tid)
        elif which == b"c":
            self.c_thread = tid
        else:
            return E_BAD
        return b"OK"

    def _write_all_registers(self, data: bytes) -> bytes:
        if len(data) != registers.G_SIZE:
            return E_BAD
        tid, off = self._thread(self.g_thread), 0
        for number, size in enumerate(registers.SIZES):
            self.target.write_register(tid, number, data[off:off + size])
            off += size
        return b"OK"

    def _breakpoint(self, insert: bool, rest: bytes) -> bytes:
        fields = rest.split(b";")[0].split(b",")
        if len(fields) != 3:
            return E_BAD
        type_, addr, kind = (_hex_int(f) for f in fields)
        if type_ > ACCESS_WATCH:
            return b""
        call = self.target.insert if insert else self.target.remove
        if not call(type_, self._thread(self.g_thread), addr, kind):
            return b""           # this kind of breakpoint is not supported
        return b"OK"

    # --- running ---------------------------------------------------------------------

    def _legacy_resume(self, cmd: bytes, rest: bytes) -> bytes | None:
        if cmd in (b"c", b"s") and rest:
            self._set_pc(_hex_int(rest))
        elif rest:                          # C sig[;addr], S sig[;addr]: the signal is dropped
            sig, _, addr = rest.partition(b";")
            _hex_int(sig)
            if addr:
                self._set_pc(_hex_int(addr))
        if cmd == b"s":
            tid = self._thread(self.c_thread)
            return self._resume({tid: "s"}, None)
        return self._resume({}, "c")

    def _set_pc(self, addr: int) -> None:
        tid = self._thread(self.c_thread)
        self.target.write_register(tid, registers.NUMBER["rip"], addr.to_bytes(8, "little"))

    def _resume(self, actions: dict[int, str], default: str | None) -> bytes | None:
        # A Ctrl-C then names the thread GDB resumed by name (with scheduler-locking the
        # only one running), else the Hc thread, else the one last reported: the thread
        # the user was on, as QEMU names its current CPU.
        threads = self.target.threads()
        self.interrupt_thread = next(iter(actions), None) or (
            self.c_thread if self.c_thread in threads else self.last_stop.tid)
        stop = self.target.resume(actions, default)
        if stop is not None:
            return self.stopped(stop)
        self.running = True
        return None

    def _v(self, data: bytes) -> bytes | None:
        if data == b"vCont?":
            return b"vCont;c;C;s;S"
        if data.startswith(b"vCont;"):
            return self._vcont(data[6:])
        if data.startswith(b"vKill"):
            self.target.kill()
            self.killed = True
            return b"OK"
        return b""

    def _vcont(self, text: bytes) -> bytes | None:
        actions: dict[int, str] = {}
        default = None
        threads = self.target.threads()
        for item in text.split(b";"):
            action, _, tid = item.partition(b":")
            if action[:1] in (b"C", b"S"):
                _hex_int(action[1:])
                action = action[:1].lower()
            if action not in (b"c", b"s"):
                return E_BAD
            how = action.decode()
            if not tid or _thread_id(tid) in (0, -1):
                if default is None:
                    default = how
                continue
            n = _thread_id(tid)
            if n not in threads:
                return E_THREAD
            actions.setdefault(n, how)    # the leftmost action that applies wins
        return self._resume(actions, default)

    # --- queries -----------------------------------------------------------------------

    def _query(self, data: bytes) -> bytes:
        name, _, args = data.partition(b":")
        if name == b"qSupported":
            return FEATURES
        if data == b"QStartNoAckMode":
            self.ack = False
            return b"OK"
        if data == b"qAttached" or name == b"qAttached":
            return b"1"
        if data == b"qC":
            return b"QC%x" % self._thread(self.g_thread)
        if data == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % t for t in self.target.threads())
        if data == b"qsThreadInfo":
            return b"l"
        if data.startswith(b"qThreadExtraInfo,"):
            tid = self._thread(_thread_id(data[len(b"qThreadExtraInfo,"):]))
            return self.target.thread_name(tid).encode().hex().encode()
        if data.startswith(b"qRcmd,"):
            command = _hex_bytes(data[6:]).decode("utf-8", errors="replace")
            output = self.target.monitor(self._thread(self.g_thread), command)
            return output.encode().hex().encode() if output else b"OK"
        if name == b"qXfer":
            return self._xfer(args)
        return b""

    def _xfer(self, args: bytes) -> bytes:
        parts = args.split(b":")
        if len(parts) != 4 or parts[1] != b"read":
            return b""
        obj, annex, window = parts[0], parts[2], parts[3]
        offset, length = self._addr_length(window)
        if obj == b"features" and annex == b"target.xml":
            doc = registers.target_xml().encode()
        elif obj == b"threads" and annex == b"":
            doc = self._threads_xml()
        elif obj == b"features":
            return E_BAD
        else:
            return b""
        chunk = doc[offset:offset + min(length, PACKET_SIZE // 2)]
        more = offset + len(chunk) < len(doc)
        return (b"m" if more else b"l") + escape(chunk)

    def _threads_xml(self) -> bytes:
        lines = ['<?xml version="1.0"?>', "<threads>"]
        for tid in self.target.threads():
            lines.append(f'<thread id="{tid:x}" core="{tid - 1}" name="{self.target.thread_name(tid)}"/>')
        lines.append("</threads>")
        return "\n".join(lines).encode()
