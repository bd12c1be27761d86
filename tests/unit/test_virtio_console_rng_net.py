"""virtio-console, virtio-rng and virtio-net device models on bytearray memory."""
import os
import socket
import struct

import pytest

from akvm.devices.chardev import FileChardev
from akvm.devices.chardev_unix import UnixSocketChardev
from akvm.devices.virtio.console import RECEIVEQ, TRANSMITQ, VirtioConsole
from akvm.devices.virtio.net import HDR, VirtioNet, parse_mac
from akvm.devices.virtio.netback import LoopbackBackend, NetBackendError, SocketBackend, TapBackend
from akvm.devices.virtio.rng import MAX_REQUEST, VirtioRng
from tests.unit.virtio_driver import DATA, bring_up, new_memory, wait_for


# --- rng -------------------------------------------------------------------------------------

def test_rng_fills_buffers_with_random_bytes():
    mem = new_memory()
    dev = VirtioRng()
    (q,) = bring_up(dev, mem)
    q.add([(DATA, 256, True)])
    q.add([(DATA + 0x1000, 100, True), (DATA + 0x2000, 100, True)])
    dev.kick(0)
    assert q.take_used() == [(0, 256), (1, 200)]
    a, b = mem.read(DATA, 256), mem.read(DATA + 0x1000, 100)
    assert len(set(a)) > 32 and a[:100] != b


def test_rng_caps_a_request():
    mem = new_memory()
    dev = VirtioRng()
    (q,) = bring_up(dev, mem)
    q.add([(DATA, 2 * MAX_REQUEST, True)])
    dev.kick(0)
    assert q.take_used() == [(0, MAX_REQUEST)]


def test_rng_request_without_writable_buffers():
    mem = new_memory()
    dev = VirtioRng()
    (q,) = bring_up(dev, mem)
    q.add([(DATA, 16, False)])
    dev.kick(0)
    assert q.take_used() == [(0, 0)]


# --- console ---------------------------------------------------------------------------------

def test_console_output_goes_to_the_chardev(tmp_path):
    out = tmp_path / "console.txt"
    mem = new_memory()
    dev = VirtioConsole(FileChardev(str(out)))
    rx, tx = bring_up(dev, mem)
    mem.write(DATA, b"hello, ")
    mem.write(DATA + 0x100, b"console\n")
    tx.add([(DATA, 7, False), (DATA + 0x100, 8, False)])
    dev.kick(TRANSMITQ)
    assert tx.take_used() == [(0, 0)]
    dev.write_config(8, 4, ord("!"))                        # emerg_wr
    dev.close()
    assert out.read_text() == "hello, console\n!"


def test_console_input_waits_for_receive_buffers(tmp_path):
    mem = new_memory()
    dev = VirtioConsole(FileChardev(str(tmp_path / "o")))
    rx, tx = bring_up(dev, mem)
    dev.receive(b"typed before any buffer")
    assert rx.take_used() == []
    rx.add([(DATA, 5, True)])
    rx.add([(DATA + 0x100, 64, True)])
    dev.kick(RECEIVEQ)
    assert rx.take_used() == [(0, 5), (1, 18)]
    assert mem.read(DATA, 5) + mem.read(DATA + 0x100, 18) == b"typed before any buffer"
    dev.close()


def test_console_input_is_bounded(tmp_path):
    dev = VirtioConsole(FileChardev(str(tmp_path / "o")))
    dev.receive(b"x" * 100_000)
    assert len(dev._input) == 64 * 1024 and dev.rx_dropped == 100_000 - 64 * 1024
    dev.close()


def test_console_echo_through_a_unix_socket_on_the_device_thread(tmp_path):
    """The chardev thread hands input to the device thread; output goes back out."""
    path = str(tmp_path / "con.sock")
    mem = new_memory()
    dev = VirtioConsole(UnixSocketChardev(path))
    rx, tx = bring_up(dev, mem)
    rx.add([(DATA, 64, True)])
    dev.start()
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        assert dev.chardev.wait_for_client(5)
        client.sendall(b"ping")
        assert wait_for(lambda: rx.used_idx == 1)
        (head, n), = rx.take_used()
        mem.write(DATA + 0x1000, mem.read(DATA, n).upper())
        tx.add([(DATA + 0x1000, n, False)])
        os.eventfd_write(dev.kick_fds[TRANSMITQ], 1)
        client.settimeout(5)
        assert client.recv(16) == b"PING"
        client.close()
    finally:
        dev.close()


# --- net -------------------------------------------------------------------------------------

MAC = bytes.fromhex("02414b564d01")


def frame(n, fill=b"\xab"):
    return b"\xff" * 6 + MAC + b"\x08\x00" + fill * (n - 14)


def send_frames(mem, tx, dev, frames, at=DATA):
    for i, f in enumerate(frames):
        addr = at + i * 0x1000
        mem.write(addr, bytes(HDR.size) + f)
        tx.add([(addr, HDR.size + len(f), False)])
    dev.kick(1)


def test_mac_parsing():
    assert parse_mac("02:41:4b:56:4d:01") == MAC
    for bad in ("02:41:4b:56:4d", "zz:41:4b:56:4d:01", "01:00:00:00:00:00"):
        with pytest.raises(ValueError):
            parse_mac(bad)


def test_net_config_space():
    dev = VirtioNet(LoopbackBackend(), MAC)
    assert bytes(dev.config[:6]) == MAC
    assert dev.read_config(6, 2) == 1                       # VIRTIO_NET_S_LINK_UP
    dev.close()


def test_net_loopback_round_trip():
    mem = new_memory()
    dev = VirtioNet(LoopbackBackend(), MAC)
    rx, tx = bring_up(dev, mem)
    for i in range(3):
        rx.add([(DATA + 0x80000 + i * 0x1000, 2048, True)])
    frames = [frame(60), frame(1514, b"\x01"), frame(100, b"\x02")]
    send_frames(mem, tx, dev, frames)
    assert [u[1] for u in tx.take_used()] == [0, 0, 0]
    dev.receive()                                           # what the device thread does
    used = rx.take_used()
    assert [n for _, n in used] == [HDR.size + len(f) for f in frames]
    for (head, n), f in zip(used, frames):
        data = mem.read(DATA + 0x80000 + head * 0x1000, n)
        assert struct.unpack("<BBHHHHH", data[:HDR.size])[-1] == 1    # num_buffers
        assert data[HDR.size:] == f
    dev.close()


def test_net_frames_wait_in_the_backend_without_buffers():
    mem = new_memory()
    dev = VirtioNet(LoopbackBackend(), MAC)
    rx, tx = bring_up(dev, mem)
    send_frames(mem, tx, dev, [frame(60), frame(61)])
    dev.receive()
    assert rx.take_used() == [] and dev._held is not None
    rx.add([(DATA + 0x80000, 2048, True)])
    rx.add([(DATA + 0x81000, 2048, True)])
    dev.kick(0)
    assert [n for _, n in rx.take_used()] == [HDR.size + 60, HDR.size + 61]
    dev.close()


def test_net_frame_too_big_for_the_buffer_is_dropped():
    mem = new_memory()
    dev = VirtioNet(LoopbackBackend(), MAC)
    rx, tx = bring_up(dev, mem)
    rx.add([(DATA + 0x80000, 100, True)])
    send_frames(mem, tx, dev, [frame(1000), frame(60)])
    dev.receive()
    assert rx.take_used() == [(0, HDR.size + 60)]           # same buffer, next frame
    assert dev.rx_dropped == 1
    dev.close()


def test_net_tx_without_a_frame_is_dropped():
    mem = new_memory()
    dev = VirtioNet(LoopbackBackend(), MAC)
    rx, tx = bring_up(dev, mem)
    tx.add([(DATA, 4, False)])
    dev.kick(1)
    assert tx.take_used() == [(0, 0)] and dev.errors == 1
    dev.close()


def test_net_socket_pair_between_two_devices(tmp_path):
    """Two akvm instances on one socket path: the first listens, the second connects."""
    path = str(tmp_path / "net.sock")
    mem_a, mem_b = new_memory(), new_memory()
    a = VirtioNet(SocketBackend(path), MAC)
    b = VirtioNet(SocketBackend(path), bytes.fromhex("02414b564d02"))
    assert a.backend.listener is not None and b.backend.listener is None
    rx_a, tx_a = bring_up(a, mem_a)
    rx_b, tx_b = bring_up(b, mem_b)
    a.start()
    b.start()
    try:
        assert wait_for(lambda: a.backend.rx_fd >= 0)       # the listener accepted b
        rx_b.add([(DATA + 0x80000, 2048, True)])
        os.eventfd_write(b.kick_fds[0], 1)
        f = frame(200, b"\x05")
        mem_a.write(DATA, bytes(HDR.size) + f)
        tx_a.add([(DATA, HDR.size + len(f), False)])
        os.eventfd_write(a.kick_fds[1], 1)
        assert wait_for(lambda: rx_b.used_idx == 1)
        (_, n), = rx_b.take_used()
        assert mem_b.read(DATA + 0x80000 + HDR.size, n - HDR.size) == f
        # and back
        rx_a.add([(DATA + 0x80000, 2048, True)])
        os.eventfd_write(a.kick_fds[0], 1)
        mem_b.write(DATA, bytes(HDR.size) + f[::-1])
        tx_b.add([(DATA, HDR.size + len(f), False)])
        os.eventfd_write(b.kick_fds[1], 1)
        assert wait_for(lambda: rx_a.used_idx == 1)
    finally:
        b.close()
        a.close()
    assert not os.path.exists(path)


def test_net_socket_backend_replaces_a_stale_socket_and_refuses_other_files(tmp_path):
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(path))
    s.close()                                               # bound, nobody listening
    backend = SocketBackend(str(path))
    assert backend.listener is not None
    backend.close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NetBackendError, match="not a socket"):
        SocketBackend(str(tmp_path / "file"))


def test_tap_backend_errors_are_clear():
    try:
        backend = TapBackend("akvmtest%d")
    except NetBackendError as e:
        assert "tap" in str(e) or "/dev/net/tun" in str(e)
    else:
        backend.close()                                     # this host allows TAP


def _tap_with_packet_socket(name):
    """A TAP backend with its link up and a raw packet socket on it, or a skip reason."""
    import fcntl
    try:
        backend = TapBackend(name)
    except NetBackendError as e:
        return None, None, str(e)
    try:
        ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
        ifr = fcntl.ioctl(ctl, SIOCGIFFLAGS, struct.pack("16sH22x", name.encode(), 0))
        flags = struct.unpack_from("16sH", ifr)[1] | IFF_UP
        fcntl.ioctl(ctl, SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags))
        ctl.close()
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
        raw.bind((name, 0))
    except OSError as e:
        backend.close()
        return None, None, f"cannot bring {name} up or open a packet socket: {e}"
    return backend, raw, None


def test_net_over_a_real_tap_device():
    backend, raw, why = _tap_with_packet_socket("akvmtest0")
    if backend is None:
        pytest.skip(why)
    mem = new_memory()
    dev = VirtioNet(backend, MAC)
    rx, tx = bring_up(dev, mem)
    dev.start()
    try:
        ethertype = b"\x88\xb5"                          # local experimental
        out = b"\xff" * 6 + MAC + ethertype + b"from the guest".ljust(46, b".")
        mem.write(DATA, bytes(HDR.size) + out)
        tx.add([(DATA, HDR.size + len(out), False)])
        os.eventfd_write(dev.kick_fds[1], 1)
        raw.settimeout(5)
        while raw.recv(2048) != out:                    # the host may send its own frames
            pass
        buffers = [DATA + 0x80000 + 0x1000 * i for i in range(8)]
        for b in buffers:
            rx.add([(b, 2048, True)])
        os.eventfd_write(dev.kick_fds[0], 1)
        inbound = MAC + b"\x02" * 6 + ethertype + b"from the host".ljust(46, b".")
        raw.send(inbound)
        assert wait_for(lambda: any(mem.read(b + HDR.size, len(inbound)) == inbound
                                    for b in buffers))
    finally:
        raw.close()
        dev.close()
