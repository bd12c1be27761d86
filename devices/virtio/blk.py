"""virtio-blk (virtio 1.2, 5.2) on a raw image file.

One request queue. A request is a struct virtio_blk_req: a 16-byte header
the device reads (le32 type, le32 reserved, le64 sector), data, and a
status byte the device writes last. Served on the device's own thread:

    VIRTIO_BLK_T_IN            pread into the driver's buffers
    VIRTIO_BLK_T_OUT           pwrite (and fdatasync while the driver has not
                               negotiated VIRTIO_BLK_F_FLUSH: write-through)
    VIRTIO_BLK_T_FLUSH         fdatasync, then the status: a flushed write is on disk
    VIRTIO_BLK_T_GET_ID        the serial number, 20 bytes
    VIRTIO_BLK_T_DISCARD       punch holes (a hint: OK even where the host cannot)
    VIRTIO_BLK_T_WRITE_ZEROES  zero range / punch hole (unmap), or plain zeros

Requests are served in order, one at a time, so every write completed
before a flush was taken is in the file when the flush calls fdatasync
(the image never changes size, so no other metadata matters).

While the queue's DMA is direct, rounds of it are served in C
(akvm.devices.virtio.blkq, devices/virtio/blkq.c) under the same rules; serve()
and handle() below are its twin, and do what C leaves to Python.
"""
from __future__ import annotations

import os
import struct

from akvm.devices.state import restore_counters, save_counters
from akvm.devices.virtio import blkq
from akvm.base.dma import DmaError
from akvm.devices.virtio.device import VIRTIO_ID_BLOCK, Request, VirtioDevice, bit
from akvm.devices.virtio.image import RawImage
from akvm.devices.virtio.queue import NativeWalker, Virtqueue
from akvm.devices.virtio.spec import (
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_GEOMETRY, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_SECURE_ERASE, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
)


VIRTIO_BLK_T_GET_LIFETIME = 10



SECTOR_SIZE = 512
QUEUE_SIZE = 256
MAX_DISCARD_SECTORS = (1 << 30) // SECTOR_SIZE
MAX_DISCARD_SEG = 32
DISCARD_ALIGNMENT = 4096 // SECTOR_SIZE

_HEADER = struct.Struct("<IIQ")                   # type, reserved, sector
_SEGMENT = struct.Struct("<QII")                  # sector, num_sectors, flags
# struct virtio_blk_config, up to write_zeroes_may_unmap
CONFIG_SIZE = 0x3C
CAPACITY, SEG_MAX, BLK_SIZE = 0x00, 0x0C, 0x14
MAX_DISCARD_SECTORS_OFF, MAX_DISCARD_SEG_OFF, DISCARD_ALIGNMENT_OFF = 0x24, 0x28, 0x2C
MAX_WRITE_ZEROES_SECTORS_OFF, MAX_WRITE_ZEROES_SEG_OFF = 0x30, 0x34
WRITE_ZEROES_MAY_UNMAP_OFF = 0x38


class VirtioBlk(VirtioDevice):
    device_id = VIRTIO_ID_BLOCK
    kind = "virtio-blk"

    def __init__(self, image: RawImage, serial: str | None = None, name: str | None = None,
                 native: bool = True):
        features = bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH)
        if image.readonly:
            features |= bit(VIRTIO_BLK_F_RO)
        else:
            features |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES)
        super().__init__([QUEUE_SIZE], features, CONFIG_SIZE, name)
        self.image = image
        self.capacity = image.size // SECTOR_SIZE
        ident = serial if serial is not None else os.path.basename(image.path)
        self.serial = ident.encode()[:VIRTIO_BLK_ID_BYTES]
        c = self.config
        struct.pack_into("<Q", c, CAPACITY, self.capacity)
        struct.pack_into("<I", c, SEG_MAX, QUEUE_SIZE - 2)
        struct.pack_into("<I", c, BLK_SIZE, SECTOR_SIZE)
        if not image.readonly:
            struct.pack_into("<III", c, MAX_DISCARD_SECTORS_OFF, MAX_DISCARD_SECTORS,
                             MAX_DISCARD_SEG, DISCARD_ALIGNMENT)
            struct.pack_into("<II", c, MAX_WRITE_ZEROES_SECTORS_OFF, MAX_DISCARD_SECTORS,
                             MAX_DISCARD_SEG)
            c[WRITE_ZEROES_MAY_UNMAP_OFF] = 1
        self.reads = self.writes = self.flushes = 0
        self.bytes_read = self.bytes_written = 0
        self.native = native            # serve in C when the DMA is direct
        self._native_queue: blkq.NativeBlkQueue | None = None

    def on_close(self) -> None:
        self.image.close()

    _COUNTERS = ("reads", "writes", "flushes", "bytes_read", "bytes_written")

    def device_snapshot(self) -> dict:
        """Counters only: the ring indices C works with are the queue's own (blkq.store()
        puts them back after every round, and the device's thread is held between rounds)."""
        return save_counters(self, self._COUNTERS)

    def device_restore(self, state: dict) -> None:
        restore_counters(self, state, self._COUNTERS)

    def on_reset(self) -> None:
        if self._native_queue is not None:
            self._native_queue.stop()
            self._native_queue = None

    # --- the queue, in C while its DMA is direct ------------------------------------

    def serve(self, vq: Virtqueue) -> None:
        """Rounds of the queue in C; a request C stops at is done here, then C goes on.
        Translated DMA, or a ring word C cannot reach: VirtioDevice.serve()."""
        while True:
            with self.lock:
                if not self.usable(vq):
                    return
                native, epoch = self._native_for(vq), self.epoch
                if native is not None:
                    native.load(vq)
            if native is None:
                return super().serve(vq)
            code = native.serve()
            with self.lock:
                self._count(native.run)
                if epoch != self.epoch:
                    return                  # reset meanwhile: the ring state is not ours
                native.store(vq)
            if native.run.notify and self.transport is not None:
                self.transport.signal_queue(vq)
            if code == blkq.DONE or code == blkq.STOPPED:
                return
            if code == blkq.REQUEST and (req := self.pop_request(vq)) is not None:
                self.process(req)
            elif code != blkq.AGAIN:
                return super().serve(vq)

    def _native_for(self, vq: Virtqueue) -> blkq.NativeBlkQueue | None:
        """The C queue for this round, or None. Behind an IOMMU it serves only
        while the unit passes this device's DMA through unchanged (asked each
        round: the guest may install a translating context at any time)."""
        if not self.native or vq.native is None and not vq.dma.untranslated():
            return None
        if self._native_queue is None:
            walker = vq.native or NativeWalker(vq.dma.memory, vq.size + 256)
            self._native_queue = blkq.NativeBlkQueue(
                vq, walker, self.image.fd, self.capacity, self.image.readonly,
                not self.negotiated(VIRTIO_BLK_F_FLUSH), self.serial)
        return self._native_queue

    def _count(self, run) -> None:
        self.requests += run.completed
        self.reads += run.reads
        self.writes += run.writes
        self.flushes += run.flushes
        self.bytes_read += run.bytes_read
        self.bytes_written += run.bytes_written
        self.errors += run.io_errors
        if run.error:
            self.log_once(f"io-{run.error}", f"{self.name}: {self.image.path}: "
                                             f"{os.strerror(run.error)}")

    # --- requests ---------------------------------------------------------------------

    def handle(self, req: Request) -> int:
        if req.readable_len < _HEADER.size or req.writable_len < 1:
            self.log_once("malformed", f"{self.name}: request without header or status byte")
            self.errors += 1
            return 0
        kind, _, sector = _HEADER.unpack(req.read(0, _HEADER.size))
        status_at = req.writable_len - 1
        written = 1
        try:
            if kind == VIRTIO_BLK_T_IN:
                status = self._read(req, sector, status_at)
                written += status_at if status == VIRTIO_BLK_S_OK else 0
            elif kind == VIRTIO_BLK_T_OUT:
                status = self._write(req, sector)
            elif kind == VIRTIO_BLK_T_FLUSH:
                self.sync()
                self.flushes += 1
                status = VIRTIO_BLK_S_OK
            elif kind == VIRTIO_BLK_T_GET_ID:
                n = min(status_at, VIRTIO_BLK_ID_BYTES)
                req.write(0, self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")[:n])
                written += n
                status = VIRTIO_BLK_S_OK
            elif kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
                status = self._ranges(req, kind)
            else:
                status = VIRTIO_BLK_S_UNSUPP
        except OSError as e:
            self.log_once(f"io-{e.errno}", f"{self.name}: {self.image.path}: {e.strerror or e}")
            self.errors += 1
            status, written = VIRTIO_BLK_S_IOERR, 1
        except DmaError as e:           # a data buffer the device may not reach
            self.log_once("dma", f"{self.name}: request failed: {e}")
            self.errors += 1
            status, written = VIRTIO_BLK_S_IOERR, 1
        req.write(status_at, bytes((status,)))
        return written

    def sync(self) -> None:
        """Make every write so far durable (VIRTIO_BLK_T_FLUSH)."""
        self.image.fdatasync()

    def _in_range(self, sector: int, length: int) -> bool:
        return length % SECTOR_SIZE == 0 and sector + length // SECTOR_SIZE <= self.capacity

    def _read(self, req: Request, sector: int, length: int) -> int:
        if not self._in_range(sector, length):
            return VIRTIO_BLK_S_IOERR
        if self.image.preadv(req.views(True, 0, length), sector * SECTOR_SIZE) != length:
            return VIRTIO_BLK_S_IOERR
        self.reads += 1
        self.bytes_read += length
        return VIRTIO_BLK_S_OK

    def _write(self, req: Request, sector: int) -> int:
        length = req.readable_len - _HEADER.size
        if self.image.readonly or not self._in_range(sector, length):
            return VIRTIO_BLK_S_IOERR
        if self.image.pwritev(req.views(False, _HEADER.size, length), sector * SECTOR_SIZE) != length:
            return VIRTIO_BLK_S_IOERR
        self._write_through()
        self.writes += 1
        self.bytes_written += length
        return VIRTIO_BLK_S_OK

    def _write_through(self) -> None:
        if not self.negotiated(VIRTIO_BLK_F_FLUSH):
            self.image.fdatasync()

    def _ranges(self, req: Request, kind: int) -> int:
        """VIRTIO_BLK_T_DISCARD / WRITE_ZEROES: struct virtio_blk_discard_write_zeroes[]."""
        length = req.readable_len - _HEADER.size
        count = length // _SEGMENT.size
        if self.image.readonly or length % _SEGMENT.size or not 0 < count <= MAX_DISCARD_SEG:
            return VIRTIO_BLK_S_IOERR
        data = req.read(_HEADER.size, length)
        segments = [_SEGMENT.unpack_from(data, i * _SEGMENT.size) for i in range(count)]
        for sector, sectors, flags in segments:
            allowed = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP if kind == VIRTIO_BLK_T_WRITE_ZEROES else 0
            if flags & ~allowed:
                return VIRTIO_BLK_S_UNSUPP
            if sectors > MAX_DISCARD_SECTORS or sector + sectors > self.capacity:
                return VIRTIO_BLK_S_IOERR
        for sector, sectors, flags in segments:
            offset, n = sector * SECTOR_SIZE, sectors * SECTOR_SIZE
            if kind == VIRTIO_BLK_T_DISCARD:
                self.image.discard(offset, n)
            else:
                self.image.write_zeroes(offset, n, bool(flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP))
        self._write_through()
        return VIRTIO_BLK_S_OK

    def stats(self) -> dict:
        return {**super().stats(), "reads": self.reads, "writes": self.writes,
                "flushes": self.flushes, "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written}

    def format_stats(self, s: dict | None = None) -> str:
        s = s or self.stats()
        return (f"{self.name}: {s['reads']} reads, {s['writes']} writes, {s['flushes']} flushes, "
                f"{s['errors']} errors; {s['requests']} requests, {s['bytes_read']} bytes read, "
                f"{s['bytes_written']} written")
