"""virtio-blk on real image files: every request type, read-only images, bad requests,
and data safety (a flush reaches fdatasync before it completes; write-through without
FLUSH). Each case runs through the C path (devices/virtio/blkq.c, direct DMA) and the Python
one (`native` "c" / "python")."""
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import examples

from akvm.devices.virtio.blk import (
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VirtioBlk,
)
from akvm.devices.virtio.device import VIRTIO_STATUS_DEVICE_NEEDS_RESET, bit
from akvm.devices.virtio.image import ImageError, RawImage
from akvm.base.dma import DirectDma
from tests.unit.virtio_driver import DATA, MEM_SIZE, Allocator, bring_up, new_memory

SECTORS = 64
both_paths = pytest.mark.parametrize("native", [True, False], ids=["c", "python"])


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(i % 251 for i in range(SECTORS * 512)))
    return path


class Disk:
    """A driver for the block device: requests in, status out."""

    def __init__(self, path, readonly=False, features=None, serial=None, cls=VirtioBlk,
                 native=True):
        self.mem = new_memory()
        self.dev = cls(RawImage(str(path), readonly), serial=serial, native=native)
        (self.q,) = bring_up(self.dev, self.mem, features=features)
        self.alloc = Allocator()

    def request(self, kind, sector=0, out=b"", in_len=0, status_addr=None):
        hdr = self.alloc(16)
        self.mem.write(hdr, struct.pack("<IIQ", kind, 0, sector))
        bufs = [(hdr, 16, False)]
        if out:
            a = self.alloc(len(out))
            self.mem.write(a, out)
            bufs.append((a, len(out), False))
        data = None
        if in_len:
            data = self.alloc(in_len)
            bufs.append((data, in_len, True))
        status = status_addr if status_addr is not None else self.alloc(1)
        bufs.append((status, 1, True))
        head = self.q.add(bufs)
        self.dev.kick(0)
        used = self.q.take_used()
        assert [u[0] for u in used] == [head]
        self.used_len = used[0][1]
        st_ = self.mem.read(status, 1)[0] if status < MEM_SIZE else None
        return st_, (self.mem.read(data, in_len) if data is not None else None)

    def close(self):
        self.dev.close()


@pytest.fixture(params=[True, False], ids=["c", "python"])
def native(request):
    return request.param


@pytest.fixture
def disk(image_path, native):
    d = Disk(image_path, native=native)
    yield d
    assert (d.dev._native_queue is not None) == native     # the path the case is about
    d.close()


def test_capacity_and_config(image_path):
    path = image_path
    with open(path, "ab") as f:
        f.write(b"x" * 100)                             # a partial sector is not visible
    dev = VirtioBlk(RawImage(str(path)))
    assert dev.read_config(0, 8) == SECTORS
    assert dev.read_config(0x14, 4) == 512               # blk_size
    assert dev.device_features & bit(VIRTIO_BLK_F_FLUSH)
    assert dev.device_features & bit(VIRTIO_BLK_F_DISCARD)
    assert dev.device_features & bit(VIRTIO_BLK_F_WRITE_ZEROES)
    assert not dev.device_features & bit(VIRTIO_BLK_F_RO)
    dev.close()


def test_read(disk, image_path):
    status, data = disk.request(VIRTIO_BLK_T_IN, sector=3, in_len=1024)
    assert status == VIRTIO_BLK_S_OK
    assert data == image_path.read_bytes()[3 * 512:5 * 512]
    assert disk.used_len == 1025


def test_write_then_read_back(disk, image_path):
    payload = os.urandom(2048)
    status, _ = disk.request(VIRTIO_BLK_T_OUT, sector=10, out=payload)
    assert status == VIRTIO_BLK_S_OK and disk.used_len == 1
    assert image_path.read_bytes()[10 * 512:14 * 512] == payload
    status, data = disk.request(VIRTIO_BLK_T_IN, sector=10, in_len=2048)
    assert data == payload


def test_data_split_across_many_descriptors(disk, image_path):
    """The spec makes no promise about framing: header, data and status may be cut anywhere."""
    payload = os.urandom(1024)
    m = disk.mem
    blob = struct.pack("<IIQ", VIRTIO_BLK_T_OUT, 0, 2) + payload
    bufs, addr = [], DATA + 0x40000
    for i in range(0, len(blob), 100):               # 100-byte pieces: header split too
        piece = blob[i:i + 100]
        m.write(addr, piece)
        bufs.append((addr, len(piece), False))
        addr += 0x200
    bufs.append((addr, 1, True))
    disk.q.add(bufs)
    disk.dev.kick(0)
    disk.q.take_used()
    assert m.read(addr, 1) == b"\0"
    assert image_path.read_bytes()[1024:2048] == payload


def test_flush(disk):
    status, _ = disk.request(VIRTIO_BLK_T_FLUSH)
    assert status == VIRTIO_BLK_S_OK
    assert disk.dev.flushes == 1


def test_get_id(image_path, native):
    d = Disk(image_path, serial="serial-42", native=native)
    status, data = d.request(VIRTIO_BLK_T_GET_ID, in_len=20)
    assert status == VIRTIO_BLK_S_OK
    assert data == b"serial-42".ljust(20, b"\0")
    d.close()


def test_get_id_defaults_to_the_file_name(disk):
    _, data = disk.request(VIRTIO_BLK_T_GET_ID, in_len=20)
    assert data.rstrip(b"\0") == b"disk.img"


def test_out_of_range_and_partial_sectors_are_io_errors(disk):
    assert disk.request(VIRTIO_BLK_T_IN, sector=SECTORS - 1, in_len=1024)[0] == VIRTIO_BLK_S_IOERR
    assert disk.request(VIRTIO_BLK_T_IN, sector=0, in_len=100)[0] == VIRTIO_BLK_S_IOERR
    assert disk.request(VIRTIO_BLK_T_OUT, sector=SECTORS, out=b"x" * 512)[0] == VIRTIO_BLK_S_IOERR
    assert disk.request(VIRTIO_BLK_T_IN, sector=1 << 62, in_len=512)[0] == VIRTIO_BLK_S_IOERR


def test_unknown_request_type_is_unsupported(disk):
    assert disk.request(99)[0] == VIRTIO_BLK_S_UNSUPP


def test_discard_and_write_zeroes(disk, image_path):
    seg = struct.pack("<QII", 4, 8, 0)
    assert disk.request(VIRTIO_BLK_T_DISCARD, out=seg)[0] == VIRTIO_BLK_S_OK
    assert image_path.read_bytes()[4 * 512:12 * 512] == bytes(8 * 512)
    for unmap in (0, 1):
        seg = struct.pack("<QII", 20 + 8 * unmap, 4, unmap)
        assert disk.request(VIRTIO_BLK_T_WRITE_ZEROES, out=seg)[0] == VIRTIO_BLK_S_OK
        start = (20 + 8 * unmap) * 512
        assert image_path.read_bytes()[start:start + 2048] == bytes(2048)
    # the rest is untouched
    data = image_path.read_bytes()
    assert data[:4 * 512] == bytes(i % 251 for i in range(4 * 512))


def test_discard_and_write_zeroes_check_their_segments(disk):
    assert disk.request(VIRTIO_BLK_T_DISCARD, out=struct.pack("<QII", 0, 1, 1))[0] == \
        VIRTIO_BLK_S_UNSUPP                             # unmap flag on a discard
    assert disk.request(VIRTIO_BLK_T_WRITE_ZEROES, out=struct.pack("<QII", 0, 1, 2))[0] == \
        VIRTIO_BLK_S_UNSUPP                             # a reserved flag
    assert disk.request(VIRTIO_BLK_T_DISCARD, out=struct.pack("<QII", SECTORS, 1, 0))[0] == \
        VIRTIO_BLK_S_IOERR
    assert disk.request(VIRTIO_BLK_T_DISCARD, out=b"x" * 15)[0] == VIRTIO_BLK_S_IOERR


def test_readonly(image_path, native):
    before = image_path.read_bytes()
    d = Disk(image_path, readonly=True, native=native)
    assert d.dev.device_features & bit(VIRTIO_BLK_F_RO)
    assert not d.dev.device_features & bit(VIRTIO_BLK_F_DISCARD)
    assert d.request(VIRTIO_BLK_T_OUT, out=b"y" * 512)[0] == VIRTIO_BLK_S_IOERR
    assert d.request(VIRTIO_BLK_T_WRITE_ZEROES, out=struct.pack("<QII", 0, 1, 0))[0] == \
        VIRTIO_BLK_S_IOERR
    assert d.request(VIRTIO_BLK_T_IN, in_len=512)[0] == VIRTIO_BLK_S_OK
    assert d.request(VIRTIO_BLK_T_FLUSH)[0] == VIRTIO_BLK_S_OK
    d.close()
    assert image_path.read_bytes() == before


def test_image_errors(tmp_path, image_path):
    with pytest.raises(ImageError, match="cannot open"):
        RawImage(str(tmp_path / "missing.img"))
    first = RawImage(str(image_path))
    with pytest.raises(ImageError, match="in use by another process"):
        RawImage(str(image_path))
    first.close()
    RawImage(str(image_path)).close()


def test_data_buffer_outside_ram_is_an_io_error(disk):
    hdr = disk.alloc(16)
    disk.mem.write(hdr, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
    status = disk.alloc(1)
    disk.q.add([(hdr, 16, False), (MEM_SIZE + 0x10000, 512, True), (status, 1, True)])
    disk.dev.kick(0)
    assert disk.q.take_used()[0][1] == 1
    assert disk.mem.read(status, 1) == bytes((VIRTIO_BLK_S_IOERR,))
    assert not disk.dev.status & VIRTIO_STATUS_DEVICE_NEEDS_RESET


def test_status_byte_outside_ram_drops_the_request(disk):
    disk.request(VIRTIO_BLK_T_FLUSH, status_addr=MEM_SIZE + 0x10000)
    assert disk.used_len == 0
    assert disk.request(VIRTIO_BLK_T_FLUSH)[0] == VIRTIO_BLK_S_OK   # still working


def test_request_without_status_byte_is_dropped(disk):
    hdr = disk.alloc(16)
    disk.mem.write(hdr, struct.pack("<IIQ", VIRTIO_BLK_T_FLUSH, 0, 0))
    disk.q.add([(hdr, 16, False)])
    disk.dev.kick(0)
    assert disk.q.take_used()[0][1] == 0


# --- data safety ---------------------------------------------------------------------------

class WatchedBlk(VirtioBlk):
    """Records, at the moment the device syncs, whether the guest could already see the
    flush as complete (it must not) and what the file held (everything written).
    sync() is the Python path's; blkq.c keeps the same order (one request at a time, the
    status and used ring after fdatasync), which test_virtio_blk_native compares."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.observations = []
        self.driver = None

    def sync(self):
        self.observations.append(("sync", self.driver.used_idx, open(self.image.path, "rb").read()))
        super().sync()


def test_flush_syncs_every_completed_write_before_it_completes(image_path):
    d = Disk(image_path, cls=WatchedBlk, native=False)
    d.dev.driver = d.q
    payloads = [os.urandom(512) for _ in range(4)]
    for i, p in enumerate(payloads):
        assert d.request(VIRTIO_BLK_T_OUT, sector=i, out=p)[0] == VIRTIO_BLK_S_OK
    used_before = d.q.used_idx
    assert d.request(VIRTIO_BLK_T_FLUSH)[0] == VIRTIO_BLK_S_OK
    ((_, used_at_sync, contents),) = d.dev.observations
    assert used_at_sync == used_before                 # the flush was not yet complete
    assert contents[:2048] == b"".join(payloads)        # and every write was in the file
    d.close()


def test_writes_and_flush_in_one_batch_keep_their_order(image_path):
    """Writes and a flush made available together: the flush still syncs after the writes."""
    d = Disk(image_path, cls=WatchedBlk, native=False)
    d.dev.driver = d.q
    payload = os.urandom(1024)
    heads = []
    for kind, sector, out in ((VIRTIO_BLK_T_OUT, 0, payload[:512]), (VIRTIO_BLK_T_OUT, 1, payload[512:]),
                              (VIRTIO_BLK_T_FLUSH, 0, b"")):
        hdr = d.alloc(16)
        d.mem.write(hdr, struct.pack("<IIQ", kind, 0, sector))
        bufs = [(hdr, 16, False)]
        if out:
            a = d.alloc(len(out))
            d.mem.write(a, out)
            bufs.append((a, len(out), False))
        bufs.append((d.alloc(1), 1, True))
        heads.append(d.q.add(bufs))
    d.dev.kick(0)
    assert [u[0] for u in d.q.take_used()] == heads
    ((_, used_at_sync, contents),) = d.dev.observations
    assert used_at_sync == 2 and contents[:1024] == payload
    d.close()


class CountingImage(RawImage):
    def __init__(self, *a):
        super().__init__(*a)
        self.syncs = 0

    def fdatasync(self):
        self.syncs += 1
        super().fdatasync()


def test_without_the_flush_feature_writes_are_write_through(image_path):
    mem = new_memory()
    image = CountingImage(str(image_path))
    dev = VirtioBlk(image, native=False)                 # counts the Python path's syncs
    features = dev.device_features & ~bit(VIRTIO_BLK_F_FLUSH)
    (q,) = bring_up(dev, mem, features=features)
    hdr, data, status = DATA, DATA + 0x1000, DATA + 0x2000
    mem.write(hdr, struct.pack("<IIQ", VIRTIO_BLK_T_OUT, 0, 0))
    q.add([(hdr, 16, False), (data, 512, False), (status, 1, True)])
    dev.kick(0)
    assert mem.read(status, 1) == b"\0" and image.syncs == 1
    dev.close()


@both_paths
@pytest.mark.parametrize("flush", [True, False])
def test_a_failed_sync_is_an_io_error(image_path, native, flush):
    """Writes land but syncs fail (the image's descriptor is /dev/null's): a flush, and a
    write when the driver has no FLUSH (write-through), complete with IOERR, counted and
    logged, never OK."""
    probe = VirtioBlk(RawImage(str(image_path)))
    features = probe.device_features & ~(0 if flush else bit(VIRTIO_BLK_F_FLUSH))
    probe.close()
    d = Disk(image_path, native=native, features=features)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, d.dev.image.fd)
    os.close(null)
    expected = VIRTIO_BLK_S_IOERR
    if flush:
        assert d.request(VIRTIO_BLK_T_OUT, sector=0, out=b"w" * 512)[0] == VIRTIO_BLK_S_OK
        assert d.request(VIRTIO_BLK_T_FLUSH)[0] == expected
    else:
        assert d.request(VIRTIO_BLK_T_OUT, sector=0, out=b"w" * 512)[0] == expected
    assert d.dev.errors == 1 and d.used_len == 1
    assert "io-22" in d.dev._logged
    d.close()


@pytest.mark.parametrize("passed_through", [False, True])
def test_translated_dma_is_served_in_python_unless_passed_through(image_path, passed_through):
    class Translated(DirectDma):                        # what NativeWalker.for_dma refuses
        translated = True

        def untranslated(self):                        # the IOMMU's answer, asked each round
            return passed_through
    mem = new_memory()
    dev = VirtioBlk(RawImage(str(image_path)))
    (q,) = bring_up(dev, mem, dma=Translated(mem))
    hdr, data, status = DATA, DATA + 0x1000, DATA + 0x2000
    mem.write(hdr, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 1))
    q.add([(hdr, 16, False), (data, 512, True), (status, 1, True)])
    dev.kick(0)
    assert mem.read(status, 1) == b"\0"
    assert mem.read(data, 512) == image_path.read_bytes()[512:1024]
    assert (dev._native_queue is not None) == passed_through
    assert dev.reads == 1 and dev.bytes_read == 512
    dev.close()


# --- hypothesis: the disk behaves like a byte array ----------------------------------------

@both_paths
@settings(max_examples=examples(60), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["read", "write", "zero", "flush"]),
                          st.integers(0, SECTORS + 2), st.integers(0, 4), st.binary(min_size=1,
                                                                                    max_size=1)),
                max_size=25))
def test_block_device_matches_a_model(tmp_path_factory, native, ops):
    path = tmp_path_factory.mktemp("blk") / "d.img"
    path.write_bytes(bytes(SECTORS * 512))
    model = bytearray(SECTORS * 512)
    d = Disk(path, native=native)
    for op, sector, count, fill in ops:
        ok = sector + count <= SECTORS
        if op == "read":
            status, data = d.request(VIRTIO_BLK_T_IN, sector, in_len=count * 512)
            if count == 0:
                assert status == (VIRTIO_BLK_S_OK if sector <= SECTORS else VIRTIO_BLK_S_IOERR)
            elif ok:
                assert status == VIRTIO_BLK_S_OK
                assert data == bytes(model[sector * 512:(sector + count) * 512])
            else:
                assert status == VIRTIO_BLK_S_IOERR
        elif op == "write" and count:
            payload = fill * (count * 512)
            status, _ = d.request(VIRTIO_BLK_T_OUT, sector, out=payload)
            assert status == (VIRTIO_BLK_S_OK if ok else VIRTIO_BLK_S_IOERR)
            if ok:
                model[sector * 512:(sector + count) * 512] = payload
        elif op == "zero" and count:
            status, _ = d.request(VIRTIO_BLK_T_WRITE_ZEROES, out=struct.pack("<QII", sector, count, 0))
            assert status == (VIRTIO_BLK_S_OK if ok else VIRTIO_BLK_S_IOERR)
            if ok:
                model[sector * 512:(sector + count) * 512] = bytes(count * 512)
        elif op == "flush":
            assert d.request(VIRTIO_BLK_T_FLUSH)[0] == VIRTIO_BLK_S_OK
        d.alloc.next = DATA                              # reuse buffer memory
    d.close()
    assert path.read_bytes() == bytes(model)


# --- hypothesis: hostile rings against the whole block device --------------------------

hostile_desc = st.tuples(
    st.one_of(st.integers(DATA, DATA + 0x10000), st.integers(0, (1 << 64) - 1)),   # addr
    st.one_of(st.integers(0, 1024), st.integers(0, 0xFFFF_FFFF)),                   # len
    st.integers(0, 7),                                                              # flags
    st.integers(0, 20),                                                             # next
)


@both_paths
@settings(max_examples=examples(150), deadline=None)
@given(descs=st.lists(hostile_desc, min_size=16, max_size=16),
       heads=st.lists(st.integers(0, 20), min_size=4, max_size=4),
       avail_idx=st.integers(0, 0xFFFF),
       headers=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 1 << 64 - 1)),
                        min_size=4, max_size=4))
def test_hostile_rings_never_hurt_the_vmm(tmp_path_factory, native, descs, heads, avail_idx,
                                         headers):
    """Whatever the driver writes: no exception escapes, nothing outside the image's
    capacity changes, and after a reset the device serves a good request."""
    path = tmp_path_factory.mktemp("hostile") / "d.img"
    path.write_bytes(bytes(SECTORS * 512))
    d = Disk(path, features=None, native=native)
    q, mem = d.q, d.mem
    q.next_desc = 0
    for i, (addr, length, flags, nxt) in enumerate(descs):
        q.write_desc(i, addr, length, flags, nxt)
    for i, (kind, sector) in enumerate(headers):        # plausible headers where buffers may point
        mem.write(DATA + 0x1000 * i, struct.pack("<IIQ", kind, 0, sector))
    for i, h in enumerate(heads):
        mem.write(q.avail + 4 + 2 * i, struct.pack("<H", h))
    mem.write(q.avail + 2, struct.pack("<H", avail_idx))
    d.dev.kick(0)
    assert len(path.read_bytes()) == SECTORS * 512
    # the driver resets and starts over: the device works again
    d.dev.write_status(0)
    assert d.dev.status == 0
    (d.q,) = bring_up(d.dev, mem)
    d.alloc.next = DATA + 0x20000
    assert d.request(VIRTIO_BLK_T_OUT, sector=1, out=b"k" * 512)[0] == VIRTIO_BLK_S_OK
    assert path.read_bytes()[512:1024] == b"k" * 512
    d.close()


def test_vectored_io_across_many_buffers_and_short_transfers(tmp_path):
    """preadv/pwritev straight into guest-memory views: more iovecs than one call takes,
    and a read that ends early at the end of the file."""
    from akvm.devices.virtio.image import IOV_MAX, RawImage
    path = tmp_path / "img"
    data = os.urandom(8 * (IOV_MAX + 5))
    path.write_bytes(data)
    img = RawImage(str(path))
    guest = bytearray(len(data))
    views = [memoryview(guest)[i:i + 8] for i in range(0, len(guest), 8)]
    assert img.preadv(views, 0) == len(data) and bytes(guest) == data
    tail = bytearray(16)
    assert img.preadv([memoryview(tail)], len(data) - 8) == 8
    img.close()
    img = RawImage(str(path))
    assert img.pwritev([memoryview(b"ab"), memoryview(b""), memoryview(b"cd")], 3) == 4
    img.close()
    assert path.read_bytes()[3:7] == b"abcd"


def test_dma_views_are_refused_outside_ram():
    from akvm.base.dma import DirectDma, DmaError
    from akvm.base.memory import GuestMemory
    dma = DirectDma(GuestMemory.from_bytearray(0x2000))
    [v] = dma.views(0x1000, 0x100, True)
    v[:2] = b"hi"
    assert dma.read(0x1000, 2) == b"hi"
    with pytest.raises(DmaError):
        dma.views(0x1F00, 0x200, True)


def test_the_pass_through_decision_is_made_for_each_request(image_path):
    """Behind the IOMMU, C serves a queue while the device's context passes DMA through.
    The guest makes the context translating (and invalidates it) right after the first
    of two available reads was decided: the second must go through the new translation,
    to the frame its data page now maps to, not straight to the guest-physical page."""
    from akvm.iommu.vtd import CCMD
    from tests.unit.vtd_tables import PAGE, SID, Rig
    rig = Rig()
    rig.enable()
    rig.set_context(SID, tt=2, did=3)                   # pass-through
    table = rig.page()
    alloc = Allocator(start=8 << 20, end=9 << 20)
    reads = [(alloc(16), alloc(PAGE, align=PAGE), alloc(1)) for _ in range(2)]
    frame = rig.data_page(0x77)                         # where the second read must land
    for page in range(0, 1 << 20, PAGE):                # rings and buffers: identity, but...
        rig.map(table, page, page)
    for page in range(8 << 20, 9 << 20, PAGE):
        rig.map(table, page, page)
    rig.map(table, reads[1][1], frame)                  # ...the second read's data page
    dma = rig.dma()
    dev = VirtioBlk(RawImage(str(image_path)))
    (q,) = bring_up(dev, rig.mem, dma=dma)
    for sector, (hdr, data, status) in enumerate(reads):
        rig.mem.write(hdr, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, sector))
        rig.mem.write(data, b"\xee" * PAGE)
        q.add([(hdr, 16, False), (data, 512, True), (status, 1, True)])
    asked = dma.untranslated

    def untranslated():
        answer = asked()
        if answer:                                      # a vCPU, just after this decision
            rig.set_context(SID, tt=0, did=3, table=table)
            rig.w64(CCMD, 1 << 63 | 1 << 61)            # global context-cache invalidation
        return answer
    dma.untranslated = untranslated
    dev.kick(0)
    image = image_path.read_bytes()
    assert [s for s, _ in q.take_used()] == [0, 3]
    assert rig.mem.read(reads[0][1], 512) == image[:512]           # passed through
    assert rig.mem.read(frame, 512) == image[512:1024]             # translated
    assert rig.mem.read(reads[1][1], 512) == b"\xee" * 512         # not the physical page
    dev.close()


def test_the_image_fd_outlives_a_call_in_progress(image_path):
    """close() during a call that uses the descriptor (the device thread in preadv, C in
    a round) leaves it open until that call ends: its number is not reused meanwhile."""
    image = RawImage(str(image_path))
    with image.using() as fd:
        image.close()
        assert os.pread(fd, 4, 0) == bytes(range(4))    # still the image
        with pytest.raises(OSError):
            image.preadv([bytearray(4)], 0)             # no new calls
    with pytest.raises(OSError):
        os.fstat(fd)
