"""Ethernet frames for tests that talk to a NIC backend or a guest: ARP, IPv4, ICMP, UDP,
TCP and DHCP builders (checksums included: libslirp verifies them) and a parser."""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

BROADCAST = b"\xff" * 6
ETH_ARP, ETH_IP = 0x0806, 0x0800
IP_ICMP, IP_TCP, IP_UDP = 1, 6, 17
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
DHCP_DISCOVER, DHCP_OFFER, DHCP_REQUEST, DHCP_ACK = 1, 2, 3, 5


def mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def checksum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 1) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, length)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    hdr = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    c = checksum(_pseudo(src, dst, IP_UDP, 8 + len(payload)) + hdr + payload) or 0xFFFF
    return ipv4(src, dst, IP_UDP, hdr[:6] + struct.pack("!H", c) + payload)


def tcp(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
        payload: bytes = b"", window: int = 65535) -> bytes:
    opts = struct.pack("!BBH", 2, 4, 1460) if flags & TCP_SYN else b""
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (20 + len(opts)) // 4 << 4, flags,
                      window, 0, 0) + opts
    c = checksum(_pseudo(src, dst, IP_TCP, len(hdr) + len(payload)) + hdr + payload)
    return ipv4(src, dst, IP_TCP, hdr[:16] + struct.pack("!H", c) + hdr[18:] + payload)


def icmp_echo(src: str, dst: str, ident: int, seq: int, data: bytes = b"akvm") -> bytes:
    msg = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
    return ipv4(src, dst, IP_ICMP, msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:])


def arp_request(src_mac: bytes, src_ip: str, target_ip: str) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_IP, 6, 4, 1, src_mac, socket.inet_aton(src_ip),
                       bytes(6), socket.inet_aton(target_ip))


def dhcp(chaddr: bytes, msgtype: int, requested: str | None = None, xid: int = 0x414B564D) -> bytes:
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4),
                        bytes(4), bytes(4), bytes(4), chaddr + bytes(10), b"", b"")
    opts = b"\x63\x82\x53\x63" + bytes([53, 1, msgtype])
    if requested:
        opts += bytes([50, 4]) + socket.inet_aton(requested)
    opts += bytes([55, 3, 1, 3, 6, 255])
    return udp("0.0.0.0", "255.255.255.255", 68, 67, bootp + opts)


@dataclass
class Frame:
    """The fields of a received frame that tests look at."""
    dst: bytes
    src: bytes
    ethertype: int
    proto: int | None = None
    src_ip: str = ""
    dst_ip: str = ""
    sport: int = 0
    dport: int = 0
    seq: int = 0
    ack: int = 0
    flags: int = 0
    icmp_type: int | None = None
    arp_op: int = 0
    arp_sender: tuple[bytes, str] | None = None
    payload: bytes = b""
    dhcp: dict | None = None         # DHCP options by code, plus 'yiaddr'


def parse(frame: bytes) -> Frame:
    f = Frame(frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0])
    body = frame[14:]
    if f.ethertype == ETH_ARP:
        f.arp_op = struct.unpack("!H", body[6:8])[0]
        f.arp_sender = (body[8:14], socket.inet_ntoa(body[14:18]))
        return f
    if f.ethertype != ETH_IP:
        return f
    ihl, total = (body[0] & 15) * 4, struct.unpack("!H", body[2:4])[0]
    f.proto, f.src_ip, f.dst_ip = body[9], socket.inet_ntoa(body[12:16]), socket.inet_ntoa(body[16:20])
    l4 = body[ihl:total]
    if f.proto == IP_ICMP:
        f.icmp_type, f.payload = l4[0], l4[8:]
    elif f.proto == IP_UDP:
        f.sport, f.dport = struct.unpack("!HH", l4[:4])
        f.payload = l4[8:]
        if f.sport == 67 and len(f.payload) > 240:
            f.dhcp = {"yiaddr": socket.inet_ntoa(f.payload[16:20])}
            opts, i = f.payload[240:], 0
            while i < len(opts) and opts[i] != 255:
                if opts[i] == 0:
                    i += 1
                    continue
                f.dhcp[opts[i]] = opts[i + 2:i + 2 + opts[i + 1]]
                i += 2 + opts[i + 1]
    elif f.proto == IP_TCP:
        f.sport, f.dport, f.seq, f.ack, off, f.flags = struct.unpack("!HHIIBB", l4[:14])
        f.payload = l4[(off >> 4) * 4:]
    return f
