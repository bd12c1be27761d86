"""cffi build script: libslirp (user-mode networking) as its own extension, akvm.devices._slirp.

A module of its own, not part of akvm.base._native: only a machine with
`net=user` needs libslirp (and the glib it links), so akvm builds, starts
and runs everything else where libslirp is missing; setup.py builds this
module only when <slirp/libslirp.h> is there, and akvm.devices.usernet says
in one line what to install when it is not.

libslirp is not thread-safe: one thread owns a Slirp (akvm.devices.usernet)
and every call into it is made under the engine's lock. That thread's loop
is C here, an "engine":
one aks_engine_run() call polls (poll(2), GIL released) slirp's sockets,
a wake eventfd, the fds Python watches and the NIC's eventfds, lets slirp
handle its events and timers, and returns only when something is
Python's (a call, a watched fd, frames, a timer, an interrupt to send).
A NIC with a data path in C (devices/nicport.h) is served in it without
Python: what the guest queued goes to slirp_input(), what slirp sends
goes into the guest's ring; frames the NIC has no room for yet wait here.
For AKS_SPIN_NS after frames moved the thread polls without sleeping, so the
next frame of an exchange finds it awake; an idle NIC costs no CPU.
Python's rare callbacks (timers, guest errors) are `extern "Python"`.

A NIC may also run its turn on the vCPU thread that rang its doorbell
(aks_engine_vcpu_turn, handed to it by attach(): devices/nicport.h), as
QEMU calls libslirp on its vCPU thread under its big lock: the frames go to
slirp_input() and slirp's answers into the guest's ring at once, without
waking this thread. The vCPU only tries the lock (the thread holds it
while it serves slirp, never while it sleeps in poll(2)), and leaves the
work to the thread when it is busy or held (a snapshot). What the vCPU
changed may need the thread: frames or an interrupt for Python, a new
socket or one with data to flush (the thread sleeps on the poll set it
filled), an earlier slirp deadline, a timer. So after its turn the vCPU
fills a probe poll set the same way and wakes the thread only when that
set or deadline differs from the one the thread sleeps on; the thread then
ignores the poll results of that sleep (slirp's sockets were indexed anew)
and fills again.
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
typedef void (*akvm_nic_out_fn)(void *ctx, const uint8_t *frame, size_t len);
typedef int (*akvm_nic_tx_fn)(void *nic, akvm_nic_out_fn out, void *ctx);
typedef int (*akvm_nic_rx_fn)(void *nic, const uint8_t *frame, size_t len);

/* Our configuration: IPv4 addresses in host byte order. */
struct aks_config {
    uint32_t network, netmask, host, dhcp_start, dns;
    int restricted;
    const char *hostname;
};
struct aks_engine;

#define AKS_EV_WAKE ...
#define AKS_EV_FDS ...
#define AKS_EV_FRAMES ...
#define AKS_EV_TIMEOUT ...
#define AKS_EV_NIC_PYTHON ...
#define AKS_EV_IRQ ...
#define AKS_WATCH_MAX ...
#define AKS_QUEUE ...

struct aks_engine *aks_engine_new(const struct aks_config *cfg, int wake_fd, void *py);
void aks_engine_free(struct aks_engine *e);
Slirp *aks_engine_slirp(struct aks_engine *e);
int aks_engine_run(struct aks_engine *e, int timeout_ms);
int aks_engine_ready(struct aks_engine *e, int *fds, int max);
int aks_engine_watch(struct aks_engine *e, int fd);
void aks_engine_unwatch(struct aks_engine *e, int fd);
void aks_engine_set_nic(struct aks_engine *e, void *tx, void *rx, void *nic, int fd0, int fd1,
                        void *attach);
void aks_engine_hold(struct aks_engine *e, int held);
void aks_engine_input(struct aks_engine *e, const uint8_t *frame, int len);
int aks_engine_pop(struct aks_engine *e, uint8_t *out, int cap);
int aks_engine_queued(struct aks_engine *e);
unsigned long long aks_engine_dropped(struct aks_engine *e);
unsigned long long aks_engine_counts(struct aks_engine *e, int which);
int aks_hostfwd(Slirp *slirp, int udp, uint32_t host_addr, int host_port,
                uint32_t guest_addr, int guest_port);
int aks_timer_fire(struct aks_engine *e, SlirpTimerCb cb, void *cb_opaque, int id);
const char *slirp_version_string(void);

extern "Python" void aks_py_guest_error(const char *msg, void *py);
extern "Python" void *aks_py_timer_new(SlirpTimerCb cb, void *cb_opaque, void *py);
extern "Python" void *aks_py_timer_new_opaque(int id, void *cb_opaque, void *py);
extern "Python" void aks_py_timer_free(void *timer, void *py);
extern "Python" void aks_py_timer_mod(void *timer, int64_t expire_ms, void *py);
"""

SOURCE = r"""
#define _GNU_SOURCE                     /* ppoll */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <slirp/libslirp.h>

#include "nicport.h"

struct aks_config {
    uint32_t network, netmask, host, dhcp_start, dns;
    int restricted;
    const char *hostname;
};

/* What aks_engine_run() returns to Python (ORed) */
#define AKS_EV_WAKE 1          /* wake_fd: calls or frames from other threads, or stop */
#define AKS_EV_FDS 2           /* a watched fd is readable: aks_engine_ready() */
#define AKS_EV_FRAMES 4        /* frames for Python to take: aks_engine_pop() */
#define AKS_EV_TIMEOUT 8       /* Python's deadline (its timers) */
#define AKS_EV_NIC_PYTHON 16   /* the NIC's transmit ring is Python's to serve */
#define AKS_EV_IRQ 32          /* the NIC wants an interrupt sent */
#define AKS_WATCH_MAX 16
#define AKS_QUEUE 1024         /* frames held for Python, or for the NIC, before drops */

static void aks_py_guest_error(const char *msg, void *py);
static void *aks_py_timer_new(SlirpTimerCb cb, void *cb_opaque, void *py);
static void *aks_py_timer_new_opaque(int id, void *cb_opaque, void *py);
static void aks_py_timer_free(void *timer, void *py);
static void aks_py_timer_mod(void *timer, int64_t expire_ms, void *py);

/* A bounded FIFO of frame copies. */
struct aks_frames {
    pthread_mutex_t lock;
    unsigned head, tail;
    size_t len[AKS_QUEUE];
    uint8_t *data[AKS_QUEUE];
};

static int frames_push(struct aks_frames *q, const void *frame, size_t len)
{
    int ok = 0;
    pthread_mutex_lock(&q->lock);
    if (q->head - q->tail < AKS_QUEUE) {
        uint8_t *copy = malloc(len ? len : 1);
        if (copy) {
            memcpy(copy, frame, len);
            q->data[q->head % AKS_QUEUE] = copy;
            q->len[q->head % AKS_QUEUE] = len;
            q->head++;
            ok = 1;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return ok;
}

/* The oldest frame (the caller frees it), or NULL. */
static uint8_t *frames_pop(struct aks_frames *q, size_t *len)
{
    uint8_t *frame = NULL;
    pthread_mutex_lock(&q->lock);
    if (q->head != q->tail) {
        frame = q->data[q->tail % AKS_QUEUE];
        *len = q->len[q->tail % AKS_QUEUE];
        q->tail++;
    }
    pthread_mutex_unlock(&q->lock);
    return frame;
}

static void frames_clear(struct aks_frames *q)
{
    size_t len;
    uint8_t *f;
    while ((f = frames_pop(q, &len)))
        free(f);
}

/* After frames moved, the thread polls without sleeping this long: the guest's
 * next frame, or the host's answer, mostly comes sooner than a thread woken
 * from sleep would run again (about 30 us on this host). But on a host with
 * no CPU to spare, polling takes the CPU the vCPUs need: a thread the
 * scheduler preempted (an involuntary context switch) within the last
 * AKS_SPIN_CHECK_NS sleeps as soon as it has nothing to do, for
 * AKS_SPIN_PAUSE_NS (tools/bench net; README). */
#define AKS_SPIN_NS 50000LL
#define AKS_SPIN_CHECK_NS 100000000LL
#define AKS_SPIN_PAUSE_NS 1000000000LL

struct aks_engine {
    pthread_mutex_t lock;               /* every call into slirp, and what follows */
    Slirp *slirp;
    void *py;                           /* the Python backend's handle (callbacks) */
    int wake_fd;
    struct pollfd *fds;                 /* this turn's poll set: wake, watched, NIC, slirp's */
    int n, cap;
    int watch[AKS_WATCH_MAX], nwatch;
    int ready[AKS_WATCH_MAX], nready;
    int events;                         /* gathered for Python this turn */
    int self_fd;                        /* eventfd: a vCPU's turn needs the thread */
    /* the poll set and deadline the thread sleeps on (slirp's part), for the vCPU's probe */
    int first_slirp;
    struct pollfd *probe;               /* the vCPU's: slirp's part only */
    int probe_n, probe_cap, probe_differs;
    int64_t sleep_until_ns;
    int64_t last_work_ns;               /* when frames last moved (AKS_SPIN_NS) */
    int64_t spin_checked_ns, no_spin_until_ns;
    long nivcsw;                        /* this thread's involuntary switches, then */
    unsigned gen;                       /* +1 when a vCPU re-indexed slirp's sockets */
    int on_hold;                        /* a snapshot holds the thread: no vCPU turns */
    int timers_moved;                   /* a slirp timer was set or freed in a vCPU's turn */
    akvm_nic_attach_fn nic_attach;
    unsigned long long vcpu_turns, vcpu_wakes, vcpu_busy;
    struct aks_frames to_python;        /* frames from the network the NIC left to Python */
    struct aks_frames held;             /* frames the NIC had no room for yet */
    akvm_nic_tx_fn nic_tx;              /* the NIC's C data path, if it has one */
    akvm_nic_rx_fn nic_rx;
    void *nic;
    int nic_fd[2];                      /* its eventfds: the guest queued frames or freed room */
    int nic_again;                      /* the NIC asked to be called on the next turn */
    int nic_poll;                       /* ... and its guest does not notify meanwhile */
    unsigned long long dropped, to_network, to_guest_c, to_guest_python;
};

static int64_t aks_clock_ns(void *opaque)
{
    struct timespec ts;
    (void)opaque;
    clock_gettime(CLOCK_MONOTONIC, &ts);        /* Python's time.monotonic_ns() */
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A frame from the network for the guest: the NIC's C path takes it, holds it
 * for later, or it goes to Python. */
static void aks_to_guest(struct aks_engine *e, const void *buf, size_t len)
{
    if (e->nic_rx && e->held.head == e->held.tail) {
        int r = e->nic_rx(e->nic, buf, len);
        if (r & AKVM_NIC_IRQ)
            e->events |= AKS_EV_IRQ;
        r &= ~AKVM_NIC_IRQ;
        if (r == AKVM_NIC_DONE) {
            e->to_guest_c++;
            return;
        }
        if (r == AKVM_NIC_FULL) {
            if (!frames_push(&e->held, buf, len))
                e->dropped++;
            return;
        }
    } else if (e->nic_rx) {                     /* keep the order: behind those held */
        if (!frames_push(&e->held, buf, len))
            e->dropped++;
        return;
    }
    if (frames_push(&e->to_python, buf, len)) {
        e->to_guest_python++;
        e->events |= AKS_EV_FRAMES;
    } else {
        e->dropped++;
    }
}

static ssize_t aks_send_packet(const void *buf, size_t len, void *opaque)
{
    aks_to_guest(opaque, buf, len);
    return (ssize_t)len;
}

static void aks_guest_error(const char *msg, void *opaque)
{
    aks_py_guest_error(msg, ((struct aks_engine *)opaque)->py);
}

static void *aks_timer_new(SlirpTimerCb cb, void *cb_opaque, void *opaque)
{
    return aks_py_timer_new(cb, cb_opaque, ((struct aks_engine *)opaque)->py);
}

static void aks_timer_free(void *timer, void *opaque)
{
    ((struct aks_engine *)opaque)->timers_moved = 1;
    aks_py_timer_free(timer, ((struct aks_engine *)opaque)->py);
}

static void aks_timer_mod(void *timer, int64_t expire_ms, void *opaque)
{
    ((struct aks_engine *)opaque)->timers_moved = 1;
    aks_py_timer_mod(timer, expire_ms, ((struct aks_engine *)opaque)->py);
}

static void aks_fd_hint(int fd, void *opaque) { (void)fd; (void)opaque; }
static void aks_notify(void *opaque) { (void)opaque; }

#if SLIRP_CHECK_VERSION(4, 7, 0)
static void *aks_timer_new_opaque(SlirpTimerId id, void *cb_opaque, void *opaque)
{
    return aks_py_timer_new_opaque((int)id, cb_opaque, ((struct aks_engine *)opaque)->py);
}
#endif

/* The same functions for every instance (slirp keeps the pointer: static). */
static const SlirpCb aks_callbacks = {
    .send_packet = aks_send_packet,
    .guest_error = aks_guest_error,
    .clock_get_ns = aks_clock_ns,
    .timer_new = aks_timer_new,
    .timer_free = aks_timer_free,
    .timer_mod = aks_timer_mod,
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

static struct aks_engine *aks_engine_new(const struct aks_config *c, int wake_fd, void *py)
{
    struct aks_engine *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->py = py;
    e->wake_fd = wake_fd;
    e->nic_fd[0] = e->nic_fd[1] = -1;
    e->self_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->self_fd < 0) {
        free(e);
        return NULL;
    }
    pthread_mutex_init(&e->lock, NULL);
    pthread_mutex_init(&e->to_python.lock, NULL);
    pthread_mutex_init(&e->held.lock, NULL);
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
    e->slirp = slirp_new(&cfg, &aks_callbacks, e);
    if (!e->slirp) {
        close(e->self_fd);
        free(e);
        return NULL;
    }
    return e;
}

static void aks_engine_free(struct aks_engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->lock);
    if (e->nic_attach)                  /* no vCPU comes in from now on */
        e->nic_attach(e->nic, NULL, NULL);
    e->nic_attach = NULL;
    slirp_cleanup(e->slirp);
    pthread_mutex_unlock(&e->lock);
    frames_clear(&e->to_python);
    frames_clear(&e->held);
    close(e->self_fd);
    free(e->fds);
    free(e->probe);
    free(e);
}

static Slirp *aks_engine_slirp(struct aks_engine *e) { return e->slirp; }

/* (Before the NIC is set: no vCPU can come in yet.) */
static int aks_hostfwd(Slirp *slirp, int udp, uint32_t host_addr, int host_port,
                       uint32_t guest_addr, int guest_port)
{
    return slirp_add_hostfwd(slirp, udp, aks_addr(host_addr), host_port,
                             aks_addr(guest_addr), guest_port);
}

/* timer_new's callback, or (libslirp 4.7's timer_new_opaque) the timer id. */
static int aks_timer_fire(struct aks_engine *e, SlirpTimerCb cb, void *cb_opaque, int id)
{
    int rc = 0;
    pthread_mutex_lock(&e->lock);
    if (cb) {
        cb(cb_opaque);
    } else {
#if SLIRP_CHECK_VERSION(4, 7, 0)
        slirp_handle_timer(e->slirp, (SlirpTimerId)id, cb_opaque);
#else
        (void)id;
        rc = -1;
#endif
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}

static int aks_engine_watch(struct aks_engine *e, int fd)
{
    for (int i = 0; i < e->nwatch; i++)
        if (e->watch[i] == fd)
            return 0;
    if (e->nwatch == AKS_WATCH_MAX)
        return -1;
    e->watch[e->nwatch++] = fd;
    return 0;
}

static void aks_engine_unwatch(struct aks_engine *e, int fd)
{
    for (int i = 0; i < e->nwatch; i++)
        if (e->watch[i] == fd)
            e->watch[i--] = e->watch[--e->nwatch];
}

static int aks_engine_vcpu_turn(void *opaque);

/* The NIC's C path (NULL: none); its eventfds, drained here, say "run tx()";
 * attach (or NULL) lets its vCPU run its turn (nicport.h). */
static void aks_engine_set_nic(struct aks_engine *e, void *tx, void *rx, void *nic, int fd0,
                               int fd1, void *attach)
{
    pthread_mutex_lock(&e->lock);
    if (e->nic_attach)
        e->nic_attach(e->nic, NULL, NULL);
    e->nic_attach = (akvm_nic_attach_fn)attach;
    if (e->nic_attach && nic && tx)
        e->nic_attach(nic, aks_engine_vcpu_turn, e);
    e->nic_tx = (akvm_nic_tx_fn)tx;
    e->nic_rx = (akvm_nic_rx_fn)rx;
    e->nic = nic;
    e->nic_fd[0] = fd0;
    e->nic_fd[1] = fd1;
    if (!rx) {                                  /* what was held goes to Python in order */
        size_t len;
        uint8_t *f;
        while ((f = frames_pop(&e->held, &len))) {
            if (frames_push(&e->to_python, f, len))
                e->events |= AKS_EV_FRAMES;
            else
                e->dropped++;
            free(f);
        }
    }
    pthread_mutex_unlock(&e->lock);
}

/* A snapshot holds the thread (held 1) or lets it go (0): no vCPU turns meanwhile,
 * so what the guest queues stays in the NIC, where the snapshot finds it. */
static void aks_engine_hold(struct aks_engine *e, int held)
{
    pthread_mutex_lock(&e->lock);
    e->on_hold = held;
    pthread_mutex_unlock(&e->lock);
}

static short aks_poll_events(int events)
{
    short ev = 0;
    if (events & SLIRP_POLL_IN)
        ev |= POLLIN;
    if (events & SLIRP_POLL_OUT)
        ev |= POLLOUT;
    if (events & SLIRP_POLL_PRI)
        ev |= POLLPRI;
    return ev;
}

static int aks_add_poll(int fd, int events, void *opaque)
{
    struct aks_engine *e = opaque;
    if (e->n == e->cap) {
        int cap = e->cap ? 2 * e->cap : 32;
        struct pollfd *fds = realloc(e->fds, cap * sizeof(*fds));
        if (!fds)
            return -1;                           /* slirp then asks about no index */
        e->fds = fds;
        e->cap = cap;
    }
    e->fds[e->n].fd = fd;
    e->fds[e->n].events = aks_poll_events(events);
    e->fds[e->n].revents = 0;
    return e->n++;
}

/* The vCPU's probe (lock held): slirp's sockets indexed as the thread's fill would,
 * noting any difference from the set it sleeps on (only fd and events are read,
 * which poll(2) leaves alone). */
static int aks_probe_add(int fd, int events, void *opaque)
{
    struct aks_engine *e = opaque;
    int at = e->first_slirp + e->probe_n++;
    if (at >= e->n || e->fds[at].fd != fd || e->fds[at].events != aks_poll_events(events))
        e->probe_differs = 1;
    return at;
}

static int aks_get_revents(int idx, void *opaque)
{
    struct aks_engine *e = opaque;
    if (idx < 0 || idx >= e->n)
        return 0;
    short r = e->fds[idx].revents;
    return (r & POLLIN ? SLIRP_POLL_IN : 0) | (r & POLLOUT ? SLIRP_POLL_OUT : 0) |
           (r & POLLPRI ? SLIRP_POLL_PRI : 0) | (r & POLLERR ? SLIRP_POLL_ERR : 0) |
           (r & POLLHUP ? SLIRP_POLL_HUP : 0);
}

static void aks_drain(int fd)
{
    uint64_t count;
    if (read(fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
        return;
}

static void aks_out(void *ctx, const uint8_t *frame, size_t len)
{
    struct aks_engine *e = ctx;
    slirp_input(e->slirp, frame, (int)len);
    e->to_network++;
}

/* The NIC's turn: frames it held first (room may have come), then its transmit ring.
 * polling: this thread polls on for now (AKS_SPIN_NS), so the NIC may leave its
 * guest's notifications off (nicport.h). */
static void aks_nic_turn(struct aks_engine *e, int polling)
{
    size_t len;
    uint8_t *f;
    while (e->nic_rx && e->held.head != e->held.tail) {
        pthread_mutex_lock(&e->held.lock);
        f = e->held.data[e->held.tail % AKS_QUEUE];
        len = e->held.len[e->held.tail % AKS_QUEUE];
        pthread_mutex_unlock(&e->held.lock);
        int r = e->nic_rx(e->nic, f, len);
        if (r & AKVM_NIC_IRQ)
            e->events |= AKS_EV_IRQ;
        r &= ~AKVM_NIC_IRQ;
        if (r == AKVM_NIC_FULL)
            break;
        frames_pop(&e->held, &len);
        if (r == AKVM_NIC_PYTHON) {
            if (frames_push(&e->to_python, f, len))
                e->events |= AKS_EV_FRAMES;
            else
                e->dropped++;
        } else {
            e->to_guest_c++;
        }
        free(f);
    }
    e->nic_again = e->nic_poll = 0;
    if (e->nic_tx) {
        int r = e->nic_tx(e->nic, aks_out, e, polling);
        if (r & AKVM_NIC_IRQ)
            e->events |= AKS_EV_IRQ;
        e->nic_again = !!(r & AKVM_NIC_AGAIN);
        e->nic_poll = !!(r & AKVM_NIC_POLL);
        if ((r & ~(AKVM_NIC_IRQ | AKVM_NIC_AGAIN | AKVM_NIC_POLL)) == AKVM_NIC_PYTHON)
            e->events |= AKS_EV_NIC_PYTHON;     /* Python's turn (this one, or from now on) */
    }
}

static void aks_signal(int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        return;                                 /* (EAGAIN: it is signalled already) */
}

/* Whether the thread may poll on without sleeping now (AKS_SPIN_NS). */
static int aks_may_spin(struct aks_engine *e, int64_t now_ns)
{
    if (now_ns < e->no_spin_until_ns)
        return 0;
    if (now_ns - e->spin_checked_ns >= AKS_SPIN_CHECK_NS) {
        struct rusage ru;
        if (getrusage(RUSAGE_THREAD, &ru) == 0) {
            int preempted = e->spin_checked_ns && ru.ru_nivcsw != e->nivcsw;
            e->nivcsw = ru.ru_nivcsw;
            e->spin_checked_ns = now_ns;
            if (preempted) {
                e->no_spin_until_ns = now_ns + AKS_SPIN_PAUSE_NS;
                return 0;
            }
        }
    }
    return 1;
}

/* Serve slirp and the NIC in C until something is Python's, or until
 * timeout_ms (Python's next timer; -1: none) has passed: returns AKS_EV_*.
 * The lock is held throughout but for the sleep in ppoll(). */
static int aks_engine_run(struct aks_engine *e, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : aks_clock_ns(NULL) / 1000000 + timeout_ms;
    pthread_mutex_lock(&e->lock);
    e->nready = 0;
    for (;;) {
        int64_t now = aks_clock_ns(NULL) / 1000000;
        uint32_t timeout = 1000;
        if (deadline >= 0)
            timeout = deadline <= now ? 0 : (uint32_t)(deadline - now < 1000 ? deadline - now : 1000);
        e->n = 0;
        aks_add_poll(e->wake_fd, SLIRP_POLL_IN, e);
        aks_add_poll(e->self_fd, SLIRP_POLL_IN, e);
        int first_watch = e->n;
        for (int i = 0; i < e->nwatch; i++)
            aks_add_poll(e->watch[i], SLIRP_POLL_IN, e);
        int first_nic = e->n;
        for (int i = 0; i < 2; i++)
            if (e->nic_fd[i] >= 0 && e->nic_tx)
                aks_add_poll(e->nic_fd[i], SLIRP_POLL_IN, e);
        int last_nic = e->n;
        e->first_slirp = e->n;
        slirp_pollfds_fill(e->slirp, &timeout, aks_add_poll, e);
        unsigned gen = e->gen;
        /* slirp's clock counts whole milliseconds (its delayed ACK is "2 ms
         * on that clock"): wake at the start of the millisecond it is due,
         * not `timeout` ms from now, which is up to one more. */
        int64_t now_ns = aks_clock_ns(NULL);
        int64_t wait = (now_ns / 1000000 + timeout) * 1000000 - now_ns;
        if (e->events || e->nic_again || wait < 0)   /* work waiting: do not sleep */
            wait = 0;
        int spin = now_ns - e->last_work_ns < AKS_SPIN_NS && aks_may_spin(e, now_ns);
        if (spin || e->nic_poll)                /* frames just moved: poll on, awake; */
            wait = 0;                           /* or turn the NIC's notifications on first */
        unsigned long long work0 = e->to_network + e->to_guest_c;
        e->sleep_until_ns = now_ns + wait;
        struct timespec ts = { .tv_sec = wait / 1000000000, .tv_nsec = wait % 1000000000 };
        pthread_mutex_unlock(&e->lock);
        int rc = ppoll(e->fds, e->n, &ts, NULL);
        pthread_mutex_lock(&e->lock);
        if (rc > 0) {
            if (e->fds[0].revents & POLLIN) {
                aks_drain(e->wake_fd);
                e->events |= AKS_EV_WAKE;
            }
            if (e->fds[1].revents & POLLIN)
                aks_drain(e->self_fd);
            for (int i = first_watch; i < first_nic; i++)
                if (e->fds[i].revents && e->nready < AKS_WATCH_MAX) {
                    e->ready[e->nready++] = e->fds[i].fd;
                    e->events |= AKS_EV_FDS;
                }
        }
        /* A vCPU's probe indexed slirp's sockets anew meanwhile: these results
         * are not theirs (they stay pending: the next poll finds them again). */
        slirp_pollfds_poll(e->slirp, rc < 0 || e->gen != gen, aks_get_revents, e);
        int nic = e->nic_again || e->nic_poll;
        for (int i = first_nic; rc > 0 && i < last_nic; i++)
            if (e->fds[i].revents & POLLIN) {
                aks_drain(e->fds[i].fd);
                nic = 1;
            }
        if (nic)
            aks_nic_turn(e, spin);
        if (e->to_network + e->to_guest_c != work0)
            e->last_work_ns = aks_clock_ns(NULL);
        if (e->events) {
            int events = e->events;
            e->events = 0;
            pthread_mutex_unlock(&e->lock);
            return events;
        }
        if (deadline >= 0 && aks_clock_ns(NULL) / 1000000 >= deadline) {
            pthread_mutex_unlock(&e->lock);
            return AKS_EV_TIMEOUT;
        }
    }
}

/* nicport.h's turn(), on the vCPU thread that rang the NIC's doorbell (the NIC's
 * lock held): the NIC's turn as this thread would run it, if the lock is free and
 * no snapshot holds the thread; then the thread is woken only if it must act:
 * events for Python, the NIC asking to be called again, a timer moved, or a poll
 * set or deadline other than the one it sleeps on. */
static int aks_engine_vcpu_turn(void *opaque)
{
    struct aks_engine *e = opaque;
    if (pthread_mutex_trylock(&e->lock)) {
        __atomic_fetch_add(&e->vcpu_busy, 1, __ATOMIC_RELAXED);
        return -1;
    }
    if (e->on_hold || !e->nic_tx) {
        pthread_mutex_unlock(&e->lock);
        return -1;
    }
    e->timers_moved = 0;
    aks_nic_turn(e, 0);
    int timers = e->timers_moved, wake = e->events || e->nic_again;
    if (!wake && !timers) {
        uint32_t timeout = 1000;
        e->probe_n = 0;
        e->probe_differs = 0;
        slirp_pollfds_fill(e->slirp, &timeout, aks_probe_add, e);
        if (e->probe_differs || e->first_slirp + e->probe_n != e->n) {
            e->gen++;
            wake = 1;
        } else {
            int64_t now_ns = aks_clock_ns(NULL);
            wake = (now_ns / 1000000 + timeout) * 1000000 < e->sleep_until_ns;
        }
    }
    e->vcpu_turns++;
    if (wake || timers)
        e->vcpu_wakes++;
    pthread_mutex_unlock(&e->lock);
    if (timers)
        aks_signal(e->wake_fd);                 /* Python's deadline moved */
    else if (wake)
        aks_signal(e->self_fd);
    return 0;
}

/* The fds that were readable (AKS_EV_FDS). */
static int aks_engine_ready(struct aks_engine *e, int *fds, int max)
{
    int n = e->nready < max ? e->nready : max;
    memcpy(fds, e->ready, n * sizeof(int));
    return n;
}

/* A frame from the guest through Python (on the engine's thread). */
static void aks_engine_input(struct aks_engine *e, const uint8_t *frame, int len)
{
    pthread_mutex_lock(&e->lock);
    aks_out(e, frame, (size_t)len);
    pthread_mutex_unlock(&e->lock);
}

/* The next frame for Python: its length (copied up to cap bytes), or -1. */
static int aks_engine_pop(struct aks_engine *e, uint8_t *out, int cap)
{
    size_t len;
    uint8_t *f = frames_pop(&e->to_python, &len);
    if (!f)
        return -1;
    memcpy(out, f, len < (size_t)cap ? len : (size_t)cap);
    free(f);
    return (int)len;
}

static int aks_engine_queued(struct aks_engine *e)
{
    return (int)(e->to_python.head - e->to_python.tail);
}

static unsigned long long aks_engine_dropped(struct aks_engine *e) { return e->dropped; }

/* 0: frames to the network; 1: to the guest by C; 2: to the guest through Python;
 * 3: turns vCPUs ran; 4: ... that woke the thread; 5: vCPUs that found it busy */
static unsigned long long aks_engine_counts(struct aks_engine *e, int which)
{
    switch (which) {
    case 0: return e->to_network;
    case 1: return e->to_guest_c;
    case 2: return e->to_guest_python;
    case 3: return e->vcpu_turns;
    case 4: return e->vcpu_wakes;
    default: return __atomic_load_n(&e->vcpu_busy, __ATOMIC_RELAXED);
    }
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
                       include_dirs=[str(pathlib.Path(__file__).resolve().parent)],
                       extra_compile_args=["-O2", "-Wall", "-Wextra"])
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(pathlib.Path(__file__).resolve().parents[1]), verbose=True)
