"""pytest plugin (entry point `pytest11: akvm`): guest fixtures with the serial log on failure.

    def test_cores(akvm_guest):
        assert "2 cores" in akvm_guest.command("cores")

    @pytest.mark.akvm_guest(cpus=2, memory="1G", args=["--stats"])
    def test_smp(akvm_guest): ...

    @pytest.mark.akvm_guest(snapshot=True, cpus=2, args=["--device", "edu"])
    def test_fast(akvm_guest): ...

`akvm_guest_factory(**kwargs)` starts further guests (any `Guest` argument,
including `vmm="qemu"` and `restore=DIR`). Every guest a test started is
closed afterwards, and when the test fails its whole serial log is attached
to the report.

snapshot=True: the first test with given machine arguments (kernel, cpus,
memory, cmdline, args, prompt) boots the guest, saves it at its prompt and
runs on that guest; every later one gets a new akvm restored from the
snapshot, at the same prompt, in a fraction of a boot. Each test still has a
machine of its own: nothing one does is seen by the next. Snapshots live in
the session's temporary directory and control sockets in a directory of
this process, so under pytest-xdist each worker keeps its own. A writable
disk given in `args` must not change between tests (a restore refuses it):
give it `readonly=on`, or use the factory for tests that write.

`pytest --akaros-ktests KERNEL` runs a kernel built with CONFIG_KERNEL_TESTING
once and reports each of its tests as a pytest item (akvm.testing.ktests).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from akvm.testing import Guest

_GUESTS = pytest.StashKey[list]()
_SNAPSHOTS = pytest.StashKey[dict]()          # machine arguments -> snapshot directory
_SOCKETS = pytest.StashKey[Path]()
# The Guest arguments that make the machine a snapshot holds (timeout does not).
MACHINE_ARGUMENTS = ("kernel", "cpus", "memory", "cmdline", "args", "prompt")


def pytest_addoption(parser):
    from akvm.testing.ktests import add_options
    add_options(parser)


def pytest_configure(config):
    from akvm.testing.ktests import configure
    configure(config)
    config.addinivalue_line("markers", "akvm_guest(**kwargs): options for the akvm_guest "
                                       "fixture (Guest arguments; snapshot=True: boot once, "
                                       "restore for later tests)")


def pytest_unconfigure(config):
    sockets = config.stash.get(_SOCKETS, None)
    if sockets is not None:
        shutil.rmtree(sockets, ignore_errors=True)


def pytest_collect_file(file_path, parent):
    from akvm.testing.ktests import collect
    return collect(file_path, parent)


@pytest.fixture
def akvm_guest_factory(request):
    guests = request.node.stash.setdefault(_GUESTS, [])

    def start(wait_prompt: bool = True, **kwargs) -> Guest:
        guest = Guest(**kwargs)
        guests.append(guest)
        return guest.start(wait_prompt)

    yield start
    for guest in guests:
        guest.close()


@pytest.fixture
def akvm_guest(request, akvm_guest_factory, tmp_path_factory) -> Guest:
    marker = request.node.get_closest_marker("akvm_guest")
    kwargs = dict(marker.kwargs) if marker else {}
    if kwargs.pop("snapshot", False):
        return _from_snapshot(request.config, akvm_guest_factory, tmp_path_factory, kwargs)
    return akvm_guest_factory(**kwargs)


def _from_snapshot(config, factory, tmp_path_factory, kwargs: dict) -> Guest:
    """The guest of snapshot=True: booted and saved the first time, restored after."""
    if kwargs.get("vmm", "akvm") != "akvm":
        pytest.fail("akvm_guest(snapshot=True) is for akvm guests, not vmm='qemu'")
    if kwargs.get("restore"):
        pytest.fail("akvm_guest(snapshot=True) makes its own snapshots: no restore=")
    key = json.dumps({k: str(kwargs.get(k)) for k in MACHINE_ARGUMENTS}, sort_keys=True)
    snapshots = config.stash.setdefault(_SNAPSHOTS, {})
    snap = snapshots.get(key)
    if snap is not None:
        restore = {k: kwargs[k] for k in ("prompt", "timeout") if k in kwargs}
        stats = ["--stats"] if "--stats" in kwargs.get("args", ()) else []
        return factory(restore=snap, args=stats, **restore)
    if _SOCKETS not in config.stash:
        # Short and this process's own: a UNIX socket path has about 100 bytes.
        config.stash[_SOCKETS] = Path(tempfile.mkdtemp(prefix="akvm-pytest-"))
    guest = factory(control=config.stash[_SOCKETS] / f"{len(snapshots)}.sock", **kwargs)
    snap = tmp_path_factory.mktemp("akvm-snapshot") / "snap"
    guest.snapshot(snap)
    snapshots[key] = snap
    return guest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, guest in enumerate(item.stash.get(_GUESTS, [])):
            report.sections.append((f"serial log of guest {i} ({guest.vmm})", guest.serial_log))
