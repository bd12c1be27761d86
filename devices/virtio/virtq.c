/* Walking a split virtqueue's descriptor chain (virtio 1.2, 2.7.5 and 2.7.5.3)
 * in guest memory given as host-mapped slots: the C twin of
 * akvm.devices.virtio.queue.Virtqueue.walk_python(), which tests compare it with.
 * Every descriptor read is bounds-checked against the slots; anything that
 * breaks the ring's rules ends the walk with a negative AKVM_VQ_E_* code. */
#include <linux/virtio_ring.h>
#include <stdint.h>
#include <string.h>

#include "virtq.h"

#define DESC_SIZE		16
#define MAX_QUEUE_SIZE		32768
#define MAX_CHAIN_BYTES		0xFFFFFFFFull

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

/* Copy n bytes at gpa into out when they lie inside one slot. */
static int mem_read(const struct akvm_mem_slot *slots, unsigned int nslots,
		    uint64_t gpa, void *out, uint64_t n)
{
	const unsigned char *p = akvm_ram(slots, nslots, gpa, n);

	if (!p)
		return -1;
	memcpy(out, p, n);
	return 0;
}

int akvm_vq_walk(const struct akvm_mem_slot *slots, unsigned int nslots,
		 unsigned long long desc_table, unsigned int size, unsigned int head,
		 int indirect_ok, struct akvm_vq_seg *out, unsigned int max_out,
		 unsigned long long *readable_len, unsigned long long *writable_len)
{
	uint64_t table = desc_table, rlen = 0, wlen = 0;
	unsigned int count = size, index = head, seen = 0, n = 0;
	int in_indirect = 0, any_writable = 0;

	if (head >= size)
		return AKVM_VQ_E_HEAD;
	for (;;) {
		struct desc d;

		if (index >= count)
			return AKVM_VQ_E_NEXT;
		if (++seen > count)
			return AKVM_VQ_E_LOOP;
		uint64_t offset = (uint64_t)DESC_SIZE * index;
		if (table > UINT64_MAX - offset ||
		    mem_read(slots, nslots, table + offset, &d, sizeof(d)))
			return AKVM_VQ_E_MEMORY;
		if (d.flags & VRING_DESC_F_INDIRECT) {
			if (!indirect_ok)
				return AKVM_VQ_E_INDIRECT_FEATURE;
			if (in_indirect)
				return AKVM_VQ_E_INDIRECT_NESTED;
			if (d.flags & VRING_DESC_F_NEXT)
				return AKVM_VQ_E_INDIRECT_NEXT;
			if (d.len == 0 || d.len % DESC_SIZE || d.len / DESC_SIZE > MAX_QUEUE_SIZE)
				return AKVM_VQ_E_INDIRECT_SIZE;
			if (d.addr % DESC_SIZE || d.addr > UINT64_MAX - d.len + 1)
				return AKVM_VQ_E_INDIRECT_ADDR;
			table = d.addr;
			count = d.len / DESC_SIZE;
			index = 0;
			seen = 0;
			in_indirect = 1;
			continue;
		}
		if (d.len && d.addr > UINT64_MAX - d.len + 1)
			return AKVM_VQ_E_WRAPS;
		if (d.flags & VRING_DESC_F_WRITE) {
			wlen += d.len;
			if (d.len)
				any_writable = 1;
		} else {
			if (any_writable)
				return AKVM_VQ_E_READ_AFTER_WRITE;
			rlen += d.len;
		}
		if (rlen > MAX_CHAIN_BYTES || wlen > MAX_CHAIN_BYTES)
			return AKVM_VQ_E_TOO_LONG;
		if (d.len) {
			if (n == max_out)
				return AKVM_VQ_E_TOO_MANY;
			out[n].addr = d.addr;
			out[n].len = d.len;
			out[n].write = !!(d.flags & VRING_DESC_F_WRITE);
			n++;
		}
		if (!(d.flags & VRING_DESC_F_NEXT))
			break;
		index = d.next;
	}
	*readable_len = rlen;
	*writable_len = wlen;
	return (int)n;
}
