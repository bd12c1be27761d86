"""The GDB stub's socket: one client at a time, served from one thread with poll().

A client that connects stops the machine (unless --gdb-wait already holds
it); one that detaches, disconnects or stops answering leaves the machine
running, its breakpoints removed. A second client is refused (its
connection closed) while one is attached. Plain sockets, a pipe and
poll(): nothing a seccomp filter would have to make room for beyond them.
"""
from __future__ import annotations

import logging
import os
import select
import socket
import threading

from akvm.base.errors import ConfigError
from akvm.gdb.packets import BadChecksum, Interrupt, Nak, Packet, PacketReader, TooLong, frame
from akvm.gdb.session import E_BAD, Session
from akvm.gdb.target import MachineTarget

log = logging.getLogger("akvm.gdb")

SEND_TIMEOUT = 10.0       # a client that reads nothing for this long is dropped
POLL_INTERVAL = 0.25      # how often the machine's end is noticed
CLOSE_GRACE = 0.25        # at close, how long a reply being sent may take
CLOSE_WAIT = 0.5          # and then how long the thread may take to notice the cut


def listen(host: str, port: int) -> socket.socket:
    """The listening socket (before the machine is built: a busy port is a usage error)."""
    where = f"--gdb tcp:{host}:{port}"
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ConfigError(f"{where}: {e.strerror}") from None
    try:
        return socket.create_server(address[:2], family=family, backlog=1)
    except OSError as e:
        raise ConfigError(f"{where}: {os.strerror(e.errno) if e.errno else e}") from None


class GdbServer:
    def __init__(self, machine, listener: socket.socket, wait: bool = False):
        self.target = MachineTarget(machine)
        if wait:
            self.target.hold()
        self.listener = listener
        self.address = listener.getsockname()[:2]
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name="gdb", daemon=True)
        self._client: socket.socket | None = None
        self._session: Session | None = None
        self._reader = PacketReader()
        self._last_sent = b""

    def start(self) -> "GdbServer":
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving (the machine has ended). The thread gets CLOSE_GRACE to send
        what it is sending (the OK to a kill that ended the machine); a send still
        blocked then, on a client that reads nothing, is cut short by shutting its
        socket down, so this returns within CLOSE_GRACE + CLOSE_WAIT."""
        os.write(self._stop_w, b".")
        self._thread.join(timeout=CLOSE_GRACE)
        client = self._client
        if client is not None and self._thread.is_alive():
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass                      # already closed by the thread
        self._thread.join(timeout=CLOSE_WAIT)
        self.listener.close()
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
        self.target.close()

    # --- the loop ----------------------------------------------------------------------

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ended = self.target.ended()
            if ended is not None and self._client is not None:
                if self._session.running:
                    self._reply(self._session.stopped(ended))
                self._drop_client(detach=False)
            events = dict(poller.poll(POLL_INTERVAL * 1000))
            if self._stop_r in events:
                if self._client is not None:
                    self._drop_client(detach=False)
                return
            if self.listener.fileno() in events:
                self._accept(poller)
            client = self._client
            if client is not None and client.fileno() in events:
                self._receive(poller)
            if self.target.wake_fd in events and self._session is not None:
                stop = self.target.poll()
                if stop is not None and self._session.running:
                    self._reply(self._session.stopped(stop))

    def _accept(self, poller) -> None:
        try:
            conn, peer = self.listener.accept()
        except OSError:
            return
        if self._client is not None or self.target.ended() is not None:
            log.warning("refused %s: a debugger is attached already", peer)
            conn.close()
            return
        conn.settimeout(SEND_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("%s attached", peer)
        self._client, self._reader, self._last_sent = conn, PacketReader(), b""
        self._session = Session(self.target, self.target.attach())
        poller.register(conn, select.POLLIN)
        poller.register(self.target.wake_fd, select.POLLIN)
        self._poller = poller

    def _receive(self, poller) -> None:
        try:
            data = self._client.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop_client(detach=True)
            return
        for event in self._reader.feed(data):
            if self._client is None:
                return
            self._event(event)

    def _event(self, event) -> None:
        session = self._session
        if isinstance(event, Packet):
            if session.ack:
                self._send(b"+", remember=False)
            reply = session.handle(event.data)
            if reply is not None:
                self._reply(reply)
            if session.detached or session.killed:
                self._drop_client(detach=False)
        elif isinstance(event, BadChecksum):
            if session.ack:
                self._send(b"-", remember=False)
        elif isinstance(event, TooLong):
            if session.ack:
                self._send(b"+", remember=False)
            self._send(frame(E_BAD))
        elif isinstance(event, Interrupt):
            if session.running:
                self._reply(session.interrupted())
        elif isinstance(event, Nak):
            if session.ack and self._last_sent:
                self._send(self._last_sent)

    def _reply(self, packet: bytes) -> None:
        """A reply, after any console output the session has for GDB (O packets)."""
        self._send(b"".join(frame(p) for p in self._session.take_output()) + frame(packet))

    def _send(self, data: bytes, remember: bool = True) -> None:
        if self._client is None:
            return
        if remember:
            self._last_sent = data
        try:
            self._client.sendall(data)
        except OSError as e:
            log.warning("client lost (%s)", e)
            self._drop_client(detach=True)

    def _drop_client(self, detach: bool) -> None:
        """The client is gone: the machine runs on without breakpoints."""
        client, session = self._client, self._session
        self._client = self._session = None
        if client is None:
            return
        try:
            self._poller.unregister(client)
            self._poller.unregister(self.target.wake_fd)
        except (KeyError, ValueError):
            pass
        client.close()
        if detach and not session.detached and not session.killed and self.target.ended() is None:
            self.target.detach()
        log.info("client detached")
