"""Fixtures shared by the integration tests: a scratch disk image, a console echo peer."""
import os
import socket
import threading
import time

import pytest


@pytest.fixture
def disk(tmp_path):
    """A 1 MiB raw image of random bytes."""
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(1 << 20))
    return path


class Echo(threading.Thread):
    """The far end of a console on a UNIX socket: connects, and sends back what it gets."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.received = b""

    def run(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for _ in range(600):
            try:
                s.connect(str(self.path))
                break
            except OSError:
                time.sleep(0.1)
        else:
            return
        with s:
            while data := s.recv(4096):
                self.received += data
                s.sendall(data)
