/* Queued invalidation's common case in C: IOTLB and wait descriptors.
 *
 * Akaros flushes a domain's IOTLB on every TLB shootdown, and batches page
 * descriptors before one wait. This walks the invalidation queue from head
 * to tail, doing IOTLB descriptors on the C table (iotlb.c) and wait
 * descriptors that only write a status, and stops at the first descriptor
 * it does not own: context-cache, device-TLB, interrupt-entry-cache, a wait
 * that asks for an interrupt, anything malformed or unreadable. Python
 * (akvm.iommu.invalidation) carries out that one, with its error handling, and
 * calls here again; it is also the twin this file is tested against. */
#include <errno.h>
#include <string.h>

#include "qi.h"
#include "vtdspec.h"

static unsigned long long bits(unsigned int hi, unsigned int lo)
{
	unsigned long long top = hi == 63 ? ~0ULL : (1ULL << (hi + 1)) - 1;
	return top & ~((1ULL << lo) - 1);
}

/* 1 when done, 0 when Python must do it. */
static int iotlb(struct akvm_iotlb *tlb, unsigned long long lo, unsigned long long hi,
		 int psi, unsigned int mamv, int *removed, unsigned int room,
		 struct akvm_qi_result *out)
{
	unsigned int n;
	int done;

	if (lo & (bits(15, 8) | bits(63, 32)) || hi & bits(11, 7))
		return 0;
	done = akvm_iotlb_request(tlb, (lo >> 4) & 3, (lo >> 16) & 0xFFFF, hi & ~0xFFFULL,
				  hi & VTD_IVA_AM_MASK, psi, mamv, removed, room, &n);
	if (done <= 0)
		return 0;	/* invalid (IQE), or more entries than room: Python's */
	out->removed += n;
	out->iotlb[done]++;
	return 1;
}

static int wait(const struct akvm_mem_slot *slots, unsigned int nslots,
		unsigned long long lo, unsigned long long hi, struct akvm_qi_result *out)
{
	unsigned char *status;
	unsigned int value = (unsigned int)(lo >> 32);

	if (lo & bits(31, 7) || hi & bits(1, 0) || lo & VTD_WAIT_IF)
		return 0;
	if (lo & VTD_WAIT_SW) {
		status = akvm_ram(slots, nslots, hi & ~3ULL, 4);
		if (!status)
			return 0;
		memcpy(status, &value, 4);
		out->waits_status++;
	} else {
		out->waits_none++;
	}
	return 1;
}

int akvm_qi_process(const struct akvm_mem_slot *slots, unsigned int nslots,
		    struct akvm_iotlb *tlb, unsigned long long base, unsigned int entries,
		    unsigned int head, unsigned int tail, int psi, unsigned int mamv,
		    int *removed, unsigned int max_removed, struct akvm_qi_result *out)
{
	memset(out, 0, sizeof(*out));
	out->head = head;
	/* Walking from a head outside the queue would run memory past its end,
	 * a tail outside it would never be reached, and no entries divide by 0. */
	if (!entries || head >= entries || tail >= entries)
		return -EINVAL;
	while (head != tail) {
		const unsigned char *d = akvm_ram(slots, nslots, base + 16ULL * head, 16);
		unsigned long long lo, hi;
		int done = 0;

		if (!d)
			break;
		memcpy(&lo, d, 8);
		memcpy(&hi, d + 8, 8);
		if ((lo & 0xF) == VTD_DESC_IOTLB && !(lo & bits(11, 9)))
			done = iotlb(tlb, lo, hi, psi, mamv, removed + out->removed,
				     max_removed - out->removed, out);
		else if ((lo & 0xF) == VTD_DESC_WAIT && !(lo & bits(11, 9)))
			done = wait(slots, nslots, lo, hi, out);
		if (!done)
			break;
		out->descriptors++;
		head = (head + 1) % entries;
	}
	out->head = head;
	return 0;
}
