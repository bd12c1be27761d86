"""--serial unix:PATH: the console on a listening UNIX stream socket.

Apart from akvm.devices.chardev so that a start without it does not import socket.
"""
from __future__ import annotations

import os
import select
import socket
import threading
from typing import Callable

from akvm.base.hostfiles import bind_private, remove_stale_socket
from akvm.base.outqueue import OutputQueue
from akvm.devices.chardev import CLOSE_FLUSH_S, JOIN_S, READ_CHUNK, Chardev, ChardevError, Sink

OFFLINE_BACKLOG = 64 * 1024


class UnixSocketChardev(Chardev):
    """A listening UNIX stream socket; one client at a time is the console.

    Output goes to the connected client through an OutputQueue, so a client
    that stops reading never blocks the guest or the shutdown; while there is
    none, the last OFFLINE_BACKLOG bytes are kept and sent to the next client,
    so a console attached after boot still sees the banner.
    Further clients wait in the listen backlog until the current one leaves.
    A stale socket file is replaced; a live one (something accepts) or a
    path that is not a socket is refused.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            remove_stale_socket(path)
        except FileExistsError as e:
            raise ChardevError(f"--serial: {path} {e}") from None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bind_private(self._listener, path)        # 0600: only the owner connects
            self._listener.listen(1)
        except OSError as e:
            self._listener.close()
            raise ChardevError(f"--serial: cannot listen on {path}: {e.strerror or e}") from None
        self._inode = os.stat(path).st_ino
        self._client: socket.socket | None = None
        self._out: OutputQueue | None = None    # the client's output
        self._dropped = 0                       # by earlier clients' queues
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._pending = bytearray()  # output while no client is connected
        self.clients = 0            # connections accepted so far


    def start(self, sink: Sink, on_quit: Callable[[], None] | None = None) -> None:
        if self._thread is not None:
            raise ChardevError("unix chardev already started")
        self._thread = threading.Thread(target=self._serve, args=(sink,),
                                        name=f"serial-unix:{self.path}", daemon=True)
        self._thread.start()

    def _serve(self, sink: Sink) -> None:
        while True:
            ready, _, _ = select.select([self._listener, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                self._client = client
                self._out = OutputQueue(
                    client.send, f"serial-unix-output:{self.path}",
                    try_send=lambda data, c=client: c.send(data, socket.MSG_DONTWAIT))
                self.clients += 1
                self._out.put(self._pending)
                self._pending = bytearray()
            self._connected.set()
            if self._pump_client(client, sink):
                return          # close(): it lets the client's output drain, then drops it
            self._drop_client(client)

    def _pump_client(self, client: socket.socket, sink: Sink) -> bool:
        """Deliver the client's bytes until it leaves; True if close() interrupted."""
        while True:
            ready, _, _ = select.select([client, self._wake_r], [], [])
            if self._wake_r in ready:
                return True
            try:
                data = client.recv(READ_CHUNK)
            except OSError:
                data = b""
            if not data:
                return False
            sink(data)

    def _drop_client(self, client: socket.socket) -> None:
        with self._lock:
            if self._client is client:
                self._detach()
            client.close()

    def _detach(self) -> None:
        """Forget the client: its queue's output is dropped. Caller holds _lock."""
        if self._out is not None:
            self._out.close(0)
            self._dropped += self._out.dropped
            self._out = None
        self._client = None
        self._connected.clear()

    def wait_for_client(self, timeout: float | None = None) -> bool:
        """Block until a client is connected (for tests and scripted consoles)."""
        return self._connected.wait(timeout)

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._out is None:
                self._pending += data
                del self._pending[:-OFFLINE_BACKLOG]
            else:
                self._out.put(data)    # a vanished client: dropped; the serve thread notices EOF

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped + (self._out.dropped if self._out is not None else 0)

    def close(self) -> None:
        if self._wake_w < 0:
            return
        os.write(self._wake_w, b"x")
        with self._lock:
            out, client = self._out, self._client
        if out is not None:
            out.close(CLOSE_FLUSH_S)
        if client is not None:
            try:
                client.shutdown(socket.SHUT_RDWR)   # unblocks its queue's thread in send()
            except OSError:
                pass
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout=JOIN_S)
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._detach()
        self._listener.close()
        os.close(self._wake_w)
        os.close(self._wake_r)
        self._wake_w = self._wake_r = -1
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)    # only our own socket, not a successor's
        except FileNotFoundError:
            pass
