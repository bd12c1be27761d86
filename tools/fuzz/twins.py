"""Campaigns over the C paths: each C function against its Python twin on the same
random input, as tests/unit's twin tests do, for a million operations and more.

Input is generated here with `random` (hypothesis's cost per example would make
a million operations take hours), in the shapes the twin tests' strategies give,
and compared with the helpers of those tests; --seed makes a run repeatable.
"""
from __future__ import annotations

import random
import struct
import tempfile
from pathlib import Path

U64 = 1 << 64


def virtq(ops: int, seed: int | None):
    """virtqueue walk: akvm_vq_walk against Virtqueue.walk_python, random tables, direct and
    indirect, two slots with a hole"""
    from tests.unit import test_virtio_native as t
    rng = random.Random(seed)
    mem = t.memory()
    places = [t.TABLE, t.HIGH + 0x100, t.LOW - 16 * 4, U64 - 32]

    def addr():
        return rng.choice([rng.randrange(0, t.LOW + 1), rng.randrange(t.HIGH - 64, t.HIGH + 0x10000),
                           rng.choice([t.INDIRECT, t.INDIRECT + 8, U64 - 16]), rng.randrange(U64)])

    def desc():
        length = rng.choice([rng.randrange(257), rng.choice([16, 32, 48, 0xFFFF_FFFF]),
                             rng.randrange(1 << 32)])
        nxt = rng.choice([rng.randrange(t.SIZE + 2), rng.randrange(1 << 16)])
        return struct.pack("<QIHH", addr(), length, rng.randrange(8), nxt)
    queues = {(at, ok): t.queue(mem, desc=at, indirect=ok) for at in places for ok in (0, 1)}
    findings = []
    for n in range(ops):
        at, ok = rng.choice(places), rng.randrange(2)
        for i in range(rng.randrange(9)):
            mem.write(t.INDIRECT + 16 * i, desc())
        for i in range(t.SIZE):
            if mem.contains(at + 16 * i, 16):
                mem.write(at + 16 * i, desc())
        vq, head = queues[(at, ok)], rng.randrange(t.SIZE + 3)
        c, py = t.outcome(vq.walk, head), t.outcome(vq.walk_python, head)
        if c != py and len(findings) < 3:
            findings.append(f"walk {n}: C {c} != Python {py}")
    return ops, findings, "tables rewritten for every walk"


def slwalk(ops: int, seed: int | None):
    """VT-d second-level walk: akvm_sl_walk against walk_python, random 1-5 level tables,
    large pages, reserved bits, pointers outside RAM"""
    from akvm.iommu.translate import ContextEntry, WalkParams, walk_native, walk_python
    from tests.unit import test_vtd_native as t
    from tests.unit.vtd_tables import PAGE, PS, SID
    rng = random.Random(seed)
    mem = t.memory()

    def table():
        return rng.choice([rng.randrange(1, t.LOW // PAGE) * PAGE,
                           t.HIGH + rng.randrange(t.HIGH_SIZE // PAGE) * PAGE])

    def pointer():
        return rng.choice([table(), table(), table(),
                           rng.choice([t.LOW, t.HIGH - PAGE, t.HIGH + t.HIGH_SIZE, (1 << 52) - PAGE,
                                       2 << 20, 1 << 30, 0x8000_0000]),
                           rng.randrange(1 << 52) & ~0xFFF])

    def entry():
        reserved = rng.choice([0, 0, 0, 1 << rng.randrange(52)])
        return (pointer() | rng.choice([0, 1, 2, 3, 3, 3]) | (PS if rng.randrange(2) else 0) |
                (rng.randrange(0x400) << 2 & 0xF7C) | rng.randrange(0x1000) << 52 | reserved)
    findings = []
    for n in range(ops):
        levels, aw = rng.choice([(3, 39), (4, 48), (5, 57), (1, 21), (2, 30)])
        root = rng.choice([table(), table(), rng.choice([t.LOW - 4, U64 - 8]), rng.randrange(U64)])
        address = rng.choice([rng.randrange(1 << 48), rng.randrange(1 << 39), rng.randrange(U64)])
        for _ in range(rng.randrange(3)):
            mem.write_u64(table() + rng.randrange(512) * 8, entry())
        at = root
        for level in range(levels, 0, -1):
            gpa = at + ((address >> (12 + 9 * (level - 1))) & 0x1FF) * 8
            e = entry()
            if mem.contains(gpa, 8):
                mem.write_u64(gpa, e)
            at = e & ((1 << 52) - 1) & ~0xFFF
        ctx = ContextEntry(SID, 7, 0, True, root, levels,
                           aw if rng.randrange(3) else rng.randrange(71))
        params = WalkParams(haw=rng.choice([36, 39, 46, 48, 52, 57, 64]),
                            large_pages=rng.randrange(4))
        write = bool(rng.randrange(2))
        c = t.outcome(walk_native, mem, ctx, address, write, params)
        py = t.outcome(walk_python, mem, ctx, address, write, params)
        if c != py and len(findings) < 3:
            findings.append(f"walk {n}: C {c} != Python {py}")
    return ops, findings, "one walk per table set"


def iotlb(ops: int, seed: int | None):
    """IOTLB: iotlb.c's table against PyIotlb: inserts, lookups, invalidations of every
    granularity, colliding addresses, tables of 1 to 12 entries"""
    from akvm.iommu.cache import Iotlb
    from tests.unit.pyiotlb import PyIotlb
    from tests.unit.test_vtd_iotlb_native import snapshot
    rng = random.Random(seed)
    findings: list[str] = []

    def iova():
        return (rng.randrange(4) << 30 | rng.randrange(4) << 21 | rng.randrange(8) << 12 |
                rng.randrange(4096))
    n = 0
    while n < ops and not findings:
        capacity = rng.randrange(1, 13)
        py, c = PyIotlb(capacity), Iotlb(capacity)
        for _ in range(1000):
            n += 1
            kind, did = rng.randrange(10), rng.randrange(1, 5)
            if kind < 4:
                address, shift = iova(), rng.choice([12, 12, 12, 21, 30])
                py.insert(did, address, shift, n)
                c.insert(did, address, shift, n)
                got = None, None
            elif kind < 8:
                address = iova()
                got = py.lookup(did, address), c.lookup(did, address)
            elif kind == 8:
                got = (py.invalidate_domain(did), c.invalidate_domain(did)) if rng.randrange(4) \
                    else (py.invalidate_all(), c.invalidate_all())
            else:
                args = did, iova(), rng.choice([0, 0, 1, 2, 9, 18, 20, 51, 52, 63])
                got = py.invalidate_pages(*args), c.invalidate_pages(*args)
            if got[0] != got[1] or n % 50 == 0 and snapshot(py) != snapshot(c):
                findings.append(f"operation {n} (kind {kind}): Python {got[0]} != C {got[1]}")
                break
    return n, findings, "operations, each on both tables"


def qi(ops: int, seed: int | None):
    """queued invalidation: qi.c and the C doorbell (vtddoor.c) against the Python
    invalidator, random batches of well-formed and malformed descriptors of every type"""
    from akvm.iommu.faults import FSTS_IQE
    from akvm.iommu.vtd import FSTS
    from tests.unit import test_vtd_queue as t
    rng = random.Random(seed)
    findings: list[str] = []

    def descriptor(status):
        kind = rng.randrange(6)
        if kind == 0:
            lo, hi = t.iotlb(rng.randrange(4), rng.randrange(1, 4), rng.randrange(41) << 12,
                             rng.choice([0, 0, 1, 9, 12]))
            return lo | rng.choice([0, 0, 0, 1]) << 8, hi
        if kind == 1:
            off = rng.choice([-1, 0, 4, 60, 1 << 40])
            return t.wait(None if off < 0 else status + off if off < 1 << 40 else off,
                          rng.randrange(1 << 32), bool(rng.randrange(2)))
        if kind == 2:
            return t.cc(rng.randrange(4), rng.randrange(4))
        if kind == 3:
            return t.dev_tlb(t.SID)
        if kind == 4:
            return t.iec()
        return rng.randrange(U64), rng.randrange(U64)
    n = 0
    while n < ops and not findings:
        rigs = [t._queue_rig(True), t._queue_rig(False), t._queue_rig(True, doorbell=True)]
        cached = [(rng.randrange(1, 4), rng.randrange(41), rng.choice([12, 12, 21]))
                  for _ in range(rng.randrange(30))]
        for r in rigs:
            with r.iommu.lock:
                for did, page, shift in cached:
                    r.iommu.iotlb.insert(did, page << 12, shift, (did, page))
        for _ in range(200):
            batch = [descriptor(rigs[0].status) for _ in range(rng.randrange(13))]
            n += len(batch)
            for r in rigs:
                r.submit(*batch)
                if r.r32(FSTS) & FSTS_IQE:
                    r.w32(FSTS, FSTS_IQE)
            states = [t._state(r) for r in rigs]
            if not states[0] == states[1] == states[2]:
                findings.append(f"after {n} descriptors the units differ")
                break
    return n, findings, "descriptors, each through C, the doorbell and Python"


def blk(ops: int, seed: int | None):
    """virtio-blk rounds: blkq.c against the Python device: random request batches (every
    type, bad sectors and lengths, short headers, buffers outside RAM, broken chains,
    indirect tables), guest memory, images and counters compared"""
    from akvm.devices.virtio.blk import (VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_T_DISCARD,
                                         VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
                                         VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES)
    from akvm.devices.virtio.device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, bit
    from tests.unit import test_virtio_blk_native as t
    rng = random.Random(seed)
    findings: list[str] = []
    kinds = [VIRTIO_BLK_T_IN] * 3 + [VIRTIO_BLK_T_OUT] * 3 + [
        VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES]

    def request():
        kind = rng.choice(kinds) if rng.randrange(8) else rng.randrange(1 << 32)
        sector = rng.randrange(t.SECTORS + 2) if rng.randrange(4) else \
            rng.choice([t.SECTORS - 1, 1 << 63, U64 - 1])
        length = rng.choice([0, 512, 1024, 2048]) if rng.randrange(2) else rng.randrange(1101)
        header = struct.pack("<IIQ", kind, rng.randrange(4), sector)
        header = header[:rng.choice([16] * 8 + [0, 8, 15])]
        readable, writable = header, length
        if kind == VIRTIO_BLK_T_OUT:
            readable, writable = header + bytes([rng.randrange(256)]) * length, 0
        elif kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
            readable, writable = header + struct.pack("<QII", sector % (t.SECTORS + 2),
                                                      length // 512, rng.randrange(2)), 0
        writable += rng.choice([1] * 8 + [0, 2])

        def cuts():
            return [rng.randrange(1, 2101) for _ in range(rng.randrange(4))]
        return {"readable": readable, "writable": writable, "rcuts": cuts(), "wcuts": cuts(),
                "outside": None if rng.randrange(4) else (rng.randrange(9), rng.choice(t.OUTSIDE)),
                "read_after_write": rng.randrange(31) == 0, "indirect": bool(rng.randrange(2))}
    image = bytes((i * 7 + i // 512) & 0xFF for i in range(t.SECTORS * 512))
    n = 0
    with tempfile.TemporaryDirectory() as root:
        while n < ops and not findings:
            event_idx, indirect, flush, readonly = (bool(rng.randrange(2)) for _ in range(4))
            features = ~((0 if event_idx else bit(VIRTIO_F_EVENT_IDX)) |
                         (0 if indirect else bit(VIRTIO_F_INDIRECT_DESC)) |
                         (0 if flush else bit(VIRTIO_BLK_F_FLUSH)))
            rigs = []
            for native in (True, False):
                path = Path(root) / f"{native}.img"
                path.write_bytes(image)
                rigs.append((path, t.Rig(path, native, features, readonly)))
            (c_path, c), (py_path, py) = rigs
            for batch in range(50):
                requests = [request() for _ in range(rng.randrange(1, 6))]
                no_interrupt, used_event = rng.randrange(2), rng.randrange(13)
                wants = []
                for _, rig in rigs:
                    rig.alloc.next = t.DATA
                    rig.q.set_avail_flags(no_interrupt)
                    rig.q.set_used_event((rig.q.used_idx + used_event) & 0xFFFF)
                    for req in requests:
                        rig.submit(req, indirect)
                    wants.append(rig.kick())
                n += len(requests)
                if (wants[0] != wants[1] or c.counters() != py.counters() or
                        c.mem.slots[0].buf != py.mem.slots[0].buf):
                    findings.append(f"batch {batch} after {n} requests: C and Python differ")
                    break
            if not findings and c_path.read_bytes() != py_path.read_bytes():
                findings.append(f"after {n} requests the images differ")
            for _, rig in rigs:
                rig.dev.close()
    return n, findings, "requests, each served in C and in Python"


def fastpath(ops: int, seed: int | None):
    """fast-path exits: akvm_fastpath_complete (with the debug port's handler) against the
    Python buses' claims, random port and MMIO exits of every size and direction"""
    from akvm.base.runloop import FastPath
    from akvm.devices.debugport import DebugPortShortcut
    from tests.unit.test_fastpath import RunPage, machine_buses
    rng = random.Random(seed)
    findings: list[str] = []
    pio, mmio = machine_buses()
    fp, page = FastPath(pio, mmio), RunPage()
    DebugPortShortcut(fp)
    expected = {"pio": [0, 0], "mmio": [0, 0]}
    ranges = {bus.name: bus.ranges() for bus in (pio, mmio)}
    for n in range(ops):
        if rng.randrange(2):
            bus, addr, size = pio, rng.randrange(1 << 16), rng.choice([1, 2, 4])
        else:
            bus, addr, size = mmio, rng.choice([rng.randrange(1 << 40), rng.randrange(1 << 32)]), \
                rng.choice([1, 2, 4, 8])
        write = bool(rng.randrange(2))
        if bus is pio:
            page.io(addr, size, out=write)
        else:
            page.mmio(addr, size, write=write)
        claimed = any(r.base < addr + size and addr < r.end for r in ranges[bus.name])
        done = fp.complete(page.address)
        if bus is pio and addr == 0x80 and size == 1:
            ok = done
        else:
            ok = done == (not claimed)
            if done:
                expected[bus.name][int(write)] += 1
        if not ok:
            findings.append(f"exit {n}: {bus.name} {addr:#x}/{size} completed={done}, "
                            f"claimed={claimed}")
            break
    s = fp.stats()
    if not findings and (s["unclaimed_reads"] != (expected["pio"][0], expected["mmio"][0]) or
                         s["unclaimed_writes"] != (expected["pio"][1], expected["mmio"][1])):
        findings.append("the unclaimed counters disagree")
    return ops, findings, "exits"
