#ifndef AKVM_BLKQ_H
#define AKVM_BLKQ_H

#include "guestram.h"

/* virtio-blk's request queue (blkq.c): one round of serving a queue with
 * direct DMA, as VirtioDevice.serve() does with VirtioBlk.handle() (the
 * Python twin): notifications off, every available IN, OUT, FLUSH, GET_ID
 * or unsupported request done in order and put on the used ring, then
 * notifications on. It stops, leaving the request unpopped, at one for
 * Python: any other type, or anything Python reports or refuses. The
 * queue's state travels in akvm_blkq_run, in and out. akvm_blkq_stop()
 * (a reset) returns once the queue will not touch guest memory again: it
 * waits for file I/O in flight (a read into guest RAM) to finish. */
#define AKVM_BLKQ_MAX_SEGS 1024		/* buffers per chain (IOV_MAX); more: Python */
#define AKVM_BLKQ_ID_BYTES 20
struct akvm_blkq_config {
	unsigned long long desc, driver, device;	/* an activated Virtqueue's */
	unsigned int size;
	int indirect, event_idx;		/* VIRTIO_F_INDIRECT_DESC, _EVENT_IDX */
	int fd;					/* the image */
	unsigned long long capacity;		/* in 512-byte sectors */
	int readonly;
	int write_through;			/* fdatasync each write: no VIRTIO_BLK_F_FLUSH */
	unsigned char id[AKVM_BLKQ_ID_BYTES];	/* GET_ID's answer, zero-padded */
};
struct akvm_blkq_run {
	unsigned int last_avail, used_idx;	/* in and out, as in Virtqueue */
	int signalled_used;			/* in and out; -1: none yet */
	unsigned int limit;			/* in: requests per call at most (0: all); more: AGAIN */
	unsigned int completed;			/* out: requests put on the used ring */
	int notify;				/* out: the driver wants an interrupt */
	int error;				/* out: errno of the last failed I/O */
	unsigned long long io_errors, reads, writes, flushes, bytes_read, bytes_written;
};
#define AKVM_BLKQ_DONE 0	/* no request left, notifications on */
#define AKVM_BLKQ_AGAIN 1	/* more came in during the round: call again */
#define AKVM_BLKQ_REQUEST 2	/* the next available request is Python's */
#define AKVM_BLKQ_RING 3	/* a ring word is out of reach: Python serves the queue */
#define AKVM_BLKQ_STOPPED 4	/* akvm_blkq_stop() was called */
struct akvm_blkq;
struct akvm_blkq *akvm_blkq_new(const struct akvm_blkq_config *config,
				const struct akvm_mem_slot *slots, unsigned int nslots);
void akvm_blkq_free(struct akvm_blkq *q);
void akvm_blkq_stop(struct akvm_blkq *q);
int akvm_blkq_serve(struct akvm_blkq *q, struct akvm_blkq_run *run);


#endif
