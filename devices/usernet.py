"""net=user: user-mode networking (libslirp), a NIC backend that needs no privileges.

The guest sits on 10.0.2.0/24 behind a virtual router, as under QEMU's
`-nic user`: DHCP gives it 10.0.2.15, the gateway 10.0.2.2 is the host's
loopback (a connection to 10.0.2.2:P reaches 127.0.0.1:P), DNS at
10.0.2.3 forwards to the host's resolver, and the guest's TCP and UDP
leave through ordinary host sockets. `hostfwd` forwards a host port into
the guest (bound to 127.0.0.1 unless an address is given); `restrict=on`
cuts the guest off from everything but its forwards.

libslirp (akvm.devices._slirp, built from devices/slirp_build.py) is not
thread-safe, so each backend has its own thread that owns its Slirp and
makes every call into it: it polls slirp's sockets and an eventfd in C,
feeds slirp the frames the guest sent (queued by the NIC's thread and
kicked through that eventfd) and runs slirp's timers. Frames slirp sends
to the guest are queued for the NIC, whose thread is woken by another
eventfd: neither side ever waits for the other, and a queue that is full
drops the frame (counted), as a wire would.

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


log = logging.getLogger("akvm.net")

NETWORK = "10.0.2.0"
NETMASK = "255.255.255.0"
GATEWAY = "10.0.2.2"            # the host (its loopback)
DNS = "10.0.2.3"
GUEST = "10.0.2.15"             # the first DHCP address
HOSTNAME = b"akvm"
DEFAULT_HOST_ADDR = "127.0.0.1"
QUEUE_LIMIT = 1024              # frames waiting in either direction before they are dropped
IDLE_POLL_MS = 1000

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
    """One libslirp instance on its own thread (see the module docstring)."""

    def __init__(self, hostfwds: tuple[HostFwd, ...] = (), restrict: bool = False,
                 name: str = "net"):
        self._slirp_mod = _load()
        from akvm.devices.virtio.worker import new_eventfd
        self.name = name
        self.hostfwds = tuple(hostfwds)
        self.restrict = restrict
        self.sent = self.received = self.dropped = 0
        self.guest_errors = 0
        self._tx: collections.deque[bytes] = collections.deque()    # guest -> slirp
        self._rx: collections.deque[bytes] = collections.deque()    # slirp -> guest
        self._wake = new_eventfd()          # slirp thread: frames or calls for it
        self._rx_event = new_eventfd()      # NIC thread: frames for the guest
        self._calls: collections.deque = collections.deque()
        self._timers: dict[int, _Timer] = {}
        self._heap: list[tuple[int, int, int]] = []     # (expire ms, seq, timer handle)
        self._seq = itertools.count()
        self._handles = itertools.count(1)
        self._worker = None
        self._on_frames = None
        self._paused = False
        self._stopping = False
        self._slirp = None
        self._failure: str | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-slirp", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            from akvm.devices.virtio.netback import NetBackendError
            self.close()
            raise NetBackendError(self._failure)

    # --- the NIC's side (its thread) ---------------------------------------------------

    def start(self, worker, on_frames) -> None:
        self._worker, self._on_frames = worker, on_frames
        self._watch()

    def _watch(self) -> None:
        if self._worker is not None and not self._paused and self._rx_event >= 0:
            self._worker.watch(self._rx_event, self._frames_ready)

    def _frames_ready(self) -> None:
        try:
            os.eventfd_read(self._rx_event)
        except BlockingIOError:
            pass
        self._on_frames()

    def pause(self) -> None:
        self._paused = True
        if self._worker is not None and self._rx_event >= 0:
            self._worker.unwatch(self._rx_event)

    def resume(self) -> None:
        self._paused = False
        self._watch()

    def recv(self) -> bytes | None:
        try:
            frame = self._rx.popleft()
        except IndexError:
            return None
        self.received += 1
        return frame

    def send(self, frame: bytes) -> None:
        if len(self._tx) >= QUEUE_LIMIT or self._wake < 0:
            self.dropped += 1
            return
        was_empty = not self._tx
        self._tx.append(frame)
        if was_empty:
            os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        if self._thread.is_alive():
            self._stopping = True
            os.eventfd_write(self._wake, 1)
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=5)
        if self._worker is not None and self._rx_event >= 0:
            self._worker.unwatch(self._rx_event)
        for fd in (self._wake, self._rx_event):
            if fd >= 0:
                os.close(fd)
        self._wake = self._rx_event = -1

    # --- the slirp thread ---------------------------------------------------------------

    def _create(self) -> None:
        ffi, lib = self._slirp_mod.ffi, self._slirp_mod.lib
        self._handle = ffi.new_handle(self)         # slirp keeps it: lives as long as we do
        cfg = ffi.new("struct aks_config *")
        cfg.network, cfg.netmask, cfg.host = _ip(NETWORK), _ip(NETMASK), _ip(GATEWAY)
        cfg.dhcp_start, cfg.dns = _ip(GUEST), _ip(DNS)
        cfg.restricted = int(self.restrict)
        hostname = ffi.new("char[]", HOSTNAME)
        cfg.hostname = hostname
        slirp = lib.aks_new(cfg, self._handle)
        if slirp == ffi.NULL:
            raise _SetupError("libslirp refused its configuration")
        self._slirp = slirp
        self._poller = lib.aks_poller_new()
        if self._poller == ffi.NULL:
            raise _SetupError("out of memory")
        for fwd in self.hostfwds:
            if lib.aks_hostfwd(slirp, int(fwd.udp), _ip(fwd.host_addr), fwd.host_port,
                               _ip(fwd.guest_addr), fwd.guest_port) < 0:
                why = os.strerror(ffi.errno) if ffi.errno else "refused"
                raise _SetupError(f"hostfwd={fwd}: cannot listen on "
                                      f"{fwd.host_addr}:{fwd.host_port}: {why}")

    def _run(self) -> None:
        lib = self._slirp_mod.lib
        try:
            self._create()
        except _SetupError as e:
            self._failure = str(e)
        self._ready.set()
        if self._failure is None:
            try:
                while not self._stopping:
                    lib.aks_poll(self._slirp, self._poller, self._wake, self._timeout_ms())
                    while self._calls:
                        self._calls.popleft()()
                    tx = self._tx
                    while tx:
                        frame = tx.popleft()
                        lib.slirp_input(self._slirp, frame, len(frame))
                        self.sent += 1
                    if self._heap:
                        self._run_timers()
            except Exception:               # a bug here: the link goes down, akvm runs on
                log.exception("%s: user networking stopped", self.name)
        self._destroy()

    def _destroy(self) -> None:
        ffi, lib = self._slirp_mod.ffi, self._slirp_mod.lib
        if self._slirp is not None:
            lib.slirp_cleanup(self._slirp)
            self._slirp = None
        if getattr(self, "_poller", ffi.NULL) != ffi.NULL:
            lib.aks_poller_free(self._poller)
            self._poller = ffi.NULL

    def _timeout_ms(self) -> int:
        if not self._heap:
            return IDLE_POLL_MS
        return max(0, min(IDLE_POLL_MS, self._heap[0][0] - time.monotonic_ns() // 1_000_000))

    def _run_timers(self) -> None:
        lib = self._slirp_mod.lib
        ffi = self._slirp_mod.ffi
        now = time.monotonic_ns() // 1_000_000
        while self._heap and self._heap[0][0] <= now:
            _, seq, handle = heapq.heappop(self._heap)
            timer = self._timers.get(handle)
            if timer is None or timer.seq != seq:
                continue                    # freed, or re-armed since
            timer.seq = -1
            lib.aks_timer_fire(self._slirp, timer.cb or ffi.NULL, timer.cb_opaque,
                               timer.timer_id)

    # --- callbacks from libslirp (on the slirp thread, inside a slirp call) -------------

    def _deliver(self, frame: bytes) -> None:
        if len(self._rx) >= QUEUE_LIMIT:
            self.dropped += 1
            return
        was_empty = not self._rx
        self._rx.append(frame)
        if was_empty and self._rx_event >= 0:
            os.eventfd_write(self._rx_event, 1)

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

    def format_stats(self) -> str:
        return (f"user networking: {self.sent} frames to the network, {self.received} from it, "
                f"{self.dropped} dropped")


def _bind_callbacks(ffi) -> None:
    """libslirp's extern "Python" callbacks: each finds its backend by the opaque handle."""

    @ffi.def_extern(error=-1)
    def aks_py_send_packet(buf, length, opaque):
        ffi.from_handle(opaque)._deliver(bytes(ffi.buffer(buf, length)))
        return length

    @ffi.def_extern()
    def aks_py_guest_error(msg, opaque):
        ffi.from_handle(opaque)._guest_error(ffi.string(msg).decode(errors="replace"))

    @ffi.def_extern()
    def aks_py_timer_new(cb, cb_opaque, opaque):
        return ffi.cast("void *", ffi.from_handle(opaque)._timer_new(cb, cb_opaque, -1))

    @ffi.def_extern()
    def aks_py_timer_new_opaque(timer_id, cb_opaque, opaque):
        return ffi.cast("void *", ffi.from_handle(opaque)._timer_new(None, cb_opaque, timer_id))

    @ffi.def_extern()
    def aks_py_timer_free(timer, opaque):
        ffi.from_handle(opaque)._timer_free(int(ffi.cast("uintptr_t", timer)))

    @ffi.def_extern()
    def aks_py_timer_mod(timer, expire_ms, opaque):
        ffi.from_handle(opaque)._timer_mod(int(ffi.cast("uintptr_t", timer)), expire_ms)

