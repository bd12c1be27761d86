"""The bus campaign: tests/integration/test_hostile_bus.py's HostileGuest, run until
it made the operations asked for (accesses to the port and MMIO buses of a machine
with every device kind behind VT-d, not counting its cheap register sweeps), each
run on a fresh machine."""
from __future__ import annotations

import pathlib
import tempfile

from hypothesis import HealthCheck, settings

WHAT = "every bus range of a machine with every device (tests/integration/test_hostile_bus.py)"


def run(ops: int, seed: int | None) -> tuple[int, list[str], str]:
    from tests.integration.test_hostile_bus import HostileGuest
    from tests.kernels import build_tiny
    findings: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        HostileGuest.kernel = str(build_tiny(pathlib.Path(scratch)))
        HostileGuest.accesses = 0
        HostileGuest.by_bus = [0, 0]
        HostileGuest.swept = 0
        HostileGuest.sweep_every = 1000     # most accesses random, sweeps still every run
        case = HostileGuest.TestCase
        case.settings = settings(max_examples=20, stateful_step_count=500, deadline=None,
                                 database=None, suppress_health_check=list(HealthCheck),
                                 derandomize=False)
        while HostileGuest.accesses - HostileGuest.swept < ops and not findings:
            try:
                case("runTest").runTest()
            except Exception as e:     # the shrunk example, as hypothesis reports it
                findings.append(f"{type(e).__name__}: {str(e).splitlines()[0]}")
    pio, mmio = HostileGuest.by_bus
    swept = HostileGuest.swept
    return (HostileGuest.accesses - swept, findings,
            f"and {swept} in register sweeps; {pio} port I/O, {mmio} MMIO in all")
