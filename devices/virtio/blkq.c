/* virtio-blk's request queue served in C (virtio 1.2, 2.7 and 5.2.6) for a
 * queue whose DMA is direct: the twin of akvm.devices.virtio.blk's Python path,
 * VirtioDevice.serve() with VirtioBlk.handle().
 *
 * One call is one round of VirtioDevice.serve(): available buffer
 * notifications off; every request available at the start taken, walked
 * (akvm_vq_walk), its data moved by preadv/pwritev straight between the
 * image and guest RAM, its status written and its chain put on the used
 * ring; notifications on again; and whether the driver wants a used buffer
 * notification.
 * Requests are done one at a time in ring order, so a flush's fdatasync
 * comes after every write completed before it, and its status after that.
 *
 * C leaves to Python, untouched, DISCARD and WRITE_ZEROES, and any request
 * Python would report or refuse: a broken chain, a missing header or status
 * byte, a buffer or ring word outside guest RAM. Every location Python
 * would touch for a request is checked before its I/O, so C does the whole
 * request as Python would, or none of it. Failed I/O stays here (IOERR, and
 * errno for Python to log): retrying a failed fdatasync could report lost
 * writes as durable.
 *
 * `lock` plays the device lock's part: held except across file I/O, whose
 * calls are counted in `io`. akvm_blkq_stop() (a reset) takes it and waits
 * until no call is in flight: when it returns, nothing here touches guest
 * memory again (a read that was moving data into it has finished, and no
 * status or used entry follows). */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>

#include "blkq.h"
#include "virtq.h"

_Static_assert(AKVM_BLKQ_ID_BYTES == VIRTIO_BLK_ID_BYTES, "GET_ID's answer");

#define SECTOR_SIZE	512
#define HEADER_SIZE	16	/* le32 type, le32 reserved, le64 sector */

#define TAKEN	-1		/* serve_one(): the request is on the used ring */

struct akvm_blkq {
	pthread_mutex_t lock;
	pthread_cond_t idle;		/* signalled when io drops to 0 */
	unsigned int io;		/* file I/O calls in flight (lock dropped) */
	int stopped;
	struct akvm_blkq_config c;
	const struct akvm_mem_slot *slots;
	unsigned int nslots;
	struct akvm_vq_seg segs[AKVM_BLKQ_MAX_SEGS];
	struct iovec iov[AKVM_BLKQ_MAX_SEGS];
};

static unsigned char *host(const struct akvm_blkq *q, uint64_t gpa, uint64_t off, uint64_t n)
{
	return akvm_vq_ram(q->slots, q->nslots, gpa, off, n);
}

/* A 16-bit ring word (2-byte aligned by the layout rules: accesses are whole). */
static uint16_t *word(const struct akvm_blkq *q, uint64_t gpa, uint64_t off)
{
	return (uint16_t *)host(q, gpa, off, 2);
}

static uint16_t *interrupt_word(const struct akvm_blkq *q)
{
	/* used_event with VIRTIO_F_EVENT_IDX, else the available ring's flags */
	return q->c.event_idx ? word(q, q->c.driver, 4 + 2ull * q->c.size) : word(q, q->c.driver, 0);
}

static uint16_t *notify_word(const struct akvm_blkq *q)
{
	/* avail_event with VIRTIO_F_EVENT_IDX, else the used ring's flags */
	return q->c.event_idx ? word(q, q->c.device, 4 + 8ull * q->c.size) : word(q, q->c.device, 0);
}

/* [offset, offset + n) of the chain's readable or writable stream as iovecs
 * (DirectDma.views()'s twin), or -1 when a piece is outside guest RAM. */
static int stream(struct akvm_blkq *q, int nsegs, int write, uint64_t offset, uint64_t n,
		  struct iovec *iov)
{
	return akvm_vq_stream(q->slots, q->nslots, q->segs, nsegs, write, offset, n, iov);
}

/* Drop `lock` for file I/O; akvm_blkq_stop() waits for the matching io_end(). */
static void io_begin(struct akvm_blkq *q)
{
	q->io++;
	pthread_mutex_unlock(&q->lock);
}

static void io_end(struct akvm_blkq *q)
{
	pthread_mutex_lock(&q->lock);
	if (--q->io == 0)
		pthread_cond_broadcast(&q->idle);
}

/* preadv/pwritev of all of iov at offset, resuming after short transfers, with
 * `lock` released (image.py's _vectored()). Bytes moved, or -errno. */
static int64_t transfer(struct akvm_blkq *q, int write, struct iovec *iov, int n, uint64_t offset)
{
	int64_t done = 0;

	io_begin(q);
	while (n) {
		ssize_t r = write ? pwritev(q->c.fd, iov, n, (off_t)(offset + done))
				  : preadv(q->c.fd, iov, n, (off_t)(offset + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			done = -errno;
		if (r <= 0)
			break;
		done += r;
		for (; n && (size_t)r >= iov->iov_len; iov++, n--)
			r -= (ssize_t)iov->iov_len;
		if (r) {
			iov->iov_base = (unsigned char *)iov->iov_base + r;
			iov->iov_len -= (size_t)r;
		}
	}
	io_end(q);
	return done;
}

/* fdatasync with `lock` released: 0 or -errno. */
static int sync_image(struct akvm_blkq *q)
{
	int r;

	io_begin(q);
	do
		r = fdatasync(q->c.fd);
	while (r < 0 && errno == EINTR);
	r = r < 0 ? -errno : 0;
	io_end(q);
	return r;
}

static int in_range(const struct akvm_blkq *q, uint64_t sector, uint64_t length)
{
	return length % SECTOR_SIZE == 0 && sector <= q->c.capacity &&
	       length / SECTOR_SIZE <= q->c.capacity - sector;
}

/* Take, do and return the request at last_avail: TAKEN, or why not. */
static int serve_one(struct akvm_blkq *q, struct akvm_blkq_run *run)
{
	const struct akvm_blkq_config *c = &q->c;
	uint16_t *entry = word(q, c->driver, 4 + 2ull * (run->last_avail % c->size));
	unsigned long long rlen, wlen;
	unsigned char header[HEADER_SIZE], *status_byte;
	uint16_t *used_idx, head;
	uint32_t *used, type;
	uint64_t sector, data, written = 1;
	int64_t r = 0;
	int nsegs, k, status;

	if (!entry)
		return AKVM_BLKQ_RING;
	head = *entry;
	nsegs = akvm_vq_walk(q->slots, q->nslots, c->desc, c->size, head, c->indirect,
			     q->segs, AKVM_BLKQ_MAX_SEGS, &rlen, &wlen);
	if (nsegs < 0 || rlen < HEADER_SIZE || wlen < 1)
		return AKVM_BLKQ_REQUEST;
	if ((k = stream(q, nsegs, 0, 0, HEADER_SIZE, q->iov)) < 0)
		return AKVM_BLKQ_REQUEST;
	for (int i = 0, at = 0; i < k; at += (int)q->iov[i].iov_len, i++)
		memcpy(header + at, q->iov[i].iov_base, q->iov[i].iov_len);
	memcpy(&type, header, 4);
	memcpy(&sector, header + 8, 8);
	if (stream(q, nsegs, 1, wlen - 1, 1, q->iov) < 0)
		return AKVM_BLKQ_REQUEST;
	status_byte = q->iov[0].iov_base;
	used = (uint32_t *)host(q, c->device, 4 + 8ull * (run->used_idx % c->size), 8);
	used_idx = word(q, c->device, 2);
	if (!used || !used_idx || !interrupt_word(q))
		return AKVM_BLKQ_REQUEST;

	data = wlen - 1;		/* IN and GET_ID: the bytes before the status */
	status = VIRTIO_BLK_S_IOERR;
	switch (type) {
	case VIRTIO_BLK_T_IN:
		if (!in_range(q, sector, data))
			break;
		if ((k = stream(q, nsegs, 1, 0, data, q->iov)) < 0)
			return AKVM_BLKQ_REQUEST;
		r = transfer(q, 0, q->iov, k, sector * SECTOR_SIZE);
		if (r == (int64_t)data) {
			status = VIRTIO_BLK_S_OK;
			run->reads++;
			run->bytes_read += data;
			written += data;
		}
		break;
	case VIRTIO_BLK_T_OUT:
		data = rlen - HEADER_SIZE;
		if (c->readonly || !in_range(q, sector, data))
			break;
		if ((k = stream(q, nsegs, 0, HEADER_SIZE, data, q->iov)) < 0)
			return AKVM_BLKQ_REQUEST;
		r = transfer(q, 1, q->iov, k, sector * SECTOR_SIZE);
		if (r == (int64_t)data && c->write_through) {
			int e = sync_image(q);
			r = e ? e : r;
		}
		if (r == (int64_t)data) {
			status = VIRTIO_BLK_S_OK;
			run->writes++;
			run->bytes_written += data;
		}
		break;
	case VIRTIO_BLK_T_FLUSH:
		r = sync_image(q);
		if (!r) {
			status = VIRTIO_BLK_S_OK;
			run->flushes++;
		}
		break;
	case VIRTIO_BLK_T_GET_ID:
		data = data < AKVM_BLKQ_ID_BYTES ? data : AKVM_BLKQ_ID_BYTES;
		if ((k = stream(q, nsegs, 1, 0, data, q->iov)) < 0)
			return AKVM_BLKQ_REQUEST;
		for (int i = 0, at = 0; i < k; at += (int)q->iov[i].iov_len, i++)
			memcpy(q->iov[i].iov_base, c->id + at, q->iov[i].iov_len);
		status = VIRTIO_BLK_S_OK;
		written += data;
		break;
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES:
		return AKVM_BLKQ_REQUEST;
	default:
		status = VIRTIO_BLK_S_UNSUPP;
	}
	if (q->stopped)
		return AKVM_BLKQ_STOPPED;
	if (r < 0) {
		run->io_errors++;
		run->error = (int)-r;
	}
	*status_byte = (unsigned char)status;
	used[0] = head;
	used[1] = (uint32_t)(written < wlen ? written : wlen);
	run->last_avail = (run->last_avail + 1) & 0xFFFF;
	run->used_idx = (run->used_idx + 1) & 0xFFFF;
	__atomic_store_n(used_idx, (uint16_t)run->used_idx, __ATOMIC_RELEASE);
	run->completed++;
	return TAKEN;
}

/* Requests the driver made available past last_avail, or -1 (a ring error). */
static int pending(const struct akvm_blkq *q, const struct akvm_blkq_run *run)
{
	uint16_t *idx = word(q, q->c.driver, 2);

	if (!idx)
		return -1;
	unsigned int n = (uint16_t)(__atomic_load_n(idx, __ATOMIC_ACQUIRE) - run->last_avail);
	return n > q->c.size ? -1 : (int)n;
}

/* Virtqueue.set_notify(): 0, or -1 when the word is outside guest RAM. */
static int set_notify(const struct akvm_blkq *q, const struct akvm_blkq_run *run, int enabled)
{
	uint16_t *w;

	if (q->c.event_idx && !enabled)
		return 0;			/* avail_event just stays behind */
	if (!(w = notify_word(q)))
		return -1;
	__atomic_store_n(w, q->c.event_idx ? (uint16_t)run->last_avail
					   : enabled ? 0 : VRING_USED_F_NO_NOTIFY, __ATOMIC_RELAXED);
	if (enabled)
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return 0;
}

/* One round: the requests available when it starts (then Python sends the
 * interrupt, if wanted, before the next round). */
static int round_locked(struct akvm_blkq *q, struct akvm_blkq_run *run)
{
	int n, code;

	if (q->stopped)
		return AKVM_BLKQ_STOPPED;
	if (set_notify(q, run, 0) || (n = pending(q, run)) < 0)
		return AKVM_BLKQ_RING;
	for (; n; n--) {
		if (run->limit && run->completed == run->limit)
			return AKVM_BLKQ_AGAIN;	/* notifications stay off: Python calls again */
		if ((code = serve_one(q, run)) != TAKEN)
			return code;
	}
	if (set_notify(q, run, 1) || (n = pending(q, run)) < 0)
		return AKVM_BLKQ_RING;
	return n ? AKVM_BLKQ_AGAIN : AKVM_BLKQ_DONE;
}

/* Virtqueue.needs_interrupt() for everything pushed in this call. */
static int needs_interrupt(struct akvm_blkq *q, struct akvm_blkq_run *run)
{
	uint16_t *w = interrupt_word(q);	/* checked before each push */

	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	uint16_t value = __atomic_load_n(w, __ATOMIC_RELAXED);
	if (!q->c.event_idx)
		return !(value & VRING_AVAIL_F_NO_INTERRUPT);
	int old = run->signalled_used;
	uint16_t now = (uint16_t)run->used_idx;
	run->signalled_used = now;
	return old < 0 || (uint16_t)(now - value - 1) < (uint16_t)(now - old);
}

struct akvm_blkq *akvm_blkq_new(const struct akvm_blkq_config *config,
				const struct akvm_mem_slot *slots, unsigned int nslots)
{
	struct akvm_blkq *q;

	q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->idle, NULL);
	q->c = *config;
	q->slots = slots;
	q->nslots = nslots;
	return q;
}

void akvm_blkq_free(struct akvm_blkq *q)
{
	if (!q)
		return;
	pthread_cond_destroy(&q->idle);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

void akvm_blkq_stop(struct akvm_blkq *q)
{
	pthread_mutex_lock(&q->lock);
	q->stopped = 1;
	while (q->io)
		pthread_cond_wait(&q->idle, &q->lock);
	pthread_mutex_unlock(&q->lock);
}

int akvm_blkq_serve(struct akvm_blkq *q, struct akvm_blkq_run *run)
{
	int code;

	run->completed = 0;
	run->notify = 0;
	run->error = 0;
	run->io_errors = run->reads = run->writes = run->flushes = 0;
	run->bytes_read = run->bytes_written = 0;
	pthread_mutex_lock(&q->lock);
	code = round_locked(q, run);
	if (code != AKVM_BLKQ_STOPPED && run->completed)
		run->notify = needs_interrupt(q, run);
	pthread_mutex_unlock(&q->lock);
	return code;
}
