"""akvm.boot.image: guest RAM at power-on, built by a forked child or in this process."""
import os
import pathlib
import time

import pytest

from akvm.boot import image as boot_image
from tests.conftest import open_fds
from hypothesis import given, strategies as st

from akvm.boot.image import PIPE_LIMIT, BootImage, BootImageError, DeviceFacts, RamWrites
from akvm.config import MachineConfig, Module
from akvm.base.memory import FOUR_GIB, PCI_HOLE_START, GuestMemory
from akvm.tables import layout

MiB = 1 << 20
RAM = 32 * MiB
FACTS = DeviceFacts(pci_interrupts=((1, 0, 10), (2, 1, 11)), dmar_width=48)


def all_children() -> set[int]:
    """This process's child processes, zombies included."""
    pids = set()
    for task in pathlib.Path("/proc/self/task").iterdir():
        try:
            pids |= {int(p) for p in (task / "children").read_text().split()}
        except FileNotFoundError:
            pass                # a thread that just ended (the reaper)
    return pids


_before: set[int] = set()


@pytest.fixture(autouse=True)
def _others():
    """Children an earlier test of this process left (a pytest-xdist worker runs many)."""
    global _before
    _before = all_children()


def children() -> set[int]:
    """The child processes this test started."""
    return all_children() - _before


def reaped(timeout=5.0) -> bool:
    """True once every child is gone (finish() reaps its builder in the background)."""
    deadline = time.monotonic() + timeout
    while children():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def config(kernel, **kw) -> MachineConfig:
    return MachineConfig(kernel=str(kernel), memory=RAM, serial="none", **kw)


def started(cfg: MachineConfig, fork: bool) -> BootImage:
    image = BootImage.prepare(fork=fork)
    image.start(cfg)
    return image


def ram_of(image: BootImage, facts=FACTS):
    entry = image.finish(facts)
    memory = GuestMemory.from_bytearray(RAM)
    image.apply(memory)
    return entry, bytes(memory.slots[0].buf)


def test_the_forked_image_is_the_in_process_image(tiny_kernel, tmp_path):
    module = tmp_path / "initrd"
    module.write_bytes(b"module payload" * 100)
    cfg = config(tiny_kernel, cpus=2, cmdline="console=ttyS0",
                 modules=[Module(str(module), "initrd args")])
    forked = started(cfg, True)
    assert children(), "start() with fork=True runs a builder process"
    entry, ram = ram_of(forked)
    assert (entry, ram) == ram_of(started(cfg, False))
    assert reaped()

    # What a guest looks for is there: multiboot's registers and information,
    # the kernel at its load address, the module, the ACPI tables (with the
    # DMAR the IOMMU width asked for) and the MP table with its PCI entries.
    assert entry.eax == 0x2BADB002
    assert int.from_bytes(ram[entry.ebx:entry.ebx + 4], "little") & (1 << 3)   # mods
    kernel = tiny_kernel.read_bytes()
    assert ram.find(b"tiny: hello") >= 1 * MiB
    assert b"module payload" * 100 in ram
    assert b"console=ttyS0\0" in ram and b"initrd args\0" in ram
    acpi = ram[layout.ACPI_AREA_START:layout.ACPI_AREA_END]
    assert acpi.startswith(b"RSD PTR ") and b"DMAR" in acpi and b"APIC" in acpi
    assert ram[layout.MPTABLE_AREA_START:layout.MPTABLE_AREA_START + 4] == b"_MP_"
    assert len(kernel) > 0


def test_no_iommu_no_dmar(tiny_kernel):
    _, ram = ram_of(started(config(tiny_kernel), True),
                    DeviceFacts(pci_interrupts=(), dmar_width=None))
    assert b"DMAR" not in ram[layout.ACPI_AREA_START:layout.ACPI_AREA_END]


@pytest.mark.parametrize("fork", [True, False])
def test_a_bad_kernel_is_one_line_for_the_user(tmp_path, fork):
    bad = tmp_path / "not-a-kernel"
    bad.write_bytes(bytes(4096))
    image = started(config(bad), fork)
    with pytest.raises(BootImageError, match="no multiboot header"):
        image.finish(FACTS)
    assert reaped()


def test_a_missing_module_is_reported_by_the_builder(tiny_kernel, tmp_path):
    image = started(config(tiny_kernel, modules=[Module(str(tmp_path / "gone"))]), True)
    with pytest.raises(BootImageError, match="gone: No such file"):
        image.finish(FACTS)


def test_a_missing_kernel_is_reported_at_start(tmp_path):
    image = BootImage.prepare(fork=True)
    with pytest.raises(BootImageError, match="nope: No such file"):
        image.start(config(tmp_path / "nope"))
    image.cancel()              # what `akvm` does after any error
    assert not children()


def test_a_builder_that_crashes_gives_its_traceback(tiny_kernel, monkeypatch):
    def broken(self, facts):
        raise ValueError("table builder bug")
    monkeypatch.setattr(boot_image._Loader, "finish", broken)   # the child inherits it
    image = started(config(tiny_kernel), True)
    with pytest.raises(RuntimeError, match="(?s)builder failed.*ValueError: table builder bug"):
        image.finish(FACTS)


def test_cancel_reaps_the_builder_and_closes_its_pipes(tiny_kernel):
    fds = open_fds()
    image = started(config(tiny_kernel), True)
    assert children()
    image.cancel()
    image.cancel()              # idempotent: build() may meet a failure after finish()
    assert not children()
    assert open_fds() <= fds


def test_without_a_process_to_spare_the_image_is_built_here(tiny_kernel, monkeypatch):
    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")
    fds = open_fds()
    monkeypatch.setattr(os, "fork", no_fork)
    image = started(config(tiny_kernel), True)
    assert not children() and open_fds() <= fds
    monkeypatch.undo()
    assert ram_of(image) == ram_of(started(config(tiny_kernel), False))


def test_a_large_image_is_loaded_in_process(tiny_kernel, tmp_path):
    """Hundreds of MiB of modules through the pipe would cost more than the
    builder saves (and marshal stops at 2 GiB): start() takes the work back."""
    big = tmp_path / "initrd"
    with open(big, "wb") as f:
        f.truncate(PIPE_LIMIT + 1)              # sparse
    cfg = config(tiny_kernel, modules=[Module(str(big))])
    cfg = cfg._replace(memory=2 * PIPE_LIMIT)
    image = BootImage.prepare(fork=True)
    assert children()
    image.start(cfg)
    assert not children()
    entry = image.finish(FACTS)
    memory = GuestMemory.anonymous(cfg.memory)
    image.apply(memory)
    assert entry.eax == 0x2BADB002
    assert memory.read(entry.ebx, 4) != bytes(4)


SIZES = (16 << 20, PCI_HOLE_START, PCI_HOLE_START + (64 << 20))
MEMORY = {size: GuestMemory.anonymous(size) for size in SIZES}     # mapped, never touched


@given(size=st.sampled_from(SIZES), gpa=st.integers(0, FOUR_GIB + (128 << 20)),
       length=st.integers(0, 1 << 30))
def test_ram_writes_know_the_ram_layout(size, gpa, length):
    """The builder checks placements against RAM it does not map: the same answers."""
    assert RamWrites(size).contains(gpa, length) == MEMORY[size].contains(gpa, length)
    assert RamWrites(size).size == MEMORY[size].size
