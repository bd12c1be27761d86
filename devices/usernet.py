"""net=user: user-mode networking (libslirp), a NIC backend that needs no privileges.

The guest sits on 10.0.2.0/24 behind a virtual router, as under QEMU's
`-nic user`: DHCP gives it 10.0.2.15, the gateway 10.0.2.2 is the host's
loopback (a connection to 10.0.2.2:P reaches 127.0.0.1:P), DNS at
10.0.2.3 forwards to the host's resolver, and the guest's TCP and UDP
leave through ordinary host sockets. `hostfwd` forwards a host port into
the guest (bound to 127.0.0.1 unless an address is given); `restrict=on`
cuts the guest off from everything but its forwards.

libslirp (akvm.devices._slirp, built from devices/slirp_build.py) is not
thread-safe, so each backend has its own thread that owns its Slirp, and
every call into it is made under the engine's lock. That thread runs a
loop in C (the "engine"),
which polls slirp's sockets, a wake eventfd and the descriptors the NIC
asks it to watch, and comes back to Python only when something is
Python's. The thread is also the NIC's worker (`worker`): the NIC's
queue notifications are served on it, so a frame the guest sends goes
to slirp_input() on the same thread, and what slirp sends the guest is
queued in C for the NIC (on_frames()). A NIC with a data path in C
(`set_native()`) is served without Python at all; one that lets its vCPU
run the turn (an `attach` function, devices/nicport.h) has the frames a
vCPU queues sent on that vCPU, slirp's answers placed before the guest
runs again, with no thread to wake, whenever the engine's lock is free
(the vCPU only tries it) and no snapshot holds the thread. Queues are
bounded and drop (counted) when full; otherwise other threads only queue
frames and kick an eventfd, so nothing ever waits for the network.

Same interface as akvm.devices.virtio.netback's backends: send(frame),
recv(), start(worker, on_frames), pause(), resume(), close().
"""
from __future__ import annotations

import collections
import heapq
import importlib
import itertools
import logging
import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass

from akvm.devices.state import HoldBetweenCalls

log = logging.getLogger("akvm.net")

NETWORK = "10.0.2.0"
NETMASK = "255.255.255.0"
GATEWAY = "10.0.2.2"            # the host (its loopback)
DNS = "10.0.2.3"
GUEST = "10.0.2.15"             # the first DHCP address
HOSTNAME = b"akvm"
DEFAULT_HOST_ADDR = "127.0.0.1"

_HOSTFWD = re.compile(r"(tcp|udp):([^:]*):(\d+)-([^:]*):(\d+)")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")


@dataclass(frozen=True)
class HostFwd:
    """host_addr:host_port on the host is forwarded to guest_addr:guest_port in the guest."""
    udp: bool
    host_addr: str
    host_port: int
    guest_addr: str
    guest_port: int

    def __str__(self) -> str:
        return (f"{'udp' if self.udp else 'tcp'}:{self.host_addr}:{self.host_port}-"
                f"{self.guest_addr}:{self.guest_port}")


def parse_hostfwd(text: str) -> HostFwd:
    """'tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT' (QEMU's syntax); HOSTADDR defaults to
    127.0.0.1 (QEMU's is every address), GUESTADDR to the guest's DHCP address."""
    m = _HOSTFWD.fullmatch(text)
    if m is None:
        raise ValueError("expected tcp|udp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT, "
                         "e.g. tcp::5555-:22")
    proto, host, hport, guest, gport = m.groups()
    host, guest = host or DEFAULT_HOST_ADDR, guest or GUEST
    for what, addr in (("host", host), ("guest", guest)):
        if not _IPV4.fullmatch(addr) or not all(int(b) < 256 for b in addr.split(".")):
            raise ValueError(f"{what} address '{addr}' is not an IPv4 address")
    if _ip(guest) & _ip(NETMASK) != _ip(NETWORK):
        raise ValueError(f"guest address {guest} is not in {NETWORK}/24")
    for what, port in (("host", hport), ("guest", gport)):
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"{what} port {port} is not in 1..65535")
    return HostFwd(proto == "udp", host, int(hport), guest, int(gport))


_binding = None
_binding_lock = threading.Lock()


def _load():
    """The libslirp binding with its callbacks bound, or NetBackendError saying what to
    install."""
    global _binding
    from akvm.devices.virtio.netback import NetBackendError
    with _binding_lock:
        if _binding is None:
            try:
                _slirp = importlib.import_module("akvm.devices._slirp")
            except ModuleNotFoundError:
                raise NetBackendError("akvm was built without libslirp: install libslirp-dev "
                                      "(Debian/Ubuntu), then reinstall akvm") from None
            except ImportError as e:
                raise NetBackendError(f"cannot load libslirp ({e}): install libslirp0") from None
            _bind_callbacks(_slirp.ffi)
            _binding = _slirp
        return _binding


def _ip(text: str) -> int:
    return struct.unpack("!I", socket.inet_aton(text))[0]


class _SetupError(Exception):
    """Why the slirp thread could not set up its instance."""


class _Timer:
    __slots__ = ("cb", "cb_opaque", "timer_id", "seq")

    def __init__(self, cb, cb_opaque, timer_id: int):
        self.cb, self.cb_opaque, self.timer_id = cb, cb_opaque, timer_id
        self.seq = -1                   # the heap entry that is current; -1: not armed


class UserBackend:
    """One libslirp instance and the thread that owns it (see the module docstring).

    The thread is also a Worker (akvm.devices.virtio.worker) for the NIC on this
    backend: `watch()`, `unwatch()`, `call()`, so the NIC's Python runs on it,
    next to slirp, and frames between the two need no other thread. A NIC with
    a data path in C hands it over with `set_native()`."""

    def __init__(self, hostfwds: tuple[HostFwd, ...] = (), restrict: bool = False,
                 name: str = "net"):
        self._slirp_mod = _load()
        self.name = name
        self.hostfwds = tuple(hostfwds)
        self.restrict = restrict
        self.sent = self.received = self.dropped = 0
        self.guest_errors = 0
        self._tx: collections.deque[bytes] = collections.deque()    # guest -> slirp, other threads
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._calls: collections.deque = collections.deque()
        self._watched: dict[int, object] = {}         # fd -> callback (Worker.watch)
        self._timers: dict[int, _Timer] = {}
        self._heap: list[tuple[int, int, int]] = []     # (expire ms, seq, timer handle)
        self._seq = itertools.count()
        self._handles = itertools.count(1)
        self._on_frames = None
        self._paused = False
        self._stopping = False
        self._engine = None
        self._native = None                 # (on_python_tx, on_irq, keepalive) with a C data path
        self._final = None                  # the engine's counters when it was freed
        from akvm.devices.virtio.netback import MAX_FRAME
        self._max_frame = MAX_FRAME
        self._queue_limit = self._slirp_mod.lib.AKS_QUEUE
        self._buffer = self._slirp_mod.ffi.new("uint8_t[]", MAX_FRAME)
        self._failure: str | None = None
        self._worker = EngineWorker(self)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-slirp", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            from akvm.devices.virtio.netback import NetBackendError
            self.close()
            raise NetBackendError(self._failure)

    # --- the thread, for the NIC ----------------------------------------------------------

    @property
    def worker(self) -> "EngineWorker":
        """This thread as the NIC's Worker."""
        return self._worker

    @property
    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn) -> None:
        """Run fn on this thread (now, when already on it)."""
        if self.on_thread or not self._thread.is_alive():
            fn()
            return
        self._calls.append(fn)
        self._kick()

    def _watch(self, fd: int, callback) -> None:
        def add():
            self._watched[fd] = callback
            if self._engine is not None and self._slirp_mod.lib.aks_engine_watch(self._engine, fd):
                log.error("%s: too many descriptors to watch", self.name)
        self.call(add)

    def _unwatch(self, fd: int) -> None:
        def remove():
            self._watched.pop(fd, None)
            if self._engine is not None:
                self._slirp_mod.lib.aks_engine_unwatch(self._engine, fd)
        self.call(remove)

    def start(self, worker, on_frames) -> None:
        """on_frames() is called on this thread when frames for the guest are waiting."""
        self._on_frames = on_frames

    def set_native(self, tx, rx, nic, fds: tuple[int, int], on_python_tx, on_irq,
                   keepalive, attach=None) -> None:
        """Serve the NIC's C data path on this thread (devices/nicport.h): tx and rx are
        its functions' addresses, nic its state, fds the eventfds that say "run tx";
        on_python_tx() when it leaves its transmit ring to Python, on_irq() when the
        guest wants an interrupt; attach, its function that lets its vCPUs run the turn
        themselves. tx=None takes it back. Call on this thread."""
        ffi, lib = self._slirp_mod.ffi, self._slirp_mod.lib
        if self._engine is None:
            return
        self._native = None if tx is None else (on_python_tx, on_irq, keepalive)
        pointers = (ffi.NULL if a is None else ffi.cast("void *", a) for a in (tx, rx, nic))
        lib.aks_engine_set_nic(self._engine, *pointers, *fds,
                               ffi.NULL if attach is None else ffi.cast("void *", attach))

    # --- the backend's side --------------------------------------------------------------

    def pause(self) -> None:
        self._paused = True

    def _hold(self, held: bool) -> None:
        """No vCPU runs the NIC's turn while a snapshot holds this thread (held)."""
        if self._engine is not None:
            self._slirp_mod.lib.aks_engine_hold(self._engine, int(held))

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self.call(self._frames_waiting)

    def recv(self) -> bytes | None:
        lib = self._slirp_mod.lib
        if self._engine is None:
            return None
        n = lib.aks_engine_pop(self._engine, self._buffer, self._max_frame)
        if n < 0:
            return None
        self.received += 1
        return bytes(self._slirp_mod.ffi.buffer(self._buffer, min(n, self._max_frame)))

    def send(self, frame: bytes) -> None:
        if self.on_thread and self._engine is not None:
            self._slirp_mod.lib.aks_engine_input(self._engine, frame, len(frame))
            self.sent += 1
            return
        if len(self._tx) >= self._queue_limit or self._wake < 0:
            self.dropped += 1
            return
        was_empty = not self._tx
        self._tx.append(frame)
        if was_empty:
            self._kick()

    def _kick(self) -> None:
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        if self._thread.is_alive():
            self._stopping = True
            self._kick()
            if not self.on_thread:
                self._thread.join(timeout=5)
        if self._wake >= 0 and not self._thread.is_alive():
            os.close(self._wake)
            self._wake = -1

    # --- the thread ----------------------------------------------------------------------

    def _create(self) -> None:
        ffi, lib = self._slirp_mod.ffi, self._slirp_mod.lib
        self._handle = ffi.new_handle(self)         # slirp keeps it: lives as long as we do
        cfg = ffi.new("struct aks_config *")
        cfg.network, cfg.netmask, cfg.host = _ip(NETWORK), _ip(NETMASK), _ip(GATEWAY)
        cfg.dhcp_start, cfg.dns = _ip(GUEST), _ip(DNS)
        cfg.restricted = int(self.restrict)
        hostname = ffi.new("char[]", HOSTNAME)
        cfg.hostname = hostname
        engine = lib.aks_engine_new(cfg, self._wake, self._handle)
        if engine == ffi.NULL:
            raise _SetupError("libslirp refused its configuration")
        self._engine = engine
        slirp = lib.aks_engine_slirp(engine)
        for fwd in self.hostfwds:
            if lib.aks_hostfwd(slirp, int(fwd.udp), _ip(fwd.host_addr), fwd.host_port,
                               _ip(fwd.guest_addr), fwd.guest_port) < 0:
                why = os.strerror(ffi.errno) if ffi.errno else "refused"
                raise _SetupError(f"hostfwd={fwd}: cannot listen on "
                                  f"{fwd.host_addr}:{fwd.host_port}: {why}")

    def _run(self) -> None:
        try:
            self._create()
        except _SetupError as e:
            self._failure = str(e)
        self._ready.set()
        if self._failure is None:
            try:
                self._loop()
            except Exception:               # a bug here: the link goes down, akvm runs on
                log.exception("%s: user networking stopped", self.name)
        if self._engine is not None:
            engine, self._engine = self._engine, None
            lib = self._slirp_mod.lib
            self._final = ([lib.aks_engine_counts(engine, i) for i in range(6)],
                           lib.aks_engine_dropped(engine))      # for --stats at exit
            lib.aks_engine_free(engine)

    def _loop(self) -> None:
        lib, ffi = self._slirp_mod.lib, self._slirp_mod.ffi
        engine = self._engine
        ready = ffi.new("int[]", lib.AKS_WATCH_MAX)
        while not self._stopping:
            events = lib.aks_engine_run(engine, self._timeout_ms())
            if events & lib.AKS_EV_WAKE:
                while self._calls:
                    self._calls.popleft()()
                tx = self._tx
                while tx:
                    frame = tx.popleft()
                    lib.aks_engine_input(engine, frame, len(frame))
                    self.sent += 1
            if events & lib.AKS_EV_FDS:
                for i in range(lib.aks_engine_ready(engine, ready, lib.AKS_WATCH_MAX)):
                    callback = self._watched.get(ready[i])
                    if callback is not None:
                        callback()
            native = self._native
            if native is not None and events & lib.AKS_EV_IRQ:
                native[1]()
            if native is not None and events & lib.AKS_EV_NIC_PYTHON:
                native[0]()
            if events & lib.AKS_EV_FRAMES:
                self._frames_waiting()
            if self._heap:
                self._run_timers()

    def _frames_waiting(self) -> None:
        if not self._paused and self._on_frames is not None:
            self._on_frames()

    def _timeout_ms(self) -> int:
        if not self._heap:
            return -1
        return max(0, self._heap[0][0] - time.monotonic_ns() // 1_000_000)

    def _run_timers(self) -> None:
        lib, ffi = self._slirp_mod.lib, self._slirp_mod.ffi
        now = time.monotonic_ns() // 1_000_000
        while self._heap and self._heap[0][0] <= now:
            _, seq, handle = heapq.heappop(self._heap)
            timer = self._timers.get(handle)
            if timer is None or timer.seq != seq:
                continue                    # freed, or re-armed since
            timer.seq = -1
            lib.aks_timer_fire(self._engine, timer.cb or ffi.NULL, timer.cb_opaque,
                               timer.timer_id)

    # --- callbacks from libslirp (inside a slirp call, under the engine's lock: on the
    # slirp thread, or on a vCPU running the NIC's turn) ------------------------------

    def _guest_error(self, message: str) -> None:
        self.guest_errors += 1
        log.warning("%s: libslirp: %s", self.name, message)

    def _timer_new(self, cb, cb_opaque, timer_id: int) -> int:
        handle = next(self._handles)
        self._timers[handle] = _Timer(cb, cb_opaque, timer_id)
        return handle

    def _timer_free(self, handle: int) -> None:
        self._timers.pop(handle, None)

    def _timer_mod(self, handle: int, expire_ms: int) -> None:
        timer = self._timers.get(handle)
        if timer is not None:
            timer.seq = next(self._seq)
            heapq.heappush(self._heap, (expire_ms, timer.seq, handle))

    @property
    def counts(self) -> tuple[int, int, int, int]:
        """(frames to the network, to the guest by C, to the guest through Python, dropped)."""
        lib, e = self._slirp_mod.lib, self._engine
        if e is None:
            if self._final is None:
                return self.sent, 0, self.received, self.dropped
            (network, by_c, by_python, *_), dropped = self._final
            return network, by_c, by_python, self.dropped + dropped
        return (lib.aks_engine_counts(e, 0), lib.aks_engine_counts(e, 1),
                lib.aks_engine_counts(e, 2), self.dropped + lib.aks_engine_dropped(e))

    @property
    def vcpu_turns(self) -> tuple[int, int, int]:
        """(turns vCPUs ran themselves, how many of them woke this thread, vCPUs that
        found the engine busy and left the turn to it)."""
        lib, e = self._slirp_mod.lib, self._engine
        if e is None:
            return (0, 0, 0) if self._final is None else tuple(self._final[0][3:6])
        return tuple(lib.aks_engine_counts(e, i) for i in (3, 4, 5))


class EngineWorker(HoldBetweenCalls):
    """A UserBackend's thread as a Worker (akvm.devices.virtio.worker) for the NIC on it:
    watch(), unwatch(), call(); pause()/resume() hold it between two turns (a snapshot)."""

    def __init__(self, backend: UserBackend):
        self._backend = backend

    @property
    def on_thread(self) -> bool:
        return self._backend.on_thread

    def watch(self, fd: int, callback) -> None:
        self._backend._watch(fd, callback)

    def unwatch(self, fd: int) -> None:
        self._backend._unwatch(fd)

    def call(self, fn) -> None:
        self._backend.call(fn)

    def pause(self, timeout: float) -> bool:
        """Hold the thread, and keep vCPUs from running the NIC's turn meanwhile: what the
        guest queues stays in the NIC (a snapshot saves it) until resume()."""
        self._backend._hold(True)
        return super().pause(timeout)

    def resume(self) -> None:
        super().resume()
        self._backend._hold(False)

    def start(self) -> None:
        """Running since the backend was made."""

    def stop(self) -> None:
        self.resume()
        self._backend.close()

    def running(self) -> bool:
        return self._backend._thread.is_alive()


def _bind_callbacks(ffi) -> None:
    """libslirp's extern "Python" callbacks: each finds its backend by the handle."""

    @ffi.def_extern()
    def aks_py_guest_error(msg, py):
        ffi.from_handle(py)._guest_error(ffi.string(msg).decode(errors="replace"))

    @ffi.def_extern()
    def aks_py_timer_new(cb, cb_opaque, py):
        return ffi.cast("void *", ffi.from_handle(py)._timer_new(cb, cb_opaque, -1))

    @ffi.def_extern()
    def aks_py_timer_new_opaque(timer_id, cb_opaque, py):
        return ffi.cast("void *", ffi.from_handle(py)._timer_new(None, cb_opaque, timer_id))

    @ffi.def_extern()
    def aks_py_timer_free(timer, py):
        ffi.from_handle(py)._timer_free(int(ffi.cast("uintptr_t", timer)))

    @ffi.def_extern()
    def aks_py_timer_mod(timer, expire_ms, py):
        ffi.from_handle(py)._timer_mod(int(ffi.cast("uintptr_t", timer)), expire_ms)
