"""cffi build script: libslirp (user-mode networking) as its own extension, akvm.devices._slirp.

A module of its own, not part of akvm.base._native: only a machine with
`net=user` needs libslirp (and the glib it links), so akvm builds, starts
and runs everything else where libslirp is missing; setup.py builds this
module only when <slirp/libslirp.h> is there, and akvm.devices.usernet says
in one line what to install when it is not.

libslirp is not thread-safe: one thread owns a Slirp and makes every call
into it (akvm.devices.usernet). The plumbing that runs per frame or per poll
is C here: the fill -> poll(2) -> pollfds_poll cycle with a growable
pollfd array per instance, the clock, and the callbacks slirp calls often
and that need nothing of Python. What Python must see (frames for the
guest, timers, guest errors) comes through `extern "Python"` callbacks,
which find their instance through slirp's opaque handle.
"""
import os
import pathlib
import shlex
import subprocess

from cffi import FFI

MODULE = "akvm.devices._slirp"

CDEF = r"""
typedef struct Slirp Slirp;
typedef void (*SlirpTimerCb)(void *opaque);

/* Our configuration: IPv4 addresses in host byte order. */
struct aks_config {
    uint32_t network, netmask, host, dhcp_start, dns;
    int restricted;
    const char *hostname;
};
struct aks_poller;

Slirp *aks_new(const struct aks_config *cfg, void *opaque);
void slirp_cleanup(Slirp *slirp);
void slirp_input(Slirp *slirp, const uint8_t *pkt, int pkt_len);
int aks_hostfwd(Slirp *slirp, int udp, uint32_t host_addr, int host_port,
                uint32_t guest_addr, int guest_port);
const char *slirp_version_string(void);

struct aks_poller *aks_poller_new(void);
void aks_poller_free(struct aks_poller *p);
int aks_poll(Slirp *slirp, struct aks_poller *p, int wake_fd, int timeout_ms);
int aks_timer_fire(Slirp *slirp, SlirpTimerCb cb, void *cb_opaque, int id);

extern "Python" ssize_t aks_py_send_packet(const void *buf, size_t len, void *opaque);
extern "Python" void aks_py_guest_error(const char *msg, void *opaque);
extern "Python" void *aks_py_timer_new(SlirpTimerCb cb, void *cb_opaque, void *opaque);
extern "Python" void *aks_py_timer_new_opaque(int id, void *cb_opaque, void *opaque);
extern "Python" void aks_py_timer_free(void *timer, void *opaque);
extern "Python" void aks_py_timer_mod(void *timer, int64_t expire_ms, void *opaque);
"""

SOURCE = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <slirp/libslirp.h>

struct aks_config {
    uint32_t network, netmask, host, dhcp_start, dns;
    int restricted;
    const char *hostname;
};

static ssize_t aks_py_send_packet(const void *buf, size_t len, void *opaque);
static void aks_py_guest_error(const char *msg, void *opaque);
static void *aks_py_timer_new(SlirpTimerCb cb, void *cb_opaque, void *opaque);
static void *aks_py_timer_new_opaque(int id, void *cb_opaque, void *opaque);
static void aks_py_timer_free(void *timer, void *opaque);
static void aks_py_timer_mod(void *timer, int64_t expire_ms, void *opaque);

static int64_t aks_clock_ns(void *opaque)
{
    struct timespec ts;
    (void)opaque;
    clock_gettime(CLOCK_MONOTONIC, &ts);        /* Python's time.monotonic_ns() */
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void aks_fd_hint(int fd, void *opaque) { (void)fd; (void)opaque; }
static void aks_notify(void *opaque) { (void)opaque; }

#if SLIRP_CHECK_VERSION(4, 7, 0)
static void *aks_timer_new_opaque(SlirpTimerId id, void *cb_opaque, void *opaque)
{
    return aks_py_timer_new_opaque((int)id, cb_opaque, opaque);
}
#endif

/* The same functions for every instance (slirp keeps the pointer: static). */
static const SlirpCb aks_callbacks = {
    .send_packet = aks_py_send_packet,
    .guest_error = aks_py_guest_error,
    .clock_get_ns = aks_clock_ns,
    .timer_new = aks_py_timer_new,
    .timer_free = aks_py_timer_free,
    .timer_mod = aks_py_timer_mod,
    .register_poll_fd = aks_fd_hint,         /* we poll what pollfds_fill hands out */
    .unregister_poll_fd = aks_fd_hint,
    .notify = aks_notify,                    /* guestfwd only */
#if SLIRP_CHECK_VERSION(4, 7, 0)
    .timer_new_opaque = aks_timer_new_opaque,
#endif
};

static struct in_addr aks_addr(uint32_t host_order)
{
    struct in_addr a = { .s_addr = htonl(host_order) };
    return a;
}

static Slirp *aks_new(const struct aks_config *c, void *opaque)
{
    SlirpConfig cfg;
    memset(&cfg, 0, sizeof(cfg));
#if SLIRP_CHECK_VERSION(4, 7, 0)
    cfg.version = 4;
#elif SLIRP_CHECK_VERSION(4, 2, 0)
    cfg.version = 3;
#else
    cfg.version = 1;
#endif
    cfg.restricted = c->restricted;
    cfg.in_enabled = true;
    cfg.vnetwork = aks_addr(c->network);
    cfg.vnetmask = aks_addr(c->netmask);
    cfg.vhost = aks_addr(c->host);
    cfg.in6_enabled = false;
    cfg.vhostname = c->hostname;             /* copied */
    cfg.vdhcp_start = aks_addr(c->dhcp_start);
    cfg.vnameserver = aks_addr(c->dns);
    return slirp_new(&cfg, &aks_callbacks, opaque);
}

static int aks_hostfwd(Slirp *slirp, int udp, uint32_t host_addr, int host_port,
                       uint32_t guest_addr, int guest_port)
{
    return slirp_add_hostfwd(slirp, udp, aks_addr(host_addr), host_port,
                             aks_addr(guest_addr), guest_port);
}

/* timer_new's callback, or (libslirp 4.7's timer_new_opaque) the timer id. */
static int aks_timer_fire(Slirp *slirp, SlirpTimerCb cb, void *cb_opaque, int id)
{
    if (cb) {
        cb(cb_opaque);
        return 0;
    }
#if SLIRP_CHECK_VERSION(4, 7, 0)
    slirp_handle_timer(slirp, (SlirpTimerId)id, cb_opaque);
    return 0;
#else
    (void)slirp; (void)id;
    return -1;
#endif
}

struct aks_poller {
    struct pollfd *fds;
    int n, cap;
};

static struct aks_poller *aks_poller_new(void)
{
    return calloc(1, sizeof(struct aks_poller));
}

static void aks_poller_free(struct aks_poller *p)
{
    if (p)
        free(p->fds);
    free(p);
}

static int aks_add_poll(int fd, int events, void *opaque)
{
    struct aks_poller *p = opaque;
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 32;
        struct pollfd *fds = realloc(p->fds, cap * sizeof(*fds));
        if (!fds)
            return -1;                       /* slirp then asks about no index */
        p->fds = fds;
        p->cap = cap;
    }
    short ev = 0;
    if (events & SLIRP_POLL_IN)
        ev |= POLLIN;
    if (events & SLIRP_POLL_OUT)
        ev |= POLLOUT;
    if (events & SLIRP_POLL_PRI)
        ev |= POLLPRI;
    p->fds[p->n].fd = fd;
    p->fds[p->n].events = ev;
    p->fds[p->n].revents = 0;
    return p->n++;
}

static int aks_get_revents(int idx, void *opaque)
{
    struct aks_poller *p = opaque;
    if (idx < 0 || idx >= p->n)
        return 0;
    short r = p->fds[idx].revents;
    return (r & POLLIN ? SLIRP_POLL_IN : 0) | (r & POLLOUT ? SLIRP_POLL_OUT : 0) |
           (r & POLLPRI ? SLIRP_POLL_PRI : 0) | (r & POLLERR ? SLIRP_POLL_ERR : 0) |
           (r & POLLHUP ? SLIRP_POLL_HUP : 0);
}

/* One turn of the loop: wake_fd (an eventfd, index 0) and slirp's sockets
 * polled for at most timeout_ms (slirp may shorten it), then slirp handles
 * their events and its TCP timers (which run only here).  Returns 1 when
 * wake_fd was signalled (and drains it), 0 when not, -1 when the poller
 * could not grow. */
static int aks_poll(Slirp *slirp, struct aks_poller *p, int wake_fd, int timeout_ms)
{
    uint32_t timeout = timeout_ms < 0 ? 1000 : (uint32_t)timeout_ms;
    p->n = 0;
    if (aks_add_poll(wake_fd, SLIRP_POLL_IN, p) != 0)
        return -1;
    slirp_pollfds_fill(slirp, &timeout, aks_add_poll, p);
    int rc = poll(p->fds, p->n, (int)timeout);
    int woken = rc > 0 && (p->fds[0].revents & POLLIN);
    if (woken) {
        uint64_t count;
        if (read(wake_fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
            woken = 0;
    }
    slirp_pollfds_poll(slirp, rc < 0, aks_get_revents, p);
    return woken;
}
"""


def available() -> bool:
    """Whether the C compiler finds <slirp/libslirp.h> (Debian: libslirp-dev)."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    try:
        done = subprocess.run(cc + ["-x", "c", "-E", "-o", os.devnull, "-"],
                              input="#include <slirp/libslirp.h>\n", capture_output=True, text=True)
    except OSError:
        return False
    return done.returncode == 0


def make_builder() -> FFI:
    builder = FFI()
    builder.cdef(CDEF)
    # pkg-config's slirp.pc needs glib's .pc files (libglib2.0-dev), so link directly.
    builder.set_source(MODULE, SOURCE, libraries=["slirp"],
                       extra_compile_args=["-O2", "-Wall", "-Wextra"])
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(pathlib.Path(__file__).resolve().parents[1]), verbose=True)
