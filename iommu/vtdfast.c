/* DMA translated in C from the VT-d unit's IOTLB, for device engines in C
 * (dmaxlate.h), under the unit's lock: hits, and misses whose walk gives a
 * page with the permission asked for, which fill the IOTLB as
 * akvm.iommu.vtd.VtdIommu._translate does. Faults are Python's: it walks
 * again and records them.
 *
 * What C inserts is found by Python through the slot's stamp (iotlb.h):
 * akvm.iommu.cache.Iotlb adopts the slot's contents when it next reads it.
 * Slots an invalidation in C emptied keep their keys until Python takes
 * them (vtddoor.c); nothing is inserted here until then. */
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

/* Count an eviction of domain did's entry; 0 when no entry is left for it. */
static int count_eviction(struct akvm_vtd_fast *f, unsigned int did, int commit)
{
	for (unsigned int k = 0; k < AKVM_VTD_FAST_EVICTED; k++) {
		struct akvm_vtd_fast_evicted *e = &f->evicted[k];
		if (e->count && e->did != did)
			continue;
		if (commit) {
			e->did = did;
			e->count++;
		}
		return 1;
	}
	return 0;
}

/* An IOTLB miss for addr: walk, insert, and give the page in *r; -1 when
 * Python must do it (a fault to record, a permission missing, or no room to
 * account for what the insert evicts). */
static int miss(struct akvm_vtd_fast *f, unsigned long long addr, int write,
		struct akvm_vtd_fast_recent *r)
{
	const struct akvm_mem_slot *slots;
	unsigned int nslots, perm;
	struct akvm_sl_leaf leaf;
	struct akvm_iotlb_info old = { 0 };
	int slot, evicted, victim;

	if (!f->levels || akvm_vtd_door_removed_pending(f->door))
		return -1;
	slots = akvm_vtd_door_slots(f->door, &nslots);
	if (!slots || akvm_sl_walk(slots, nslots, f->slptptr, f->levels, f->width, f->haw,
				   f->large_pages, addr, write, &leaf))
		return -1;
	perm = (leaf.read ? AKVM_IOTLB_R : 0) | (leaf.write ? AKVM_IOTLB_W : 0);
	if (!(perm & (write ? AKVM_IOTLB_W : AKVM_IOTLB_R)))
		return -1;
	victim = akvm_iotlb_victim(f->tlb);
	if (victim >= 0 && (akvm_iotlb_info(f->tlb, victim, &old) ||
			    !count_eviction(f, old.did, 0)))
		return -1;
	slot = akvm_iotlb_insert(f->tlb, f->did, leaf.iova, leaf.shift, &evicted);
	if (slot < 0)
		return -1;
	akvm_iotlb_set_leaf(f->tlb, slot, leaf.frame, perm);
	akvm_iotlb_set_origin(f->tlb, slot, f->sid, leaf.pte);
	if (evicted >= 0) {
		count_eviction(f, old.did, 1);
		/* what `recent` holds of the evicted page goes with it */
		if (old.did == f->did) {
			if (old.shift == 12) {
				struct akvm_vtd_fast_recent *o =
					&f->recent[(old.iova >> 12) % AKVM_VTD_FAST_RECENT];
				if (o->page == (old.iova >> 12) + 1)
					o->page = 0;
			} else {
				memset(f->recent, 0, sizeof(f->recent));
			}
		}
	}
	/* the generation moved for this insert only, all of it reflected above */
	f->generation = akvm_iotlb_generation(f->tlb);
	f->misses++;
	*r = (struct akvm_vtd_fast_recent){
		(addr >> 12) + 1, leaf.frame + (addr & ((1ULL << leaf.shift) - 1) & ~0xFFFULL), perm };
	return 0;
}

int akvm_vtd_fast_translate(void *opaque, unsigned long long addr, int write,
			    unsigned long long *gpa, unsigned long long *span)
{
	struct akvm_vtd_fast *f = opaque;
	unsigned long long page = addr >> 12, gen = akvm_iotlb_generation(f->tlb);

	if (addr >= f->limit)
		return -1;
	if (f->identity) {
		*gpa = addr;
		*span = f->limit - addr;
		return 0;
	}
	if (gen != f->generation) {
		memset(f->recent, 0, sizeof(f->recent));
		f->generation = gen;
	}
	struct akvm_vtd_fast_recent *r = &f->recent[page % AKVM_VTD_FAST_RECENT];
	int missed = 0;
	if (r->page != page + 1) {
		unsigned long long frame;
		unsigned int perm, shift;
		if (akvm_iotlb_leaf(f->tlb, f->did, addr, &frame, &perm, &shift)) {
			if (miss(f, addr, write, r))
				return -1;
			missed = 1;
		} else {
			*r = (struct akvm_vtd_fast_recent){
				page + 1, frame + (addr & ((1ULL << shift) - 1) & ~0xFFFULL), perm };
		}
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
	if (!missed)
		f->hits++;
	return 0;
}
