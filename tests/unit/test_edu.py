"""QEMU's edu device driven through its BAR on a real MMIO bus, as a guest driver would:
identity, liveness, factorial, interrupts (INTx and MSI), DMA both ways straight to RAM
and through the VT-d unit (translated, faulting, stale)."""
import pytest

from akvm.devices.edu import DMA_BUFFER, Edu
from akvm.devices.pci import PciRoot
from akvm.devices.pci.config import COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE
from akvm.base.dma import DirectDma
from akvm.iommu.dmaspace import TranslatedDma
from akvm.iommu.translate import FR_WRITE
from akvm.iommu.vtd import FRCD, FSTS
from tests.unit.vtd_tables import R, Rig
from akvm.base.bus import Bus
from akvm.base.irq import IrqLine

MMIO_WINDOW = (0xC000_0000, 0xE000_0000)
START, TO_RAM, IRQ = 1, 2, 4


class Pc:
    """An MMIO bus, a PciRoot as the machine wires it, one edu; `iommu` optional."""

    def __init__(self, iommu: bool = False, check: str = "off"):
        self.rig = Rig(check=check)
        self.mem = self.rig.mem
        self.mmio = Bus("mmio")
        self.msis = []
        self.lines = {}
        unit = self.rig.iommu if iommu else None
        dma = (lambda rid: TranslatedDma(unit, rid)) if unit else (lambda rid: DirectDma(self.mem))
        self.root = PciRoot(None, self.mmio, mmio_window=MMIO_WINDOW, io_window=None,
                            irq=self._line, msi=lambda a, d: self.msis.append((a, d)), dma=dma)
        self.edu = Edu()
        self.addr = self.root.add(self.edu)
        self.edu.set_command(COMMAND_BUS_MASTER | COMMAND_MEMORY_SPACE)
        self.bar = self.edu.bar_address(0)

    def translated(self, did: int = 3) -> int:
        """Translation on, this edu's context in domain `did`; returns its page table."""
        self.rig.enable()
        table = self.rig.page()
        self.rig.set_context(self.sid, table=table, did=did)
        return table

    def _line(self, gsi):
        return self.lines.setdefault(gsi, IrqLine(gsi))

    @property
    def sid(self):
        return self.edu.requester_id

    def r(self, off, size=4):
        return self.mmio.read(self.bar + off, size)

    def w(self, off, value, size=4):
        self.mmio.write(self.bar + off, size, value)

    def dma(self, src, dst, count, cmd):
        self.w(0x80, src, 8)
        self.w(0x88, dst, 8)
        self.w(0x90, count, 8)
        self.w(0x98, cmd, 8)
        assert not self.r(0x98, 8) & START                 # done when the write returns

    def enable_msi(self, address=0xFEE0_0000, data=0x44):
        off = self.edu.msi.offset
        self.edu.config_write(off + 4, 4, address)
        self.edu.config_write(off + 0xC, 2, data)
        self.edu.config_write(off + 2, 2, 1)


@pytest.fixture
def pc():
    return Pc()


def test_identity_and_pci_header(pc):
    assert (pc.edu.vendor_id, pc.edu.device_id) == (0x1234, 0x11E8)
    assert pc.edu.class_code == 0x00FF00 and pc.edu.interrupt_pin == 1
    assert pc.edu.bars[0].size == 1 << 20 and pc.edu.msi is not None
    assert pc.r(0x00) == 0x010000ED
    assert pc.edu.dma is not None and pc.sid == pc.addr.device << 3


def test_liveness_and_factorial(pc):
    pc.w(0x04, 0x1234_5678)
    assert pc.r(0x04) == ~0x1234_5678 & 0xFFFF_FFFF
    pc.w(0x08, 10)
    assert pc.r(0x08) == 3628800 and pc.r(0x20) & 1 == 0
    pc.w(0x08, 13)
    assert pc.r(0x08) == 6227020800 & 0xFFFF_FFFF


def test_wrong_access_sizes(pc):
    assert pc.r(0x00, 2) == 0xFFFF and pc.r(0x08, 8) == (1 << 64) - 1
    pc.w(0x04, 0x5, 2)                                    # ignored
    assert pc.r(0x04) == 0xFFFF_FFFF
    pc.w(0x80, 0x1234, 4)
    assert pc.r(0x80, 4) == 0x1234


def test_intx_raise_and_acknowledge(pc):
    line = pc.lines[pc.edu.irq.gsi]
    pc.w(0x60, 0x5)
    assert pc.r(0x24) == 0x5 and line.level
    pc.w(0x64, 0x1)
    assert pc.r(0x24) == 0x4 and line.level
    pc.w(0x64, 0x4)
    assert pc.r(0x24) == 0 and not line.level


def test_factorial_interrupt_by_msi(pc):
    pc.enable_msi()
    pc.w(0x20, 0x80)
    pc.w(0x08, 5)
    assert pc.r(0x24) == 0x1 and pc.msis == [(0xFEE0_0000, 0x44)]
    assert not pc.lines[pc.edu.irq.gsi].level


def test_dma_both_ways_without_iommu(pc):
    pc.mem.write(0x10_0000, b"from RAM" * 8)
    pc.dma(0x10_0000, DMA_BUFFER + 0x10, 64, START)
    assert bytes(pc.edu.buffer[0x10:0x50]) == b"from RAM" * 8
    pc.dma(DMA_BUFFER + 0x10, 0x20_0000, 64, START | TO_RAM | IRQ)
    assert pc.mem.read(0x20_0000, 64) == b"from RAM" * 8
    assert pc.r(0x24) == 0x100 and pc.edu.dma_transfers == 2 and pc.edu.dma_errors == 0


def test_dma_address_is_clamped_to_the_dma_mask(pc):
    pc.mem.write(0x10_0000, b"low")
    pc.dma(0x1_0010_0000, DMA_BUFFER, 3, START)            # bit 32 is beyond 28 bits
    assert bytes(pc.edu.buffer[:3]) == b"low"


def test_dma_outside_the_device_buffer_fails_but_completes(pc):
    pc.dma(0x10_0000, DMA_BUFFER + 4090, 16, START | IRQ)
    assert pc.edu.dma_errors == 1 and pc.r(0x24) == 0x100


def test_dma_needs_bus_mastering(pc):
    pc.edu.set_command(COMMAND_BUS_MASTER, False)
    pc.mem.write(0x10_0000, b"x")
    pc.dma(0x10_0000, DMA_BUFFER, 1, START)
    assert pc.edu.buffer[0] == 0 and pc.edu.dma_errors == 1


def test_dma_through_the_iommu():
    pc = Pc(iommu=True)
    rig = pc.rig
    table = pc.translated()
    src, dst = rig.data_page(0x61), rig.data_page(0)
    rig.map(table, 0x40_0000, src, perms=R)
    rig.map(table, 0x50_0000, dst)
    pc.dma(0x40_0000, DMA_BUFFER, 4096, START)
    assert bytes(pc.edu.buffer) == b"\x61" * 4096
    pc.dma(DMA_BUFFER, 0x50_0000, 4096, START | TO_RAM)
    assert pc.mem.read(dst, 4096) == b"\x61" * 4096
    assert pc.edu.dma_errors == 0
    assert rig.iommu.stats()["iotlb"][3]["misses"] == 2


def test_dma_to_a_read_only_mapping_faults_and_is_recorded():
    pc = Pc(iommu=True)
    rig = pc.rig
    table = pc.translated()
    page = rig.data_page(0x77)
    rig.map(table, 0x40_0000, page, perms=R)
    pc.dma(DMA_BUFFER, 0x40_0010, 16, START | TO_RAM | IRQ)
    assert pc.mem.read(page + 0x10, 16) == b"\x77" * 16     # nothing written
    assert pc.edu.dma_errors == 1 and pc.r(0x24) == 0x100   # completed all the same
    assert rig.r32(FSTS) & 2
    hi = rig.r64(FRCD + 8)
    assert (hi >> 32) & 0xFF == FR_WRITE and hi & 0xFFFF == pc.sid
    assert rig.r64(FRCD) == 0x40_0000


def test_dma_through_a_stale_translation_is_caught_by_the_checker():
    pc = Pc(iommu=True, check="on")
    rig = pc.rig
    table = pc.translated()
    old, new = rig.data_page(0), rig.data_page(0)
    pte = rig.map(table, 0x40_0000, old)
    pc.edu.buffer[:4] = b"one!"
    pc.dma(DMA_BUFFER, 0x40_0000, 4, START | TO_RAM)
    rig.mem.write_u64(pte, new | 3)                        # remap; no invalidation
    pc.edu.buffer[:4] = b"two!"
    pc.dma(DMA_BUFFER, 0x40_0000, 4, START | TO_RAM)
    assert rig.mem.read(old, 4) == b"two!" and rig.mem.read(new, 4) == b"\0\0\0\0"
    assert rig.iommu.checker.reported == 1
    rig.flush_page(3, 0x40_0000)
    pc.edu.buffer[:4] = b"new!"
    pc.dma(DMA_BUFFER, 0x40_0000, 4, START | TO_RAM)
    assert rig.mem.read(new, 4) == b"new!"
