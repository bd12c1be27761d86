"""@pytest.mark.akvm_guest(snapshot=True): the first test with given machine arguments
boots and saves, later ones restore; each test gets a machine of its own; under
pytest-xdist every worker keeps its own snapshots and sockets. Through pytester."""
import pytest

from tests.conftest import needs_kvm

pytest_plugins = ["pytester"]
pytestmark = needs_kvm

SUITE = '''
import os
import pytest

def record(guest):
    with open(os.environ["AKVM_TEST_LOG"], "a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} "
                f"{guest.cpus if not guest.restore else 'restored'} {guest.restore or '-'}\\n")

@pytest.mark.akvm_guest(snapshot=True, cpus=2, args=["--device", "edu"])
@pytest.mark.parametrize("i", range(4))
def test_two_cores(akvm_guest, i):
    record(akvm_guest)
    assert "2 cores online" in akvm_guest.command("cores")
    # A machine of its own: every test's first process gets the same pid.
    assert "pid 2 (hello): exit status 0" in akvm_guest.command("run hello")

@pytest.mark.akvm_guest(snapshot=True)
@pytest.mark.parametrize("i", range(2))
def test_one_core(akvm_guest, i):
    record(akvm_guest)
    assert "1 cores online" in akvm_guest.command("cores")
'''


def boots_and_restores(log) -> tuple[dict, dict]:
    boots, restores = {}, {}
    for line in log.read_text().splitlines():
        worker, kind, _ = line.split()
        counter = restores if kind == "restored" else boots
        counter[worker] = counter.get(worker, 0) + 1
    return boots, restores


def test_first_boots_later_restore(pytester, monkeypatch):
    log = pytester.path / "log.txt"
    monkeypatch.setenv("AKVM_TEST_LOG", str(log))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)   # when this suite runs under -n
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess("-p", "no:xdist", timeout=300)
    result.assert_outcomes(passed=6)
    boots, restores = boots_and_restores(log)
    assert boots == {"main": 2} and restores == {"main": 4}   # one boot per machine


def test_under_xdist_each_worker_keeps_its_own(pytester, monkeypatch):
    pytest.importorskip("xdist")
    log = pytester.path / "log.txt"
    monkeypatch.setenv("AKVM_TEST_LOG", str(log))
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", timeout=300)
    result.assert_outcomes(passed=6)
    boots, restores = boots_and_restores(log)
    assert sum(boots.values()) + sum(restores.values()) == 6
    assert set(boots) <= {"gw0", "gw1"} and sum(boots.values()) <= 4
    for line in log.read_text().splitlines():   # a worker restores only its own snapshots
        worker, kind, snapshot = line.split()
        assert kind != "restored" or f"popen-{worker}" in snapshot, line
