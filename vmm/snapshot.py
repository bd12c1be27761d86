"""Snapshots: a whole machine in a directory, and back.

    DIR/manifest.json   one header line {"format", "version", "crc32", "bytes"},
                        then the state as JSON: the configuration, each vCPU, the
                        VM's in-kernel devices, every device model, the disks used,
                        and where guest RAM is in the RAM file
    DIR/ram-TOKEN       guest RAM, sparse: only pages that hold data take disk

The manifest's checksum (CRC-32: it guards against damage, not tampering) covers the state, so a corrupt or truncated manifest
is refused; the RAM file's size is checked, its contents are not read at
restore (that would make restoring cost as much as the RAM the guest used):
the file's data extents are mapped copy-on-write over anonymous memory
(akvm.base.memory.GuestMemory.from_ram_file), so pages load when the guest
touches them. A new snapshot writes a new RAM file and then replaces the
manifest, so a machine restored from DIR (which maps its RAM file) can save
to DIR again, and an interrupted save leaves the old snapshot whole.

Disk images are recorded by path, size and modification time; one that
changed since is refused at restore unless forced, since the guest would
find a disk other than the one it wrote.
"""
from __future__ import annotations

import json
import os
import threading
import time
import zlib
from typing import NamedTuple

from akvm.base.errors import ConfigError
from akvm.config import MachineConfig, Module

FORMAT = "akvm-snapshot"
VERSION = 1
MANIFEST = "manifest.json"


class SnapshotError(ConfigError):
    """A snapshot that cannot be written or used; the message is one line."""


# --- the configuration ---------------------------------------------------------------

def config_data(config: MachineConfig) -> dict:
    """What rebuilds the machine: the options as the user gave them (device options
    are parsed again at restore, by the same table)."""
    return {"kernel": config.kernel, "cmdline": config.cmdline, "memory": config.memory,
            "cpus": config.cpus, "serial": config.serial,
            "modules": [[m.path, m.args] for m in config.modules],
            "devices": [spec.text for spec in config.devices],
            "iommu": config.iommu.text if config.iommu is not None else None}


def config_from_data(data: dict) -> MachineConfig:
    from akvm.devicetable import parse_device, parse_iommu
    return MachineConfig(
        kernel=data["kernel"], cmdline=str(data["cmdline"]), memory=int(data["memory"]),
        cpus=int(data["cpus"]), serial=str(data["serial"]),
        modules=[Module(str(p), str(a)) for p, a in data["modules"]],
        devices=[parse_device(text) for text in data["devices"]],
        iommu=parse_iommu(data["iommu"]) if data["iommu"] is not None else None)


def disks_of(config: MachineConfig) -> list[dict]:
    """The disk images the machine uses, as the snapshot records them."""
    disks = []
    for spec in config.devices:
        path = spec.values.get("file") if spec.kind == "virtio-blk" else None
        if path:
            st = os.stat(path)
            disks.append({"path": os.path.abspath(path), "size": st.st_size,
                          "mtime_ns": st.st_mtime_ns})
    return disks


# --- writing ---------------------------------------------------------------------------

def make_dir(path: str) -> None:
    """The snapshot's directory, made before the machine pauses: a bad path costs nothing."""
    try:
        if not os.path.isdir(path):
            os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise SnapshotError(f"snapshot {path}: {e.strerror or e}") from None


def write(path: str, state: dict, memory) -> dict:
    """Write a snapshot of a paused machine into the directory `path` (make_dir()): guest
    RAM from `memory`, then the manifest with `state` (which gets the RAM file's layout).
    Returns a summary for the user."""
    start = time.monotonic()
    folder = os.fspath(path)
    ram_name = f"ram-{os.urandom(6).hex()}"
    offsets, pos = [], 0
    for slot in memory.slots:
        offsets.append(pos)
        pos += slot.size
    ram_path = os.path.join(folder, ram_name)
    manifest = os.path.join(folder, MANIFEST)
    tmp = f"{manifest}.{ram_name}"
    try:
        fd = os.open(ram_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, pos)
            saved = memory.save_sparse(fd, offsets)
        finally:
            os.close(fd)
        state["ram"] = {"file": ram_name, "size": pos, "data": saved["data"],
                        "touched": saved["touched"],
                        "slots": [{"gpa": s.gpa, "size": s.size, "offset": off,
                                   "extents": [v for e in extents for v in e]}
                                  for s, off, extents in zip(memory.slots, offsets,
                                                             saved["extents"])]}
        body = json.dumps(state, separators=(",", ":")).encode()
        header = json.dumps({"format": FORMAT, "version": VERSION, "crc32": zlib.crc32(body),
                             "bytes": len(body)})
        with open(tmp, "wb") as f:
            f.write(header.encode() + b"\n" + body)
        os.replace(tmp, manifest)
    except OSError as e:
        for leftover in (ram_path, tmp):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        raise SnapshotError(f"snapshot {path}: {e.strerror or e}") from None
    for old in os.listdir(folder):            # earlier snapshots' RAM (a restored machine
        if old.startswith("ram-") and old != ram_name:    # may still map one: unlinking
            try:                                            # is safe)
                os.unlink(os.path.join(folder, old))
            except OSError:
                pass
    used = sum(os.stat(p).st_blocks * 512 for p in (ram_path, manifest))
    return {"path": folder, "seconds": round(time.monotonic() - start, 6),
            "ram_data": saved["data"], "ram_touched": saved["touched"], "disk_usage": used}


# --- reading ---------------------------------------------------------------------------

class Snapshot(NamedTuple):
    path: str
    state: dict

    def config(self, serial: str | None = None, stats: bool = False) -> MachineConfig:
        """The saved configuration, with the console and statistics the user gives now and
        disk images at the absolute paths recorded (the snapshot may be restored elsewhere)."""
        try:
            config = config_from_data(self.state["config"])
        except ConfigError as e:
            raise SnapshotError(f"snapshot {self.path}: its configuration: {e}") from None
        disks = iter(self.state["disks"])
        for spec in config.devices:
            if spec.kind == "virtio-blk" and spec.values.get("file"):
                spec.values["file"] = next(disks)["path"]
        return config._replace(serial=serial or config.serial, stats=stats)

    def check_disks(self, force: bool) -> None:
        """Refuse disk images that changed since the snapshot (unless forced)."""
        for disk in self.state["disks"]:
            path = disk["path"]
            try:
                st = os.stat(path)
            except OSError as e:
                raise SnapshotError(f"snapshot {self.path}: disk image {path}: "
                                    f"{e.strerror or e}") from None
            if force:
                continue
            if st.st_size != disk["size"]:
                why = f"its size is {st.st_size} bytes, not {disk['size']}"
            elif st.st_mtime_ns != disk["mtime_ns"]:
                why = (f"it was modified at {time.ctime(st.st_mtime_ns / 1e9)}, after the "
                       f"snapshot's copy ({time.ctime(disk['mtime_ns'] / 1e9)})")
            else:
                continue
            raise SnapshotError(f"snapshot {self.path}: disk image {path} changed since the "
                                f"snapshot ({why}); --restore-force restores anyway")

    def open_ram(self) -> tuple[int, list]:
        """The RAM file, open, and the slots as GuestMemory.from_ram_file() takes them."""
        ram = self.state["ram"]
        path = os.path.join(self.path, ram["file"])
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SnapshotError(f"snapshot {self.path}: RAM file {ram['file']}: "
                                f"{e.strerror or e}") from None
        size = os.fstat(fd).st_size
        if size != ram["size"]:
            os.close(fd)
            raise SnapshotError(f"snapshot {self.path}: RAM file {ram['file']} is {size} bytes, "
                                f"not {ram['size']}: truncated or replaced")
        slots = []
        for s in ram["slots"]:
            flat = s["extents"]
            slots.append((int(s["gpa"]), int(s["size"]), int(s["offset"]),
                          list(zip(flat[::2], flat[1::2]))))
        return fd, slots


def load(path: str) -> Snapshot:
    """Read and check a snapshot's manifest; any problem is a SnapshotError (one line)."""
    where = f"snapshot {path}"
    try:
        with open(os.path.join(path, MANIFEST), "rb") as f:
            header_line = f.readline(4096)
            body = f.read()
    except FileNotFoundError:
        what = "does not exist" if not os.path.exists(path) else f"has no {MANIFEST}"
        raise SnapshotError(f"{where} {what}") from None
    except OSError as e:
        raise SnapshotError(f"{where}: {e.strerror or e}") from None
    try:
        header = json.loads(header_line)
        if not isinstance(header, dict):
            raise ValueError
    except ValueError:
        raise SnapshotError(f"{where}: {MANIFEST} is not an akvm snapshot manifest") from None
    if header.get("format") != FORMAT:
        raise SnapshotError(f"{where}: {MANIFEST} is not an akvm snapshot manifest")
    if header.get("version") != VERSION:
        raise SnapshotError(f"{where}: format version {header.get('version')!r}; this akvm "
                            f"reads version {VERSION}")
    if len(body) != header.get("bytes"):
        raise SnapshotError(f"{where}: {MANIFEST} is truncated ({len(body)} of "
                            f"{header.get('bytes')} bytes)")
    if zlib.crc32(body) != header.get("crc32"):
        raise SnapshotError(f"{where}: {MANIFEST} is corrupt (checksum mismatch)")
    try:
        state = json.loads(body)
    except ValueError as e:
        raise SnapshotError(f"{where}: {MANIFEST} is corrupt ({e})") from None
    return Snapshot(path, state)


class EarlyVm(threading.Thread):
    """KVM's VM with the snapshot's RAM as its memory slots, made on a thread while the
    rest of akvm is imported: creating memory slots is KVM work that grows with the
    size of RAM (about 10 ms for 8 GiB here), and the imports are Python's. take()
    gives (System, Vm, GuestMemory), or None after any failure, which Machine.restore()
    then meets again and reports."""

    def __init__(self, snap: Snapshot):
        super().__init__(name="restore-vm", daemon=True)
        self.snap = snap
        self._result = None

    def run(self) -> None:
        from akvm.base import kvm
        from akvm.base.memory import GuestMemory
        system = vm = memory = None
        try:
            system = kvm.System()
            fd, slots = self.snap.open_ram()
            try:
                memory = GuestMemory.from_ram_file(fd, slots)
            finally:
                os.close(fd)
            vm = system.create_vm()
            for slot in memory.slots:
                vm.set_user_memory_region(slot.index, slot.gpa, slot.size,
                                          memory.host_address(slot))
            self._result = (system, vm, memory)
        except Exception:
            for fd in (vm, system):
                if fd is not None:
                    fd.close()

    def take(self):
        self.join()
        return self._result
