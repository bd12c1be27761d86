#ifndef AKVM_VTDFAST_H
#define AKVM_VTDFAST_H

#include "iotlb.h"
#include "slwalk.h"
#include "vtddoor.h"

/* A device's DMA translated in C from the unit's IOTLB (vtdfast.c): the
 * akvm_dma_xlate (dmaxlate.h) that akvm.iommu.fastdma hands a device while
 * its context (domain `did`, input addresses below `limit`) is translated.
 * An IOTLB miss is walked here (slwalk.c) from the context as the context
 * cache holds it (`slptptr`, `levels`, `width`; `haw` and `large_pages`
 * the unit's) and the leaf goes into the IOTLB as akvm.iommu.vtd would put
 * it; a walk that faults, a leaf without the permission asked for, a
 * cached fault, or an IOTLB that cannot take the entry now is
 * akvm.iommu.vtd's to do again (it records faults). The lock is the unit's;
 * `epoch` is the unit's count of context-cache and translation-enable
 * changes, and a translator handed out at `seen` refuses once it moved.
 * With `identity` set it serves a context that passes DMA through (or a
 * unit with translation off) instead: addresses below `limit` are
 * guest-physical, for as long as the epoch stays. */
/* What the last translations were, while the IOTLB's generation stays:
 * each page's first use goes to the IOTLB (a hash lookup, LRU updated), the
 * next ones come from here. */
#define AKVM_VTD_FAST_RECENT 4096
#define AKVM_VTD_FAST_RUN 16		/* pages one translation may span */
struct akvm_vtd_fast_recent {
	unsigned long long page;	/* iova >> 12, + 1 (0: empty) */
	unsigned long long frame;	/* guest-physical address of that 4 KiB */
	unsigned int perm;
};
#define AKVM_VTD_FAST_EVICTED 8	/* domains whose evictions one collect can carry */
struct akvm_vtd_fast_evicted {
	unsigned int did;
	unsigned long long count;	/* 0: a free entry */
};
struct akvm_vtd_fast {
	struct akvm_vtd_door *door;
	struct akvm_iotlb *tlb;
	const unsigned long long *epoch;
	unsigned long long seen;
	unsigned int did;
	unsigned long long limit;
	unsigned long long slptptr;	/* the context's second-level table */
	unsigned int levels;		/* its levels (0: no walks in C) */
	unsigned int width, haw, large_pages;
	unsigned int sid;		/* the requester, for the IOTLB's reports */
	unsigned int identity;		/* pass-through: no IOTLB, no walk */
	/* Python moves these into the unit's statistics: */
	unsigned long long hits;	/* IOTLB hits */
	unsigned long long misses;	/* IOTLB misses walked and filled here */
	struct akvm_vtd_fast_evicted evicted[AKVM_VTD_FAST_EVICTED];	/* by those fills */
	unsigned long long generation;	/* the IOTLB's, when `recent` was filled */
	struct akvm_vtd_fast_recent recent[AKVM_VTD_FAST_RECENT];
};
int akvm_vtd_fast_lock(void *fast);
void akvm_vtd_fast_unlock(void *fast);
int akvm_vtd_fast_translate(void *fast, unsigned long long addr, int write,
			    unsigned long long *gpa, unsigned long long *span);

#endif
