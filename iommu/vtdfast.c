/* DMA translated in C from the VT-d unit's IOTLB, for device engines in C
 * (dmaxlate.h): hits only, under the unit's lock; the rest is Python's. */
#include <string.h>

#include "vtdfast.h"

int akvm_vtd_fast_lock(void *opaque)
{
	struct akvm_vtd_fast *f = opaque;

	akvm_vtd_door_lock(f->door);
	if (*f->epoch != f->seen) {
		akvm_vtd_door_unlock(f->door);
		return -1;
	}
	return 0;
}

void akvm_vtd_fast_unlock(void *opaque)
{
	struct akvm_vtd_fast *f = opaque;

	akvm_vtd_door_unlock(f->door);
}

int akvm_vtd_fast_translate(void *opaque, unsigned long long addr, int write,
			    unsigned long long *gpa, unsigned long long *span)
{
	struct akvm_vtd_fast *f = opaque;
	unsigned long long page = addr >> 12, gen = akvm_iotlb_generation(f->tlb);

	if (addr >= f->limit)
		return -1;
	if (gen != f->generation) {
		memset(f->recent, 0, sizeof(f->recent));
		f->generation = gen;
	}
	struct akvm_vtd_fast_recent *r = &f->recent[page % AKVM_VTD_FAST_RECENT];
	if (r->page != page + 1) {
		unsigned long long frame;
		unsigned int perm, shift;
		if (akvm_iotlb_leaf(f->tlb, f->did, addr, &frame, &perm, &shift))
			return -1;
		*r = (struct akvm_vtd_fast_recent){
			page + 1, frame + (addr & ((1ULL << shift) - 1) & ~0xFFFULL), perm };
	}
	if (!(r->perm & (write ? AKVM_IOTLB_W : AKVM_IOTLB_R)))
		return -1;
	*gpa = r->frame + (addr & 0xFFF);
	*span = 0x1000 - (addr & 0xFFF);
	/* the next pages too, while they are known here and follow in guest RAM */
	for (unsigned int k = 1; k < AKVM_VTD_FAST_RUN; k++) {
		const struct akvm_vtd_fast_recent *n = &f->recent[(page + k) % AKVM_VTD_FAST_RECENT];
		if (n->page != page + k + 1 || !(n->perm & (write ? AKVM_IOTLB_W : AKVM_IOTLB_R)) ||
		    n->frame != r->frame + k * 0x1000ULL)
			break;
		*span += 0x1000;
	}
	if (*span > f->limit - addr)
		*span = f->limit - addr;
	f->hits++;
	return 0;
}
