"""The seccomp filter akvm runs under once its VM is built (akvm.base.sandbox).

Every integration test runs akvm with the filter on (the default), so the suite is
what shows it allows all a run needs. Here: what it denies, from a device's own
thread and from the main thread, and that what it allows still works there.
"""
import json
import subprocess
import sys

from tests.conftest import needs_kvm

pytestmark = needs_kvm

CHILD = r'''
import errno, json, os, socket, sys, threading
from akvm.config import MachineConfig
from akvm.devicetable import parse_device
from akvm.machine import Machine
from akvm.base import sandbox

machine = Machine.build(MachineConfig(kernel=sys.argv[1], serial="none",
                                      devices=[parse_device("virtio-rng")]))
if sys.argv[2] == "on":
    sandbox.apply()
device = machine.virtio_devices[0]
device.start()

def attempt(call):
    try:
        call()
        return "allowed"
    except OSError as e:
        return errno.errorcode[e.errno]

def exec_true():
    os.execv("/nonexistent/akvm-probe", ["probe"])    # refused before the path is looked at

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

def thread():
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()

def probes():
    return {
        "execve": attempt(exec_true),
        "fork": attempt(fork),
        "kill another process": attempt(lambda: os.kill(1, 0)),
        "netlink socket": attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()),
        "thread": attempt(thread),
        "file": attempt(lambda: os.close(os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT, 0o600))),
        "unix socket": attempt(lambda: socket.socket(socket.AF_UNIX).close()),
        "tcp socket": attempt(lambda: socket.socket(socket.AF_INET6).close()),
    }

done = threading.Event()
result = {}
def on_device_thread():
    result["device thread"] = (threading.current_thread().name, probes())
    done.set()
device.worker.call(on_device_thread)
assert done.wait(10)
result["main thread"] = probes()
machine.close()
print(json.dumps(result))
'''

DENIED = {"execve", "fork", "kill another process", "netlink socket"}
ALLOWED = {"thread", "file", "unix socket", "tcp socket"}


def probe(tiny_kernel, tmp_path, mode):
    r = subprocess.run([sys.executable, "-c", CHILD, str(tiny_kernel), mode,
                        str(tmp_path / "file")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_forbidden_calls_are_denied_on_a_device_thread(tiny_kernel, tmp_path):
    result = probe(tiny_kernel, tmp_path, "on")
    name, on_device = result["device thread"]
    assert name == "virtio-rng0"                       # the device's own thread
    for probes in (on_device, result["main thread"]):
        assert {k: probes[k] for k in DENIED} == {k: "EPERM" for k in DENIED}
        assert {k: probes[k] for k in ALLOWED} == {k: "allowed" for k in ALLOWED}


def test_without_the_filter_they_are_not(tiny_kernel, tmp_path):
    """The same probes without the filter: the denials above are the filter's."""
    name, on_device = probe(tiny_kernel, tmp_path, "off")["device thread"]
    assert on_device["fork"] == on_device["netlink socket"] == "allowed"
    assert on_device["execve"] == "ENOENT"


def test_sandbox_off_on_the_command_line(tiny_kernel):
    r = subprocess.run([sys.executable, "-m", "akvm", "run", "--kernel", str(tiny_kernel),
                        "--cmdline", "p", "--sandbox", "off"], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == b"tiny: hello, cmdline=p\n"


def test_a_missing_libseccomp_is_one_line_and_no_run(tiny_kernel):
    """A host without libseccomp: one line naming the way out, exit 2, the guest never runs."""
    child = ("import sys; from akvm.base import sandbox; from akvm.__main__ import main; "
             "sandbox.LIBSECCOMP = 'libseccomp-absent.so.2'; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", child, "run", "--kernel", str(tiny_kernel),
                        "--cmdline", "p"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "akvm: error: --sandbox: cannot load the system-call filter (libseccomp-absent.so.2: "
        "cannot open shared object file: No such file or directory); --sandbox off runs "
        "without it"]
