/* virtio-net's receive and transmit queues served in C (virtio 1.2, 5.1.6)
 * while the device's DMA is direct: the twin of VirtioNet.handle() and
 * VirtioNet.receive() (akvm.devices.virtio.net), on a backend's thread.
 *
 * Transmit: every available chain is walked (akvm_vq_walk), its frame (the
 * device-readable bytes after the 12-byte header) copied out, the chain put
 * on the used ring with length 0, and the frame handed to the network with
 * the lock released (the network may answer at once, into the receive
 * queue). A chain with no frame or one over AKVM_NETQ_MAX_FRAME bytes is
 * returned and counted as an error, as Python does. Receive: the next
 * available chain gets an empty header (num_buffers 1) and the frame,
 * scattered over its device-writable buffers; with none available the
 * frame waits (AKVM_NIC_FULL); a chain too small for it is left available
 * and the frame dropped, as in Python. Notification suppression and the
 * interrupt decision are Virtqueue's (flags or VIRTIO_F_EVENT_IDX); the
 * receive queue asks for notifications only once it has run out of
 * buffers, so a driver returning buffers does not exit for each, and the
 * transmit queue only after a turn that found nothing (AKVM_NIC_AGAIN: the
 * backend calls again at once), so a driver that keeps sending does not
 * exit for each batch either.
 *
 * With a backend that lets a vCPU run its turn (nicport.h: attach()), the
 * transmit queue's notify address completes in C on the vCPU
 * (akvm_vnetq_exit, in place of its ioeventfd): the vCPU runs the turn
 * itself, so the frames reach the network, and its answers the receive
 * queue, before the guest runs again, with no thread to wake. That turn
 * leaves notifications on when it is done (the next notify is as cheap as
 * the turn it saves); when the backend cannot take it, the kick eventfd
 * wakes its thread as the ioeventfd would.
 *
 * Anything Python would report (a broken chain, a ring word outside guest
 * RAM) ends C's turn untouched and gives the queues back to Python, which
 * then finds the same thing and asks for a reset. */
#include <linux/kvm.h>
#include <linux/virtio_ring.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "netq.h"
#include "virtq.h"

struct akvm_netq {
	pthread_mutex_t lock;		/* recursive: a vCPU's turn comes back into tx/rx */
	int stopped, given_back;
	akvm_nic_turn_fn turn;		/* the backend's turn a vCPU may run (nicport.h) */
	void *engine;
	int in_vcpu;			/* that turn is running (on the thread holding the lock) */
	int kick_fd;			/* the transmit queue's eventfd: the thread's turn instead */
	struct akvm_netq_config c;
	struct akvm_netq_stats stats;
	const struct akvm_mem_slot *slots;
	unsigned int nslots;
	struct akvm_vq_seg segs[AKVM_NETQ_MAX_SEGS];
	uint8_t frame[AKVM_NETQ_MAX_FRAME];
};

static unsigned char *ram(const struct akvm_netq *q, uint64_t gpa, uint64_t off, uint64_t n)
{
	return akvm_vq_ram(q->slots, q->nslots, gpa, off, n);
}

static uint16_t *word(const struct akvm_netq *q, uint64_t gpa, uint64_t off)
{
	return (uint16_t *)ram(q, gpa, off, 2);
}

/* Chains made available past last_avail, or -1 (a ring error). */
static int pending(const struct akvm_netq *q, const struct akvm_netq_ring *r)
{
	uint16_t *idx = word(q, r->driver, 2);
	if (!idx)
		return -1;
	unsigned int n = (uint16_t)(__atomic_load_n(idx, __ATOMIC_ACQUIRE) - r->last_avail);
	return n > r->size ? -1 : (int)n;
}

/* Virtqueue.set_notify(): 0, or -1 when the word is outside guest RAM. */
static int set_notify(const struct akvm_netq *q, const struct akvm_netq_ring *r, int enabled)
{
	if (q->c.event_idx && !enabled)
		return 0;			/* avail_event just stays behind */
	uint16_t *w = q->c.event_idx ? word(q, r->device, 4 + 8ull * r->size) : word(q, r->device, 0);
	if (!w)
		return -1;
	__atomic_store_n(w, q->c.event_idx ? (uint16_t)r->last_avail
					   : enabled ? 0 : VRING_USED_F_NO_NOTIFY, __ATOMIC_RELAXED);
	if (enabled)
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return 0;
}

/* Virtqueue.needs_interrupt() for what was pushed since the last call. */
static int needs_interrupt(const struct akvm_netq *q, struct akvm_netq_ring *r)
{
	uint16_t *w = q->c.event_idx ? word(q, r->driver, 4 + 2ull * r->size) : word(q, r->driver, 0);
	if (!w)
		return 0;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	uint16_t value = __atomic_load_n(w, __ATOMIC_RELAXED);
	if (!q->c.event_idx)
		return !(value & VRING_AVAIL_F_NO_INTERRUPT);
	int old = r->signalled_used;
	uint16_t now = (uint16_t)r->used_idx;
	r->signalled_used = now;
	return old < 0 || (uint16_t)(now - value - 1) < (uint16_t)(now - old);
}

/* The chain at last_avail, walked into q->segs: its number of buffers
 * (>= 0), or -1 when Python must see it (a broken chain, a word outside
 * RAM, more buffers than segs holds). */
static int walk(struct akvm_netq *q, struct akvm_netq_ring *r, uint16_t *head,
		unsigned long long *rlen, unsigned long long *wlen)
{
	uint16_t *entry = word(q, r->driver, 4 + 2ull * (r->last_avail % r->size));
	if (!entry)
		return -1;
	*head = *entry;
	int n = akvm_vq_walk(q->slots, q->nslots, r->desc, r->size, *head, q->c.indirect,
			     q->segs, AKVM_NETQ_MAX_SEGS, rlen, wlen);
	return n < 0 ? -1 : n;
}

/* Put `head` on the used ring (element, then used->idx); -1 if it is out of reach. */
static int push(struct akvm_netq *q, struct akvm_netq_ring *r, uint16_t head, uint32_t len)
{
	uint32_t *used = (uint32_t *)ram(q, r->device, 4 + 8ull * (r->used_idx % r->size), 8);
	uint16_t *idx = word(q, r->device, 2);
	if (!used || !idx)
		return -1;
	used[0] = head;
	used[1] = len;
	r->last_avail = (r->last_avail + 1) & 0xFFFF;
	r->used_idx = (r->used_idx + 1) & 0xFFFF;
	__atomic_store_n(idx, (uint16_t)r->used_idx, __ATOMIC_RELEASE);
	return 0;
}

/* Copy n bytes of the chain's readable (write = 0) or writable stream at
 * offset between it and buf; -1 when a piece is outside guest RAM. */
static int stream(struct akvm_netq *q, int nsegs, int write, uint64_t offset, uint8_t *buf,
		  uint64_t n)
{
	struct iovec iov[AKVM_NETQ_MAX_SEGS];
	int k = akvm_vq_stream(q->slots, q->nslots, q->segs, nsegs, write, offset, n, iov);

	for (int i = 0; i < k; i++) {
		if (write)
			memcpy(iov[i].iov_base, buf, iov[i].iov_len);
		else
			memcpy(buf, iov[i].iov_base, iov[i].iov_len);
		buf += iov[i].iov_len;
	}
	return k < 0 ? -1 : 0;
}

static int give_back(struct akvm_netq *q)
{
	q->given_back = 1;
	return AKVM_NIC_PYTHON;
}

int akvm_vnetq_tx(void *opaque, akvm_nic_out_fn out, void *ctx, int polling)
{
	struct akvm_netq *q = opaque;
	struct akvm_netq_ring *r = &q->c.tx;
	int code = AKVM_NIC_DONE, pushed = 0, n;

	pthread_mutex_lock(&q->lock);
	if (q->stopped || q->given_back) {
		code = q->stopped ? AKVM_NIC_DONE : AKVM_NIC_PYTHON;
		goto out;
	}
	for (;;) {
		if (set_notify(q, r, 0) || (n = pending(q, r)) < 0) {
			code = give_back(q);
			goto out;
		}
		if (!n && pushed && !q->in_vcpu) {
			/* Busy: leave notifications off and look again on the next
			 * turn of the loop, after the network had its say; a
			 * sending driver then need not notify for each batch. (A
			 * vCPU's turn does not: the thread would have to wake.) */
			code |= AKVM_NIC_AGAIN;
			break;
		}
		if (!n && polling && !q->in_vcpu) {
			/* The caller polls on anyway: the driver need not notify
			 * (a notify is an exit, emulated on some hosts) until the
			 * caller stops and calls without polling. */
			code |= AKVM_NIC_POLL;
			break;
		}
		if (!n) {
			if (set_notify(q, r, 1) || (n = pending(q, r)) < 0) {
				code = give_back(q);
				goto out;
			}
			if (!n)
				break;
		}
		for (; n; n--) {
			unsigned long long rlen, wlen;
			uint16_t head;
			int nsegs = walk(q, r, &head, &rlen, &wlen);
			if (nsegs < 0) {
				code = give_back(q);
				goto out;
			}
			uint64_t len = rlen > AKVM_NETQ_HDR ? rlen - AKVM_NETQ_HDR : 0;
			int ok = len && len <= AKVM_NETQ_MAX_FRAME &&
				 !stream(q, nsegs, 0, AKVM_NETQ_HDR, q->frame, len);
			if (len && len <= AKVM_NETQ_MAX_FRAME && !ok) {
				code = give_back(q);	/* a buffer outside RAM: Python reports it */
				goto out;
			}
			if (push(q, r, head, 0)) {
				code = give_back(q);
				goto out;
			}
			pushed = 1;
			if (!ok) {
				q->stats.errors++;
				continue;
			}
			q->stats.tx_frames++;
			pthread_mutex_unlock(&q->lock);
			out(ctx, q->frame, len);	/* may come back into akvm_vnetq_rx() */
			pthread_mutex_lock(&q->lock);
			if (q->stopped)
				goto out;
		}
	}
out:
	if (pushed && !q->stopped && needs_interrupt(q, r)) {
		r->irq = 1;
		code |= AKVM_NIC_IRQ;
	}
	pthread_mutex_unlock(&q->lock);
	return code;
}

int akvm_vnetq_rx(void *opaque, const uint8_t *frame, size_t len)
{
	struct akvm_netq *q = opaque;
	struct akvm_netq_ring *r = &q->c.rx;
	static const uint8_t header[AKVM_NETQ_HDR] = { [10] = 1 };	/* num_buffers 1 */
	unsigned long long rlen, wlen;
	uint16_t head;
	int code = AKVM_NIC_DONE, n, nsegs;

	pthread_mutex_lock(&q->lock);
	if (q->stopped || q->given_back) {
		code = AKVM_NIC_PYTHON;
		goto out;
	}
	if ((n = pending(q, r)) < 0) {
		code = give_back(q);
		goto out;
	}
	if (!n) {
		/* Out of buffers: ask for a notification when some come, and look
		 * once more, for those posted meanwhile. */
		if (set_notify(q, r, 1) || (n = pending(q, r)) < 0) {
			code = give_back(q);
			goto out;
		}
		if (!n) {
			code = AKVM_NIC_FULL;
			goto out;
		}
	}
	if (set_notify(q, r, 0)) {		/* buffers: the driver need not tell us of more */
		code = give_back(q);
		goto out;
	}
	if ((nsegs = walk(q, r, &head, &rlen, &wlen)) < 0) {
		code = give_back(q);
		goto out;
	}
	if (AKVM_NETQ_HDR + len > wlen) {		/* left available; the frame is lost */
		q->stats.rx_dropped++;
		goto out;
	}
	if (stream(q, nsegs, 1, 0, (uint8_t *)header, AKVM_NETQ_HDR) ||
	    stream(q, nsegs, 1, AKVM_NETQ_HDR, (uint8_t *)frame, len) ||
	    push(q, r, head, (uint32_t)(AKVM_NETQ_HDR + len))) {
		code = give_back(q);
		goto out;
	}
	q->stats.rx_frames++;
	if (needs_interrupt(q, r)) {
		r->irq = 1;
		code |= AKVM_NIC_IRQ;
	}
out:
	pthread_mutex_unlock(&q->lock);
	return code;
}

struct akvm_netq *akvm_vnetq_new(const struct akvm_netq_config *config,
				 const struct akvm_mem_slot *slots, unsigned int nslots)
{
	struct akvm_netq *q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	pthread_mutexattr_t attr;
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&q->lock, &attr);
	pthread_mutexattr_destroy(&attr);
	q->kick_fd = -1;
	q->c = *config;
	q->slots = slots;
	q->nslots = nslots;
	return q;
}

void akvm_vnetq_free(struct akvm_netq *q)
{
	if (!q)
		return;
	pthread_mutex_destroy(&q->lock);
	free(q);
}

/* nicport.h's attach(): once it returns, no vCPU is inside the turn it replaced. */
void akvm_vnetq_attach(void *opaque, akvm_nic_turn_fn turn, void *engine)
{
	struct akvm_netq *q = opaque;

	pthread_mutex_lock(&q->lock);
	q->turn = turn;
	q->engine = engine;
	pthread_mutex_unlock(&q->lock);
}

void akvm_vnetq_set_kick(struct akvm_netq *q, int fd)
{
	pthread_mutex_lock(&q->lock);
	q->kick_fd = fd;
	pthread_mutex_unlock(&q->lock);
}

/* The vCPU's exit handler (akvm_exit_fn) for the transmit queue's notify
 * address: a write runs the backend's turn here, or kicks its thread. */
int akvm_vnetq_exit(void *opaque, void *kvm_run)
{
	struct akvm_netq *q = opaque;
	struct kvm_run *run = kvm_run;
	uint64_t one = 1;
	int fd;

	if (run->exit_reason != KVM_EXIT_MMIO || !run->mmio.is_write)
		return 0;
	pthread_mutex_lock(&q->lock);
	q->stats.notifies++;
	if (q->turn && !q->stopped && !q->given_back) {
		q->in_vcpu = 1;
		int r = q->turn(q->engine);
		q->in_vcpu = 0;
		if (r == 0) {
			q->stats.direct++;
			pthread_mutex_unlock(&q->lock);
			return 1;
		}
	}
	fd = q->kick_fd;
	pthread_mutex_unlock(&q->lock);
	if (fd >= 0 && write(fd, &one, sizeof(one)) < 0)
		return 1;			/* (EAGAIN: kicked already) */
	return 1;
}

void akvm_vnetq_stop(struct akvm_netq *q)
{
	pthread_mutex_lock(&q->lock);
	q->stopped = 1;
	q->kick_fd = -1;
	pthread_mutex_unlock(&q->lock);
}

int akvm_vnetq_state(struct akvm_netq *q, struct akvm_netq_config *out,
		     struct akvm_netq_stats *stats)
{
	pthread_mutex_lock(&q->lock);
	*out = q->c;
	*stats = q->stats;
	memset(&q->stats, 0, sizeof(q->stats));
	q->c.rx.irq = q->c.tx.irq = 0;
	int given_back = q->given_back;
	pthread_mutex_unlock(&q->lock);
	return given_back;
}
