"""GDB remote serial protocol framing: `$data#xx` packets, acks, binary escapes, Ctrl-C.

PacketReader takes bytes as they come off the socket and yields what they
mean; nothing a peer sends can make it raise or hold more than one
packet's worth of memory: a packet longer than PACKET_SIZE is dropped
whole and reported as TooLong.
"""
from __future__ import annotations

from dataclasses import dataclass

PACKET_SIZE = 0x4000          # the largest packet we take (advertised in qSupported)
INTERRUPT = 0x03              # Ctrl-C, sent outside any packet
ESCAPE = 0x7D                 # `}`: the next byte is XORed with 0x20
_HEX = b"0123456789abcdefABCDEF"


class PacketError(ValueError):
    """A packet whose contents do not parse."""


@dataclass(frozen=True)
class Packet:
    data: bytes


@dataclass(frozen=True)
class BadChecksum:
    pass


@dataclass(frozen=True)
class TooLong:
    pass


@dataclass(frozen=True)
class Interrupt:
    pass


@dataclass(frozen=True)
class Nak:
    """`-`: the peer asks for the last packet again."""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def frame(data: bytes) -> bytes:
    return b"$" + data + b"#" + b"%02x" % checksum(data)


def escape(data: bytes) -> bytes:
    """Binary data for a packet: `#`, `$`, `}` and `*` escaped."""
    out = bytearray()
    for b in data:
        if b in b"#$}*":
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == ESCAPE:
            nxt = next(it, None)
            if nxt is None:
                raise PacketError("escape at the end of the data")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


class PacketReader:
    """Turns a byte stream into Packet, BadChecksum, TooLong, Interrupt and Nak events."""

    def __init__(self, max_size: int = PACKET_SIZE):
        self.max_size = max_size
        self._state = "idle"       # idle, data, sum
        self._data = bytearray()
        self._sum = bytearray()
        self._too_long = False

    def feed(self, chunk: bytes) -> list:
        events = []
        for b in chunk:
            if self._state == "idle":
                if b == ord("$"):
                    self._state, self._too_long = "data", False
                    self._data.clear()
                elif b == INTERRUPT:
                    events.append(Interrupt())
                elif b == ord("-"):
                    events.append(Nak())
                # `+` and noise between packets are ignored
            elif self._state == "data":
                if b == ord("#"):
                    self._state = "sum"
                    self._sum.clear()
                elif len(self._data) >= self.max_size:
                    self._too_long = True
                    self._data.clear()
                elif not self._too_long:
                    self._data.append(b)
            else:
                self._sum.append(b)
                if len(self._sum) == 2:
                    self._state = "idle"
                    events.append(self._finish())
        return events

    def _finish(self):
        if self._too_long:
            return TooLong()
        good = all(c in _HEX for c in self._sum) and int(self._sum, 16) == checksum(self._data)
        return Packet(bytes(self._data)) if good else BadChecksum()
