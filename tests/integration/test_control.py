"""--control unix:PATH: the JSON command socket, against the bundled guest under KVM."""
import json
import os
import socket
import stat
import time

import pytest

from tests.conftest import needs_kvm
from tests.unit.test_cli import akvm, assert_one_line_error
from akvm.testing import ControlClient, GuestError

pytestmark = needs_kvm

TIMEOUT = 120


@pytest.fixture
def controlled(akvm_guest_factory, tmp_path):
    """The guest with a control socket, and a connected client."""
    path = tmp_path / "control.sock"
    guest = akvm_guest_factory(cpus=2, args=["--control", f"unix:{path}", "--stats"],
                               timeout=TIMEOUT)
    client = ControlClient(path)
    yield guest, client, path
    client.close()


def raw_lines(path, *lines: bytes) -> list[dict]:
    """Send raw lines on a fresh connection; the replies, greeting first."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        f = s.makefile("rb")
        out = [json.loads(f.readline())]
        for line in lines:
            s.sendall(line + b"\n")
            out.append(json.loads(f.readline()))
        return out


def test_status_stop_cont_and_the_guest_really_stops(controlled):
    guest, client, path = controlled
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "QMP" in client.greeting
    assert client.execute("query-status") == {"status": "running", "running": True}
    assert client.execute("stop") == {}
    assert client.wait_event("stop", timeout=10)["data"] == {}
    assert client.execute("query-status") == {"status": "paused", "running": False}
    guest.send("kerninfo\r")                  # typed while stopped: nobody answers
    with pytest.raises(GuestError):
        guest.expect(guest.prompt, timeout=1.0)
    assert client.execute("cont") == {}
    client.wait_event("resume", timeout=10)
    guest.expect(guest.prompt)                # now it does
    assert "TSC" in guest.child.before.decode(errors="replace")
    assert client.execute("query-status")["running"] is True


def test_bad_input_gets_an_error_and_changes_nothing(controlled):
    guest, client, path = controlled
    replies = raw_lines(path, b"this is not json", b"[1, 2]", b'{"execute": "no-such"}',
                        b'{"execute": "stop", "arguments": 5}',
                        b'{"execute": "snapshot-save", "arguments": {"file": "x"}}',
                        b'{"execute": "query-status", "id": "abc"}', b"\xff\xfe",
                        b'{"execute": "snapshot-save", "arguments": {"path": "/proc/no"}}')
    assert "JSON parse error" in replies[1]["error"]["desc"]
    assert replies[2]["error"]["class"] == "GenericError"
    assert replies[3]["error"] == {"class": "CommandNotFound",
                                   "desc": "The command no-such has not been found"}
    assert "arguments" in replies[4]["error"]["desc"]
    assert "expected arguments ['path']" in replies[5]["error"]["desc"]
    assert replies[6] == {"return": {"status": "running", "running": True}, "id": "abc"}
    assert "error" in replies[7]
    assert replies[8]["error"]["desc"].startswith("snapshot-save: snapshot /proc/no:")
    assert "cores online" in guest.command("cores")


def test_query_stats_is_what_stats_prints(controlled):
    guest, client, path = controlled
    guest.command("pci")
    stats = client.execute("query-stats")
    assert stats["com1"]["tx_bytes"] > 0 and len(stats["vcpus"]) == 2
    assert stats["vcpus"][0]["exits"] and stats["buses"]["pio"]["accesses_in_python"] > 0
    guest.close()
    # --stats at exit prints the same counters, rendered from the same dict.
    assert "  vcpu1 exits:" in guest.serial_log and "pci config in C:" in guest.serial_log


def test_a_client_that_never_reads_blocks_nothing(controlled):
    guest, client, path = controlled
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(str(path))
    hog.setblocking(False)
    request = b'{"execute": "query-stats"}\n' * 200
    dropped = False
    deadline = time.monotonic() + 30
    while not dropped and time.monotonic() < deadline:    # replies it never reads pile up
        try:
            hog.send(request)
        except BlockingIOError:
            time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
    assert dropped                            # akvm let it go rather than buffer forever
    lazy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)   # unread, but under the limit
    lazy.connect(str(path))
    lazy.sendall(b'{"execute": "query-stats"}\n' * 300)
    assert "cores online" in guest.command("cores")
    assert client.execute("query-status")["running"] is True
    start = time.monotonic()
    client.execute("quit")
    assert client.wait_event("powered-off", timeout=10)["data"]["status"] == 0
    assert guest.wait_exit(timeout=10) == 0
    assert time.monotonic() - start < 5
    hog.close()
    lazy.close()


def test_quit_replies_then_powers_off(controlled):
    guest, client, path = controlled
    assert client.execute("quit") == {}
    event = client.wait_event("powered-off", timeout=10)
    assert event["data"] == {"status": 0, "reason": "quit (control socket)"}
    assert set(event["timestamp"]) == {"seconds", "microseconds"}
    assert guest.wait_exit(timeout=15) == 0
    assert "akvm: quit (control socket)" in guest.serial_log
    assert not path.exists()


def test_bad_control_options(tiny_kernel, tmp_path):
    assert_one_line_error(akvm("run", "--kernel", str(tiny_kernel), "--control", "tcp:1234"),
                          "expected unix:PATH")
    regular = tmp_path / "file"
    regular.write_text("x")
    assert_one_line_error(akvm("run", "--kernel", str(tiny_kernel), "--control", f"unix:{regular}"),
                          "is not a socket")
    assert_one_line_error(akvm("run", "--kernel", str(tiny_kernel), "--control",
                               f"unix:{tmp_path}/no/such/dir/s"), "cannot listen")
