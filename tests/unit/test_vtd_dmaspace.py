"""DmaSpace: DirectDma (no IOMMU) and TranslatedDma; a failed transfer is a DmaError and
nothing else; the DMAR table that tells the guest where the remapping unit is."""
import shutil
import subprocess

import pytest

from akvm.base.dma import DirectDma, DmaError
from akvm.iommu.dmaspace import TranslatedDma
from tests.unit.vtd_tables import SID, Rig
from akvm.base.memory import GuestMemory
from akvm.tables import layout
from akvm.tables.acpi import SdtHeader, build_acpi
from akvm.tables.dmar import build_dmar


@pytest.fixture
def mem():
    return GuestMemory.from_bytearray(1 << 20)


def test_direct_dma_reads_and_writes_guest_ram(mem):
    dma = DirectDma(mem)
    dma.write(0x1000, b"hello")
    assert dma.read(0x1000, 5) == b"hello" and mem.read(0x1000, 5) == b"hello"
    dma.write_u16(0x2000, 0xBEEF)
    dma.write_u32(0x2004, 0xDEADBEEF)
    dma.write_u64(0x2008, 0x0123_4567_89AB_CDEF)
    assert (dma.read_u16(0x2000), dma.read_u32(0x2004), dma.read_u64(0x2008)) == \
        (0xBEEF, 0xDEADBEEF, 0x0123_4567_89AB_CDEF)
    assert dma.read(0x3000, 0) == b"" and dma.translate(0x3000, 0, False) == []
    assert not dma.translated


@pytest.mark.parametrize("address,size", [(1 << 20, 1), ((1 << 20) - 2, 4), (-4, 4),
                                          (1 << 64, 1)])
def test_direct_dma_outside_ram_is_a_dma_error(mem, address, size):
    dma = DirectDma(mem)
    with pytest.raises(DmaError) as e:
        dma.read(address, size)
    assert e.value.reason is None
    with pytest.raises(DmaError):
        dma.write(address, bytes(size))


def test_translated_dma_with_translation_off_is_direct():
    rig = Rig()
    dma = TranslatedDma(rig.iommu, SID)
    dma.write(0x5000, b"abc")
    assert rig.mem.read(0x5000, 3) == b"abc" and dma.translated
    assert repr(dma) == "TranslatedDma(00:03.0)"
    with pytest.raises(DmaError):
        dma.read((1 << 64) - 2, 4)                         # past the 64-bit bus
    with pytest.raises(DmaError):
        dma.read(16 << 20, 1)                              # past guest RAM


def test_dmar_table():
    table = build_dmar(48)
    header = SdtHeader.parse(table)
    assert header.signature == b"DMAR" and header.length == len(table) == 64
    assert sum(table) & 0xFF == 0
    assert table[36] == 47 and table[37] == 0                   # width - 1; no IR
    drhd = table[48:]
    assert int.from_bytes(drhd[0:2], "little") == 0             # DRHD
    assert int.from_bytes(drhd[2:4], "little") == 16
    assert drhd[4] == 1                                         # INCLUDE_PCI_ALL
    assert int.from_bytes(drhd[6:8], "little") == 0             # segment
    assert int.from_bytes(drhd[8:16], "little") == layout.VTD_BASE
    assert build_dmar(39)[36] == 38


def test_dmar_goes_into_the_acpi_tables():
    mem = GuestMemory.from_bytearray(2 << 20)
    tables = build_acpi(mem, 1, extra_tables=[build_dmar(48)])
    (dmar,) = tables.extra
    assert mem.read(dmar, 4) == b"DMAR"
    xsdt_len = mem.read_u32(tables.xsdt + 4)
    entries = [mem.read_u64(tables.xsdt + 36 + 8 * i) for i in range((xsdt_len - 36) // 8)]
    assert dmar in entries


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (acpica-tools) is not installed")
def test_iasl_decodes_the_dmar(tmp_path):
    (tmp_path / "dmar.dat").write_bytes(build_dmar(48))
    subprocess.run(["iasl", "-d", "dmar.dat"], cwd=tmp_path, capture_output=True, check=True)
    dsl = (tmp_path / "dmar.dsl").read_text()
    assert "Hardware Unit Definition" in dsl
    assert "Register Base Address : 00000000FED90000" in dsl
    assert "Host Address Width : 2F" in dsl


def test_untranslated_follows_the_context_and_records_no_fault():
    """What lets a device's C data path reach RAM directly behind the IOMMU."""
    rig = Rig()
    dma = rig.dma()
    assert dma.untranslated()                     # translation off: addresses are physical
    rig.enable()
    assert not dma.untranslated()                 # no context entry: it would fault...
    assert rig.iommu.faults.status == 0           # ...but asking records nothing
    rig.set_context(SID, tt=2, did=3)             # pass-through
    rig.iommu.context_cache.invalidate_all()
    assert dma.untranslated()
    rig.set_context(SID, tt=0, did=3, table=rig.page())
    assert dma.untranslated()                     # the cached context still says pass-through
    rig.iommu.context_cache.invalidate_all()
    assert not dma.untranslated()                 # translating
    assert DirectDma(rig.mem).untranslated()


def test_a_pass_through_translator_in_c_holds_only_while_the_context_does():
    """fast_translator(passthrough=True): for C that cannot ask untranslated() before each
    access (the e1000's exit handler), addresses pass through unchanged, but its lock
    refuses once translation is turned on or the context cache lets the entry go."""
    from akvm.base.native import ffi
    rig = Rig(base=0xFED9_0000)
    dma = rig.dma()
    gpa, span = ffi.new("unsigned long long *"), ffi.new("unsigned long long *")

    def passes(x, addr):
        assert x.lock(x.opaque) == 0
        try:
            assert x.translate(x.opaque, addr, 1, gpa, span) == 0
            return gpa[0] == addr and span[0] > 0
        finally:
            x.unlock(x.opaque)

    off = dma.fast_translator(passthrough=True)     # translation off
    assert dma.fast_translator() is None            # not for code that asks untranslated()
    assert passes(off, 0x12345)
    rig.enable()
    assert off.lock(off.opaque) != 0                # turned on: C stops at once
    assert dma.fast_translator(passthrough=True) is None    # no context: Python faults it
    rig.set_context(SID, tt=2, did=3)               # pass-through
    rig.iommu.context_cache.invalidate_all()
    x = dma.fast_translator(passthrough=True)
    assert passes(x, 0x4000)
    rig.set_context(SID, tt=0, did=3, table=rig.page())
    assert passes(x, 0x4000)                        # the cached context still says so
    rig.iommu.context_cache.invalidate_all()
    assert x.lock(x.opaque) != 0                    # translating now: refused
    assert dma.fast_translator(passthrough=True) is not None    # a translator that walks
