"""A virtio-blk reset returns only when no request will touch guest RAM again.

A driver that resets its device may give the request's buffers to someone else
the moment the status write returns. The image here reads slowly (tests/shim's
LD_PRELOAD library makes each read wait 0.5 s), so the reset lands while a read
is moving data into guest RAM: once reset() returns, that memory must not change,
in C (devices/virtio/blkq.c) and in Python alike. In a child process, for the shim.
"""
import subprocess
import sys

import pytest

from tests.conftest import shim_env

CHILD = r'''
import os, struct, sys, time
from akvm.devices.virtio.blk import VIRTIO_BLK_T_IN, VirtioBlk
from akvm.devices.virtio.image import RawImage
from tests.unit.virtio_driver import Allocator, bring_up, new_memory

path, native = sys.argv[1], sys.argv[2] == "c"
r, w = os.pipe()
os.environ["AKVM_SHIM_NOTIFY_FD"] = str(w)
mem = new_memory()
dev = VirtioBlk(RawImage(path), native=native)
(q,) = bring_up(dev, mem)
dev.start()
alloc = Allocator()
hdr, data, status = alloc(16), alloc(4096), alloc(1)
mem.write(hdr, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
mem.write(data, b"\xee" * 4096)
mem.write(status, b"\xee")
q.add([(hdr, 16, False), (data, 4096, True), (status, 1, True)])
dev.kick(0)
os.read(r, 1)                   # the read has started (and waits in the shim)
dev.reset()
after_reset = mem.read(data, 4096) + mem.read(status, 1)
time.sleep(0.8)                 # the read, had it gone on, has finished by now
later = mem.read(data, 4096) + mem.read(status, 1)
dev.close()
print("unchanged" if later == after_reset else "changed after the reset returned")
'''


@pytest.mark.parametrize("native", ["c", "python"])
def test_guest_ram_does_not_change_after_a_reset_returns(io_shim, tmp_path, native):
    image = tmp_path / "disk.img"
    image.write_bytes(b"\x5a" * (64 * 512))
    r = subprocess.run([sys.executable, "-c", CHILD, str(image), native], capture_output=True,
                       text=True, timeout=60, env=shim_env(io_shim, image, read_delay_ms=500))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "unchanged"
