/* Split virtqueues (virtq.c): walk the descriptor chain that starts at
 * `head` of the table at guest-physical `desc` (`size` entries), reading
 * guest memory through the host mappings of its slots. Non-empty buffers
 * go to out[] in chain order (write = device-writable); the byte totals to
 * *readable_len / *writable_len. Returns the number of buffers, or one of
 * the negative codes below; akvm.devices.virtio.queue is the Python twin. */
#ifndef AKVM_VIRTQ_H
#define AKVM_VIRTQ_H

#include "guestram.h"

struct akvm_vq_seg {
	unsigned long long addr;
	unsigned int len;
	unsigned int write;
};
#define AKVM_VQ_E_HEAD -1		/* head outside the table */
#define AKVM_VQ_E_NEXT -2		/* next outside the table */
#define AKVM_VQ_E_LOOP -3		/* loop, or longer than the table */
#define AKVM_VQ_E_MEMORY -4		/* a descriptor outside guest RAM */
#define AKVM_VQ_E_INDIRECT_FEATURE -5	/* VIRTIO_F_INDIRECT_DESC not negotiated */
#define AKVM_VQ_E_INDIRECT_NESTED -6
#define AKVM_VQ_E_INDIRECT_NEXT -7	/* INDIRECT together with NEXT */
#define AKVM_VQ_E_INDIRECT_SIZE -8
#define AKVM_VQ_E_INDIRECT_ADDR -9
#define AKVM_VQ_E_WRAPS -10		/* a buffer wrapping the address space */
#define AKVM_VQ_E_READ_AFTER_WRITE -11
#define AKVM_VQ_E_TOO_LONG -12		/* more than 4 GiB one way */
#define AKVM_VQ_E_TOO_MANY -13		/* more buffers than out[] holds */
int akvm_vq_walk(const struct akvm_mem_slot *slots, unsigned int nslots,
		 unsigned long long desc, unsigned int size, unsigned int head,
		 int indirect_ok, struct akvm_vq_seg *out, unsigned int max_out,
		 unsigned long long *readable_len, unsigned long long *writable_len);

#ifndef AKVM_CDEF
#include <stdint.h>
#include <sys/uio.h>

/* The host address of [gpa + off, gpa + off + n) when it lies inside one
 * slot; NULL also when gpa + off overflows. */
static inline unsigned char *akvm_vq_ram(const struct akvm_mem_slot *slots, unsigned int nslots,
					 uint64_t gpa, uint64_t off, uint64_t n)
{
	if (gpa > UINT64_MAX - off)
		return 0;
	return akvm_ram(slots, nslots, gpa + off, n);
}

/* [offset, offset + n) of a walked chain's device-readable (write = 0) or
 * device-writable stream as host pieces, each inside one slot, in iov[]
 * (segs has at most as many entries as iov). Returns how many, or -1 when
 * a piece is outside guest RAM. */
static inline int akvm_vq_stream(const struct akvm_mem_slot *slots, unsigned int nslots,
				 const struct akvm_vq_seg *segs, int nsegs, int write,
				 uint64_t offset, uint64_t n, struct iovec *iov)
{
	int k = 0;

	for (int i = 0; i < nsegs && n; i++) {
		const struct akvm_vq_seg *s = &segs[i];
		if ((int)s->write != write)
			continue;
		if (offset >= s->len) {
			offset -= s->len;
			continue;
		}
		uint64_t take = s->len - offset < n ? s->len - offset : n;
		unsigned char *p = akvm_vq_ram(slots, nslots, s->addr, offset, take);
		if (!p)
			return -1;
		iov[k].iov_base = p;
		iov[k].iov_len = take;
		k++;
		offset = 0;
		n -= take;
	}
	return k;
}
#endif


#endif
