"""virtio-mmio version 2, driven through an MMIO bus like a guest driver drives it."""
import pytest

from akvm.devices.virtio.blk import VirtioBlk
from akvm.devices.virtio.device import (
    VIRTIO_STATUS_ACKNOWLEDGE, VIRTIO_STATUS_DEVICE_NEEDS_RESET, VIRTIO_STATUS_DRIVER,
    VIRTIO_STATUS_DRIVER_OK, VIRTIO_STATUS_FEATURES_OK,
)
from akvm.base.dma import DirectDma
from akvm.devices.virtio.image import RawImage
from akvm.devices.virtio.mmio import (
    CONFIG, CONFIG_GENERATION, DEVICE_FEATURES, DEVICE_FEATURES_SEL, DEVICE_ID, DRIVER_FEATURES,
    DRIVER_FEATURES_SEL, INTERRUPT_ACK, INTERRUPT_STATUS, MAGIC_VALUE, QUEUE_DESC_HIGH,
    QUEUE_DESC_LOW, QUEUE_DEVICE_HIGH, QUEUE_DEVICE_LOW, QUEUE_DRIVER_HIGH, QUEUE_DRIVER_LOW,
    QUEUE_NOTIFY, QUEUE_NUM, QUEUE_NUM_MAX, QUEUE_READY, QUEUE_SEL, SHM_LEN_LOW, STATUS, VENDOR_ID,
    VERSION, VIRTIO_MMIO_SIZE, VirtioMmio, cmdline_string,
)
from akvm.devices.virtio.queue import VIRTQ_DESC_F_NEXT
from akvm.devices.virtio.rng import VirtioRng
from tests.unit.virtio_driver import DATA, RINGS, QueueDriver, new_memory
from akvm.base.bus import Bus
from akvm.base.irq import IrqLine

BASE = 0xF000_0000


class Edges(IrqLine):
    def __init__(self):
        super().__init__(5)
        self.levels = []

    def _deliver(self, level):
        self.levels.append(level)


class Board:
    def __init__(self, device, ioeventfd=None):
        self.bus = Bus("mmio")
        self.mem = new_memory()
        self.irq = Edges()
        self.device = device
        device.set_dma(DirectDma(self.mem))
        self.transport = VirtioMmio(device, self.irq, ioeventfd=ioeventfd)
        self.bus.register(BASE, VIRTIO_MMIO_SIZE, self.transport)
        self.transport.placed(BASE)

    def r(self, reg, size=4):
        return self.bus.read(BASE + reg, size)

    def w(self, reg, value, size=4):
        self.bus.write(BASE + reg, size, value)

    def bring_up(self, queue_size=None):
        self.w(STATUS, 0)
        self.w(STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER)
        for sel in (0, 1):
            self.w(DEVICE_FEATURES_SEL, sel)
            offered = self.r(DEVICE_FEATURES)
            self.w(DRIVER_FEATURES_SEL, sel)
            self.w(DRIVER_FEATURES, offered)
        ok = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK
        self.w(STATUS, ok)
        assert self.r(STATUS) & VIRTIO_STATUS_FEATURES_OK
        self.queues = []
        for i in range(len(self.device.queues)):
            self.w(QUEUE_SEL, i)
            assert self.r(QUEUE_READY) == 0
            size = queue_size or self.r(QUEUE_NUM_MAX)
            self.w(QUEUE_NUM, size)
            q = QueueDriver(self.mem, size, RINGS + i * 0x10000)
            for low, high, value in ((QUEUE_DESC_LOW, QUEUE_DESC_HIGH, q.desc),
                                     (QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, q.avail),
                                     (QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, q.used)):
                self.w(low, value & 0xFFFF_FFFF)
                self.w(high, value >> 32)
            self.w(QUEUE_READY, 1)
            self.queues.append(q)
        self.w(STATUS, ok | VIRTIO_STATUS_DRIVER_OK)


@pytest.fixture
def board():
    b = Board(VirtioRng())
    yield b
    b.device.close()


def test_identity_registers(board):
    assert board.r(MAGIC_VALUE) == 0x74726976
    assert board.r(VERSION) == 2
    assert board.r(DEVICE_ID) == 4
    assert board.r(VENDOR_ID) == 0x4D564B41
    assert board.r(SHM_LEN_LOW) == 0xFFFF_FFFF
    assert board.r(MAGIC_VALUE, 2) == 0                  # registers are 32-bit only


def test_cmdline_string():
    assert cmdline_string(0xF000_0000, 5) == "virtio_mmio.device=0x200@0xf0000000:5"


def test_rng_over_mmio_and_the_interrupt(board):
    board.bring_up(queue_size=16)
    q = board.queues[0]
    q.add([(DATA, 64, True)])
    board.w(QUEUE_NOTIFY, 0)
    assert q.take_used() == [(0, 64)]
    assert board.r(INTERRUPT_STATUS) == 1
    assert board.irq.level
    board.w(INTERRUPT_ACK, 1)
    assert not board.irq.level and board.r(INTERRUPT_STATUS) == 0


def test_every_interrupt_is_a_new_edge(board):
    board.bring_up()
    q = board.queues[0]
    for i in range(2):                                     # no ack in between
        q.set_used_event(i)                                # VIRTIO_F_EVENT_IDX: "after i"
        q.add([(DATA, 8, True)])
        board.w(QUEUE_NOTIFY, 0)
    assert board.irq.levels == [True, False, True]


def test_config_space_and_generation(tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(bytes(8 * 512))
    b = Board(VirtioBlk(RawImage(str(path))))
    assert b.r(CONFIG) == 8                                 # capacity, low half
    assert b.r(CONFIG + 4) == 0
    assert b.r(CONFIG + 0x14, 4) == 512
    assert b.r(CONFIG + 0x14, 2) == 512                     # any width in the config space
    gen = b.r(CONFIG_GENERATION)
    b.device.config_changed()
    assert b.r(CONFIG_GENERATION) == gen + 1
    b.device.close()


def test_needs_reset_then_reset(board):
    board.bring_up()
    q = board.queues[0]
    q.write_desc(0, DATA, 4, VIRTQ_DESC_F_NEXT, 0)
    q.publish(0)
    board.w(QUEUE_NOTIFY, 0)
    assert board.r(STATUS) & VIRTIO_STATUS_DEVICE_NEEDS_RESET
    assert board.r(INTERRUPT_STATUS) == 2                   # configuration change
    board.w(STATUS, 0)
    assert board.r(STATUS) == 0 and board.r(INTERRUPT_STATUS) == 0 and not board.irq.level
    board.bring_up()
    board.queues[0].add([(DATA, 8, True)])
    board.w(QUEUE_NOTIFY, 0)
    assert board.queues[0].take_used() == [(0, 8)]


def test_queue_registers_are_fixed_while_ready(board):
    board.bring_up()
    board.w(QUEUE_SEL, 0)
    desc = board.device.queues[0].desc
    board.w(QUEUE_DESC_LOW, 0x4000)
    board.w(QUEUE_NUM, 2)
    assert board.device.queues[0].desc == desc and board.device.queues[0].size == 64


def test_notify_for_a_missing_queue_is_ignored(board):
    board.bring_up()
    board.w(QUEUE_NOTIFY, 7)
    board.w(QUEUE_SEL, 7)
    assert board.r(QUEUE_NUM_MAX) == 0


def test_ioeventfd_per_queue_with_datamatch():
    calls = []
    b = Board(VirtioRng(), ioeventfd=lambda fd, addr, length, datamatch=None, deassign=False:
              calls.append((fd, addr, length, datamatch)))
    assert calls == [(b.device.kick_fds[0], BASE + QUEUE_NOTIFY, 4, 0)]
    b.device.close()
