"""virtio-net's C queues (devices/virtio/netq.c) against their Python twin (net.py).

Two devices get the same random driver activity: transmit chains (any framing of the
header and frame, header-only and empty chains, frames too long, buffers outside RAM,
broken chains), receive buffers (too small ones among them) and frames from the network,
with notifications suppressed or not and VIRTIO_F_EVENT_IDX on or off. One device's
queues are served in C, as the backend's thread does (frames that find no buffer wait,
what C gives back goes to Python), the other's in Python. Both must send the same frames
and leave the same guest memory (data, used rings, notification words), the same
counters and the same device status, and want interrupts alike.
"""

from hypothesis import HealthCheck, given, settings, strategies as st

from akvm.base.native import ffi, lib
from akvm.devices.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_STATUS_DEVICE_NEEDS_RESET, bit
from akvm.devices.virtio.net import HDR, RECEIVEQ, TRANSMITQ, VirtioNet
from akvm.devices.virtio.netq import NativeNetQueues
from tests.unit.virtio_driver import DATA, MEM_SIZE, bring_up, new_memory

MAC = bytes.fromhex("02414b564d01")
QSIZE = 16


class Wire:
    def __init__(self):
        self.sent, self.incoming, self.dropped = [], [], 0

    def start(self, worker, on_frames):
        pass

    def pause(self):
        pass

    def resume(self):
        pass

    def recv(self):
        return self.incoming.pop(0) if self.incoming else None

    def send(self, frame):
        self.sent.append(bytes(frame))

    def close(self):
        pass


class Side:
    def __init__(self, native: bool, event_idx: bool):
        self.mem = new_memory()
        self.wire = Wire()
        self.dev = VirtioNet(self.wire, MAC)
        features = self.dev.device_features & ~(0 if event_idx else bit(VIRTIO_F_EVENT_IDX))
        self.rx, self.tx = bring_up(self.dev, self.mem, features, sizes=[QSIZE, QSIZE])
        self.irqs = self.dev.transport.queue
        self.held = []
        self.native = None
        if native:
            rxq, txq = self.dev.queues
            self.native = NativeNetQueues(rxq, txq, self.mem, rxq.event_idx, rxq.indirect)
            self.out = ffi.callback("akvm_nic_out_fn", lambda ctx, f, n: self.wire.sent.append(
                bytes(ffi.buffer(f, n))))
        self.next_buf = DATA

    def buffer(self, size):
        at = self.next_buf
        self.next_buf += (size + 0xFFF) & ~0xFFF or 0x1000
        if self.next_buf > MEM_SIZE - 0x10000:
            self.next_buf = DATA
        return at

    def _code(self, code):
        if code & lib.AKVM_NIC_IRQ:                 # what the backend's thread does
            self._poll()
        code &= ~lib.AKVM_NIC_IRQ
        if code == lib.AKVM_NIC_PYTHON and self.native is not None:
            self._give_back()
        return code

    def _poll(self):
        given_back, rx_irq, tx_irq, counts = self.native.poll()
        self.dev.tx_frames += counts["tx_frames"]
        self.dev.rx_frames += counts["rx_frames"]
        self.dev.rx_dropped += counts["rx_dropped"]
        self.dev.errors += counts["errors"]
        self.irqs += [RECEIVEQ] * rx_irq + [TRANSMITQ] * tx_irq
        return given_back

    def _give_back(self):
        self._poll()
        self.native.store(*self.dev.queues)
        self.native = None
        self.wire.incoming = self.held + self.wire.incoming
        self.held = []
        self.dev._service_all()
        self.dev.receive()

    def kick(self, index):
        if self.native is None:
            self.dev.kick(index)
            return
        while self.held and self.native is not None:
            code = self._code(lib.akvm_vnetq_rx(self.native.handle, self.held[0], len(self.held[0])))
            if code == lib.AKVM_NIC_FULL:
                break
            if code == lib.AKVM_NIC_DONE:
                self.held.pop(0)
        while self.native is not None:          # as the backend's thread: again while asked
            code = lib.akvm_vnetq_tx(self.native.handle, self.out, ffi.NULL, 0)
            self._code(code & ~lib.AKVM_NIC_AGAIN)
            if not code & lib.AKVM_NIC_AGAIN:
                break

    def receive(self, frame):
        if self.native is None:
            self.wire.incoming.append(frame)
            self.dev.receive()
            return
        if self.held:
            self.held.append(frame)
            return
        code = self._code(lib.akvm_vnetq_rx(self.native.handle, frame, len(frame)))
        if code == lib.AKVM_NIC_FULL:
            self.held.append(frame)
        elif code == lib.AKVM_NIC_PYTHON:        # given back: Python takes this frame
            self.wire.incoming.append(frame)
            self.dev.receive()

    def snapshot(self):
        if self.native is not None:
            self._poll()
        d = self.dev
        return (self.mem.read(0, MEM_SIZE), self.wire.sent,
                (d.tx_frames, d.rx_frames, d.rx_dropped, d.errors,
                 bool(d.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET)), self.irqs)


frames = st.binary(min_size=0, max_size=1600) | st.builds(bytes, st.integers(1514, 70000))
OUTSIDE = MEM_SIZE + 0x1000
ops = st.lists(st.one_of(
    st.tuples(st.just("tx"), frames, st.lists(st.integers(1, 700), max_size=3),
              st.sampled_from([None] * 8 + ["outside", "writable"])),
    st.tuples(st.just("buf"), st.sampled_from([2048] * 4 + [HDR.size, 100, 60000]),
              st.sampled_from([None] * 9 + ["outside"])),
    st.tuples(st.just("rx"), st.binary(min_size=14, max_size=1514) |
              st.builds(bytes, st.integers(14, 3000))),
    st.tuples(st.just("notify"), st.sampled_from([RECEIVEQ, TRANSMITQ])),
    st.tuples(st.just("flags"), st.sampled_from([0, 1]), st.integers(0, 40)),
), max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.booleans())
def test_c_and_python_agree(program, event_idx):
    sides = [Side(native=False, event_idx=event_idx), Side(native=True, event_idx=event_idx)]
    for op in program:
        for side in sides:
            kind = op[0]
            if kind == "tx":
                data = bytes(HDR.size) + op[1]
                cuts = sorted({c for c in op[2] if 0 < c < len(data)})
                pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])] or [b""]
                bufs = []
                for piece in pieces:
                    at = side.buffer(len(piece))
                    side.mem.write(at, piece)
                    bufs.append((at, len(piece), False))
                if op[3] == "outside":
                    bufs[-1] = (OUTSIDE, bufs[-1][1] or 1, False)
                elif op[3] == "writable":
                    bufs.insert(0, (side.buffer(64), 64, True))       # writable before readable
                if len(bufs) <= QSIZE:
                    side.tx.add(bufs)
                side.kick(TRANSMITQ)
            elif kind == "buf":
                at = OUTSIDE if op[2] == "outside" else side.buffer(op[1])
                side.rx.add([(at, op[1], True)])
                side.kick(RECEIVEQ)
            elif kind == "rx":
                side.receive(op[1])
            elif kind == "notify":
                side.kick(op[1])
            else:
                driver = side.rx if op[1] else side.tx
                driver.set_avail_flags(op[1])
                driver.set_used_event(op[2])
        python, native = (s.snapshot() for s in sides)
        assert native[1] == python[1], op
        assert native[2] == python[2], op
        assert native[0] == python[0], op
        assert native[3] == python[3], op


def test_a_polling_caller_keeps_the_drivers_notifications_off():
    """While the backend's thread polls on (tx(polling=1)), an empty transmit queue keeps
    VRING_USED_F_NO_NOTIFY set, so the guest sends without a notify exit; the calls
    without polling that end the poll send what came meanwhile and turn them on."""
    from akvm.devices.virtio.spec import VIRTQ_USED_F_NO_NOTIFY
    side = Side(native=True, event_idx=False)
    frame = bytes(HDR.size) + bytes(range(60))

    def tx(polling):
        return lib.akvm_vnetq_tx(side.native.handle, side.out, ffi.NULL, polling)

    assert tx(1) & lib.AKVM_NIC_POLL and side.tx.used_flags & VIRTQ_USED_F_NO_NOTIFY
    at = side.buffer(len(frame))
    side.mem.write(at, frame)
    side.tx.add([(at, len(frame), False)])          # sent without a notify
    assert tx(1) & lib.AKVM_NIC_AGAIN and side.wire.sent == [frame[HDR.size:]]
    assert tx(1) & lib.AKVM_NIC_POLL and side.tx.used_flags & VIRTQ_USED_F_NO_NOTIFY
    side.tx.add([(at, len(frame), False)])
    assert tx(0) & lib.AKVM_NIC_AGAIN and len(side.wire.sent) == 2     # the poll ends
    assert side.tx.used_flags & VIRTQ_USED_F_NO_NOTIFY        # busy: asked again at once
    assert not tx(0) & (lib.AKVM_NIC_POLL | lib.AKVM_NIC_AGAIN)
    assert not side.tx.used_flags & VIRTQ_USED_F_NO_NOTIFY
