"""--control unix:PATH: a running akvm driven over a UNIX socket, in QMP's shape.

Newline-delimited JSON. A client gets a greeting, then sends commands

    {"execute": "query-status"}
    {"execute": "snapshot-save", "arguments": {"path": "/tmp/snap"}, "id": 7}

and gets one reply line each, in order: {"return": ...} or {"error": {"class":
..., "desc": ...}}, with the command's "id" echoed. Events arrive as
{"event": NAME, "data": {...}, "timestamp": {"seconds": S, "microseconds": U}}
lines: "stop" and "resume" (the vCPUs paused or running again: `stop`/`cont`,
a snapshot), and how the run ended: "powered-off", "reset" or "guest-error".

One thread serves every client with non-blocking sockets. What a client has
not read waits in a bounded buffer; a client that lets it overflow is
disconnected, so a client that never reads cannot hold up the VM, the other
clients or shutdown. Bad input (not JSON, not an object, an unknown command,
wrong arguments) gets an error reply and changes nothing.
"""
from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import threading
import time

from akvm import __version__
from akvm.base.errors import ConfigError
from akvm.base.hostfiles import bind_private, remove_stale_socket

log = logging.getLogger("akvm.control")

MAX_LINE = 64 * 1024            # a longer command line is refused and the client dropped
MAX_PENDING = 1 << 20           # unread output a client may leave before it is dropped
LINGER_S = 0.2                  # at close, how long unsent output may still go out
CLOSE_MARGIN_S = 0.3            # and how much longer the thread may take to end


class ControlError(ConfigError):
    """--control given wrongly, or its socket cannot be made (exit status 2)."""


class CommandError(Exception):
    """A command that cannot be done: its reply is {"error": {"class": cls, "desc": ...}}."""

    def __init__(self, desc: str, cls: str = "GenericError"):
        super().__init__(desc)
        self.cls = cls


def parse_control(text: str) -> str:
    """'unix:PATH' -> PATH."""
    kind, _, path = text.partition(":")
    if kind != "unix" or not path:
        raise ControlError(f"--control: expected unix:PATH, got '{text}'")
    return path


class _Client:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()


class ControlServer:
    """The listening socket (mode 0600) and the thread that serves it."""

    def __init__(self, path: str):
        self.path = path
        try:
            remove_stale_socket(path)
        except FileExistsError as e:
            raise ControlError(f"--control: {path} {e}") from None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bind_private(self._listener, path)
            self._listener.listen(8)
        except OSError as e:
            self._listener.close()
            raise ControlError(f"--control: cannot listen on {path}: {e.strerror or e}") from None
        self._listener.setblocking(False)
        self._inode = os.stat(path).st_ino
        self.machine = None
        self._lock = threading.Lock()            # clients' output buffers
        self._clients: dict[int, _Client] = {}
        self._selector = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake, selectors.EVENT_READ, "wake")
        self._thread: threading.Thread | None = None
        self._closing = False
        self._stopped_by_us = False              # `stop` holds one Machine.pause()
        self._after_reply = None                 # what a command does once its reply is queued


    # --- lifecycle ------------------------------------------------------------

    def start(self, machine) -> None:
        """Serve `machine` (an akvm.machine.Machine) from now on."""
        self.machine = machine
        machine.listeners.append(self.event)
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving: what clients have not read gets LINGER_S to go out, then every
        socket is closed and the socket file removed."""
        if self._closing:
            return
        self._closing = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join(LINGER_S + CLOSE_MARGIN_S)
        else:
            self._shutdown()

    def _shutdown(self) -> None:
        self._closing = True                     # also after an internal error: close() is done
        deadline = time.monotonic() + LINGER_S
        for client in list(self._clients.values()):
            while client.outbuf and time.monotonic() < deadline and self._flush(client):
                if client.outbuf:
                    time.sleep(0.005)
            self._drop(client)
        self._selector.close()
        self._listener.close()
        os.close(self._wake)
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    # --- the thread -------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._closing:
                for key, events in self._selector.select():
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        try:
                            os.eventfd_read(self._wake)
                        except BlockingIOError:
                            pass
                    else:
                        client = self._clients.get(key.fd)
                        if client is None:
                            continue
                        if events & selectors.EVENT_READ:
                            self._read(client)
                        if client.sock.fileno() in self._clients and events & selectors.EVENT_WRITE:
                            self._flush(client)
                    if self._closing:
                        break
                self._update_interest()
        except Exception:                        # never take akvm down from here
            log.exception("control: internal error; the control socket is closed")
        finally:
            self._shutdown()

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        client = _Client(sock)
        self._clients[sock.fileno()] = client
        self._selector.register(sock, selectors.EVENT_READ, "client")
        self._send(client, {"QMP": {"version": {"akvm": __version__}, "capabilities": []}})

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if self._clients.pop(fd, None) is not None:
            self._selector.unregister(client.sock)
            client.sock.close()

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.inbuf += data
        while (end := client.inbuf.find(b"\n")) >= 0:
            line = bytes(client.inbuf[:end])
            del client.inbuf[:end + 1]
            if line.strip():
                self._send(client, self.handle_line(line))
                after, self._after_reply = self._after_reply, None
                if after is not None:
                    after()
            if client.sock.fileno() not in self._clients:
                return
        if len(client.inbuf) > MAX_LINE:
            self._send(client, _error(f"command longer than {MAX_LINE} bytes"))
            self._flush(client)
            self._drop(client)

    def _update_interest(self) -> None:
        for client in list(self._clients.values()):
            with self._lock:
                overflowed = client.outbuf is None
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0)
            if overflowed:
                log.info("control: a client stopped reading; disconnected")
                self._drop(client)
            else:
                self._selector.modify(client.sock, events, "client")

    def _send(self, client: _Client, message: dict) -> None:
        """Queue a line for the client (any thread); one that lets too much pile up is
        disconnected by the serving thread."""
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if len(client.outbuf) + len(line) > MAX_PENDING:
                client.outbuf = None          # marks it for dropping
            elif client.outbuf is not None:
                client.outbuf += line
        if threading.current_thread() is self._thread:
            self._flush(client)
        else:
            try:
                os.eventfd_write(self._wake, 1)
            except OSError:                   # closed meanwhile: nobody to send to
                pass

    def _flush(self, client: _Client) -> bool:
        """Send what the socket takes now; False when the client is gone."""
        with self._lock:
            if client.outbuf is None:
                overflowed = True
            else:
                overflowed = False
                try:
                    sent = client.sock.send(client.outbuf)
                    del client.outbuf[:sent]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    overflowed = True
        if overflowed:
            self._drop(client)
            return False
        return True

    def event(self, name: str, data: dict) -> None:
        """A Machine listener: send the event to every client (any thread, never blocks)."""
        now = time.time()
        message = {"event": name, "data": data,
                   "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}}
        for client in list(self._clients.values()):
            self._send(client, message)

    # --- commands -----------------------------------------------------------------

    def handle_line(self, line: bytes) -> dict:
        """One command line -> its reply."""
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, ValueError) as e:
            return _error(f"JSON parse error: {e}")
        if not isinstance(request, dict) or not isinstance(request.get("execute"), str):
            return _error('expected an object {"execute": NAME, "arguments": {...}}')
        arguments = request.get("arguments", {})
        reply: dict
        if not isinstance(arguments, dict):
            reply = _error("'arguments' must be an object")
        else:
            try:
                reply = {"return": self.execute(request["execute"], arguments)}
            except CommandError as e:
                reply = _error(str(e), e.cls)
            except Exception as e:               # a bug in akvm: the socket stays up
                log.exception("control: %s failed", request["execute"])
                reply = _error(f"internal error: {e!r}")
        if "id" in request:
            reply["id"] = request["id"]
        return reply

    def execute(self, name: str, arguments: dict):
        command = COMMANDS.get(name)
        if command is None:
            raise CommandError(f"The command {name} has not been found", "CommandNotFound")
        expected = command.__code__.co_varnames[2:command.__code__.co_argcount]
        unknown = set(arguments) - set(expected)
        missing = [a for a in expected if a not in arguments]
        if unknown or missing:
            raise CommandError(f"{name}: expected arguments {list(expected) or 'none'}, "
                               f"got {sorted(arguments) or 'none'}")
        return command(self, self.machine, **arguments)

    def _qmp_capabilities(self, machine) -> dict:
        return {}

    def _query_status(self, machine) -> dict:
        if machine.result is not None:
            return {"status": "shutdown", "running": False}
        return {"status": "paused" if machine.paused else "running", "running": not machine.paused}

    def _stop(self, machine) -> dict:
        if not self._stopped_by_us:
            try:
                machine.pause()
            except RuntimeError as e:              # PauseError
                raise CommandError(str(e)) from None
            self._stopped_by_us = True
        return {}

    def _cont(self, machine) -> dict:
        if self._stopped_by_us:
            self._stopped_by_us = False
            machine.resume()
        return {}

    def _quit(self, machine) -> dict:
        self._after_reply = lambda: machine.quit("quit (control socket)")
        return {}

    def _query_stats(self, machine) -> dict:
        return machine.stats()

    def _snapshot_save(self, machine, path) -> dict:
        if not isinstance(path, str) or not path:
            raise CommandError("snapshot-save: 'path' must be a directory name")
        from akvm.snapshot import SnapshotError   # the machine imports it anyway to save
        try:
            return machine.save_snapshot(path)
        except (SnapshotError, RuntimeError, OSError) as e:
            raise CommandError(f"snapshot-save: {e}") from None


COMMANDS = {
    "qmp_capabilities": ControlServer._qmp_capabilities,
    "query-status": ControlServer._query_status,
    "stop": ControlServer._stop,
    "cont": ControlServer._cont,
    "quit": ControlServer._quit,
    "query-stats": ControlServer._query_stats,
    "snapshot-save": ControlServer._snapshot_save,
}


def _error(desc: str, cls: str = "GenericError") -> dict:
    return {"error": {"class": cls, "desc": desc}}
