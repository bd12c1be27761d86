"""VirtioDevice: feature negotiation, status, reset, configuration generation, DEVICE_NEEDS_RESET,
the device thread, and DMA through the platform (IOMMU) object when negotiated."""
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import examples, open_fds

from akvm.devices.virtio.device import (
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
    VIRTIO_STATUS_ACKNOWLEDGE, VIRTIO_STATUS_DEVICE_NEEDS_RESET, VIRTIO_STATUS_DRIVER,
    VIRTIO_STATUS_DRIVER_OK, VIRTIO_STATUS_FEATURES_OK, Abandoned, VirtioDevice, bit,
)
from akvm.base.dma import DmaError, DirectDma
from akvm.devices.virtio.queue import VIRTQ_DESC_F_NEXT
from tests.unit.virtio_driver import DATA, MEM_SIZE, Recorder, bring_up, new_memory, wait_for
from akvm.base.memory import GuestMemory

ACK_DRIVER = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER


class Echo(VirtioDevice):
    """A device for these tests: copies what it reads into what it writes, reversed."""
    device_id = 0x7F
    kind = "echo"

    def __init__(self, **kw):
        super().__init__([8, 8], features=bit(3), config_size=8, **kw)
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def handle(self, req):
        data = req.read(0, req.readable_len)
        if self.gate is not None:            # hold the request "in the backend"
            self.entered.set()
            self.gate.wait(5)
        return req.write(0, data[::-1])


def echo_up(**kw):
    mem = new_memory()
    dev = Echo()
    drivers = bring_up(dev, mem, **kw)
    return mem, dev, drivers


def test_offered_features():
    dev = Echo()
    f = dev.device_features
    assert f & bit(VIRTIO_F_VERSION_1) and f & bit(VIRTIO_F_INDIRECT_DESC)
    assert f & bit(VIRTIO_F_EVENT_IDX) and f & bit(3)
    assert not f & bit(VIRTIO_F_ACCESS_PLATFORM)
    assert dev.device_features_word(1) == 1          # VERSION_1 is bit 32
    assert dev.device_features_word(2) == 0


def test_features_ok_refused_without_version_1():
    dev = Echo()
    dev.set_dma(DirectDma(new_memory()))
    dev.write_status(ACK_DRIVER)
    dev.set_driver_features_word(0, bit(3))
    dev.write_status(ACK_DRIVER | VIRTIO_STATUS_FEATURES_OK)
    assert not dev.status & VIRTIO_STATUS_FEATURES_OK


def test_features_ok_refused_for_features_not_offered():
    dev = Echo()
    dev.write_status(ACK_DRIVER)
    dev.set_driver_features_word(0, bit(4))
    dev.set_driver_features_word(1, 1)
    dev.write_status(ACK_DRIVER | VIRTIO_STATUS_FEATURES_OK)
    assert not dev.status & VIRTIO_STATUS_FEATURES_OK


def test_driver_features_freeze_at_features_ok():
    dev = Echo()
    dev.set_dma(DirectDma(new_memory()))
    dev.write_status(ACK_DRIVER)
    dev.set_driver_features_word(1, 1)
    dev.write_status(ACK_DRIVER | VIRTIO_STATUS_FEATURES_OK)
    dev.set_driver_features_word(0, bit(3))
    assert dev.driver_features == bit(VIRTIO_F_VERSION_1)


def test_driver_ok_without_features_ok_does_not_start():
    dev = Echo()
    dev.write_status(ACK_DRIVER | VIRTIO_STATUS_DRIVER_OK)
    assert not dev.status & VIRTIO_STATUS_DRIVER_OK


def test_requests_are_served_and_notified():
    mem, dev, (q0, _) = echo_up()
    mem.write(DATA, b"abcdef")
    head = q0.add([(DATA, 6, False), (DATA + 0x100, 6, True)])
    dev.kick(0)
    assert q0.take_used() == [(head, 6)]
    assert mem.read(DATA + 0x100, 6) == b"fedcba"
    assert dev.transport.queue == [0]


def test_requests_before_driver_ok_wait_for_it():
    mem = new_memory()
    dev = Echo()
    dev.transport = Recorder()
    dev.set_dma(DirectDma(mem))
    from tests.unit.virtio_driver import RINGS, QueueDriver
    q0 = QueueDriver(mem, 8, RINGS)
    q0.configure(dev.queues[0])
    dev.enable_queue(0)
    q0.add([(DATA, 1, False), (DATA + 0x100, 1, True)])
    dev.kick(0)
    assert q0.take_used() == []
    dev.write_status(ACK_DRIVER)
    dev.set_driver_features_word(1, 1)
    dev.write_status(ACK_DRIVER | VIRTIO_STATUS_FEATURES_OK)
    dev.write_status(ACK_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK)
    assert len(q0.take_used()) == 1


def test_reset_clears_everything():
    mem, dev, (q0, _) = echo_up()
    q0.add([(DATA, 1, False), (DATA + 0x100, 1, True)])
    dev.kick(0)
    dev.write_status(0)
    assert dev.status == 0 and dev.driver_features == 0
    for vq in dev.queues:
        assert not vq.ready and vq.desc == 0 and vq.last_avail == 0 and vq.used_idx == 0
    # and it comes back up
    mem, dev2, (q0, _) = echo_up()
    q0.add([(DATA, 1, False), (DATA + 0x100, 1, True)])
    dev2.kick(0)
    assert len(q0.take_used()) == 1


def test_config_generation_and_notification():
    mem, dev, _ = echo_up()
    gen = dev.config_generation
    dev.config_changed()
    assert dev.config_generation == gen + 1
    assert dev.transport.config == 1


def test_config_space_reads_and_out_of_range():
    dev = Echo()
    dev.config[:] = bytes(range(1, 9))
    assert dev.read_config(0, 4) == 0x04030201
    assert dev.read_config(6, 2) == 0x0807
    assert dev.read_config(6, 4) == 0                   # runs past the end
    assert dev.read_config(-1, 1) == 0


# --- hostile drivers ----------------------------------------------------------------------

def test_a_broken_ring_sets_needs_reset_once_and_notifies():
    mem, dev, (q0, q1) = echo_up()
    q0.write_desc(0, DATA, 4, VIRTQ_DESC_F_NEXT, 0)        # a loop
    q0.publish(0)
    dev.kick(0)
    assert dev.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET
    assert dev.transport.config == 1
    assert dev.errors == 1
    # the device stops: other queues too, and further kicks change nothing
    q1.add([(DATA, 1, False), (DATA + 0x100, 1, True)])
    dev.kick(1)
    dev.kick(0)
    assert q1.take_used() == [] and dev.transport.config == 1
    # the driver cannot clear the bit; a reset does
    dev.write_status(dev.status & ~VIRTIO_STATUS_DEVICE_NEEDS_RESET)
    assert dev.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET
    dev.write_status(0)
    assert dev.status == 0


def test_needs_reset_is_logged_once(caplog):
    mem, dev, (q0, _) = echo_up()
    for _ in range(3):
        q0.publish(200)                                   # head outside the table
        dev.kick(0)
        dev.write_status(0)
        bring_up(dev, mem)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "DEVICE_NEEDS_RESET" in warnings[0].getMessage()


def test_buffer_outside_ram_drops_the_request_and_keeps_going():
    mem, dev, (q0, _) = echo_up()
    bad = q0.add([(DATA, 4, False), (MEM_SIZE + 0x1000, 4, True)])
    good = q0.add([(DATA, 4, False), (DATA + 0x100, 4, True)])
    dev.kick(0)
    assert q0.take_used() == [(bad, 0), (good, 4)]
    assert not dev.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET


def test_queue_layout_that_cannot_work_needs_reset_at_driver_ok():
    mem = new_memory()
    dev = Echo()
    dev.transport = Recorder()
    dev.set_dma(DirectDma(mem))
    dev.write_status(ACK_DRIVER)
    dev.set_driver_features_word(1, 1)
    dev.write_status(ACK_DRIVER | VIRTIO_STATUS_FEATURES_OK)
    dev.queues[0].desc = 0x1008                            # not 16-byte aligned
    dev.enable_queue(0)
    dev.write_status(ACK_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK)
    assert dev.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET


def test_reset_in_the_middle_of_a_request_abandons_it():
    """The device thread is inside handle() (its backend I/O) when the driver resets:
    the reset does not wait for it, and the request never touches memory again."""
    mem, dev, (q0, _) = echo_up()
    dev.start()
    try:
        dev.gate = threading.Event()
        mem.write(DATA, b"data")
        q0.add([(DATA, 4, False), (DATA + 0x100, 4, True)])
        dev.kick(0)
        assert dev.entered.wait(5)
        t = time.monotonic()
        dev.write_status(0)                               # from a "vCPU"
        assert time.monotonic() - t < 1
        assert dev.status == 0
        dev.gate.set()
        time.sleep(0.2)
        assert mem.read(DATA + 0x100, 4) == b"\0" * 4      # nothing written after the reset
        assert q0.used_idx == 0
    finally:
        dev.close()


def test_request_object_refuses_access_after_reset():
    mem, dev, (q0, _) = echo_up()
    q0.add([(DATA, 4, False), (DATA + 0x100, 4, True)])
    req = dev.pop_request(dev.queues[0])
    dev.write_status(0)
    with pytest.raises(Abandoned):
        req.write(0, b"late")
    req.complete(4)                                       # silently dropped
    assert q0.used_idx == 0


# --- the device thread ------------------------------------------------------------------

def test_kicks_through_the_eventfd_are_served_on_the_device_thread():
    mem, dev, (q0, _) = echo_up()
    seen = []
    original = dev.handle
    dev.handle = lambda req: (seen.append(threading.current_thread().name), original(req))[1]
    dev.start()
    try:
        mem.write(DATA, b"xy")
        for _ in range(5):
            q0.add([(DATA, 2, False), (DATA + 0x100, 2, True)])
        import os
        os.eventfd_write(dev.kick_fds[0], 1)              # what KVM does for an ioeventfd
        assert wait_for(lambda: q0.used_idx == 5)
        assert set(seen) == {"echo"}
    finally:
        dev.close()


# --- DMA through the platform (the IOMMU's DmaSpace) --------------------------------------

class OffsetDma:
    """A translating DMA space: bus address b is guest-physical b + offset; nothing
    beyond `limit` is mapped (stands in for the IOMMU's TranslatedDma)."""

    def __init__(self, mem, offset, limit):
        self.direct = DirectDma(mem)
        self.offset, self.limit = offset, limit
        self.accesses = 0

    def _map(self, addr, n):
        if addr + n > self.limit:
            raise DmaError(f"bus address {addr:#x} not mapped", addr, False)
        self.accesses += 1
        return addr + self.offset

    def read(self, addr, n):
        return self.direct.read(self._map(addr, n), n)

    def write(self, addr, data):
        self.direct.write(self._map(addr, len(data)), data)


def test_access_platform_routes_every_access_through_the_platform_dma():
    mem = new_memory()
    offset = 0x100000
    platform = OffsetDma(mem, offset, MEM_SIZE - offset)
    # What the driver sees at bus addresses: the same RAM, `offset` bytes in.
    bus = GuestMemory()
    bus.add_slot(0, mem.slots[0].view[offset:])
    dev = Echo()
    dev.set_dma(DirectDma(mem), platform)
    assert dev.device_features & bit(VIRTIO_F_ACCESS_PLATFORM)
    q0, _ = bring_up(dev, bus)
    bus.write(0x80000, b"ping")
    q0.add([(0x80000, 4, False), (0x80100, 4, True)])
    dev.kick(0)
    assert mem.read(offset + 0x80100, 4) == b"gnip"
    assert q0.take_used() == [(0, 4)]
    # a buffer the platform does not map: the request is dropped
    q0.add([(0x80000, 4, False), (MEM_SIZE - offset - 2, 4, True)])
    dev.kick(0)
    assert q0.take_used() == [(2, 0)]


def test_without_access_platform_the_direct_dma_is_used():
    mem = new_memory()
    dev = Echo()
    platform = OffsetDma(mem, 0, 0)                      # maps nothing
    dev.set_dma(DirectDma(mem), platform)
    features = dev.device_features & ~bit(VIRTIO_F_ACCESS_PLATFORM)
    (q0, _) = bring_up(dev, mem, features=features)
    mem.write(DATA, b"ab")
    q0.add([(DATA, 2, False), (DATA + 0x100, 2, True)])
    dev.kick(0)
    assert mem.read(DATA + 0x100, 2) == b"ba"
    assert platform.accesses == 0


# --- hypothesis: any sequence of driver register writes ----------------------------------

@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["status", "features", "enable", "kick", "reset"]),
                          st.integers(0, 0xFFFF_FFFF)), max_size=30))
def test_any_register_sequence_keeps_the_device_consistent(ops):
    mem = new_memory()
    dev = Echo()
    dev.transport = Recorder()
    dev.set_dma(DirectDma(mem))
    for op, value in ops:
        if op == "status":
            dev.write_status(value)
        elif op == "features":
            dev.set_driver_features_word(value & 3, value)
        elif op == "enable":
            vq = dev.queues[value % 2]
            vq.desc, vq.driver, vq.device = value & ~0xF, value & ~1, value & ~3
            dev.enable_queue(value % 2)
        elif op == "kick":
            dev.kick(value % 4)
        else:
            dev.reset()
        if dev.status & VIRTIO_STATUS_DRIVER_OK:
            assert dev.status & VIRTIO_STATUS_FEATURES_OK
        if dev.status & VIRTIO_STATUS_FEATURES_OK:
            assert dev.driver_features & bit(VIRTIO_F_VERSION_1)
            assert not dev.driver_features & ~dev.device_features


def test_a_device_dropped_without_close_gives_its_eventfds_back():
    """Models built and dropped (hypothesis builds hundreds) must not run the process out
    of descriptors; close() closes them once."""
    before = open_fds()
    for _ in range(50):
        echo_up()
    assert open_fds() <= before
    dev = Echo()
    dev.close()
    dev.close()
    del dev
    assert open_fds() <= before
