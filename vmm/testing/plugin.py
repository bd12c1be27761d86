"""pytest plugin (entry point `pytest11: akvm`): guest fixtures with the serial log on failure.

    def test_cores(akvm_guest):
        assert "2 cores" in akvm_guest.command("cores")

    @pytest.mark.akvm_guest(cpus=2, memory="1G", args=["--stats"])
    def test_smp(akvm_guest): ...

`akvm_guest_factory(**kwargs)` starts further guests (any `Guest` argument,
including `vmm="qemu"`). Every guest a test started is closed afterwards, and
when the test fails its whole serial log is attached to the report.
"""
from __future__ import annotations

import pytest

from akvm.testing import Guest

_GUESTS = pytest.StashKey[list]()


def pytest_configure(config):
    config.addinivalue_line("markers", "akvm_guest(**kwargs): options for the akvm_guest fixture")


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
def akvm_guest(request, akvm_guest_factory) -> Guest:
    marker = request.node.get_closest_marker("akvm_guest")
    return akvm_guest_factory(**(marker.kwargs if marker else {}))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, guest in enumerate(item.stash.get(_GUESTS, [])):
            report.sections.append((f"serial log of guest {i} ({guest.vmm})", guest.serial_log))
