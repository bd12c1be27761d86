/* The IOTLB's table: (domain, page size, page number) -> slot, bounded, LRU.
 *
 * akvm.iommu.cache.Iotlb keeps what a slot holds (the translation or cached
 * fault, for the checker and reports); this file owns which slots exist:
 * lookups over the three page sizes, insertion with least-recently-used
 * eviction, and the invalidation granularities of VT-d 6.5 (global,
 * domain, page-selective with an address mask covering large pages).
 * akvm.iommu.cache.PyIotlb is the Python twin. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "iotlb.h"

#define NIL (-1)
static const unsigned int shifts[3] = { 12, 21, 30 };

struct slot {
	unsigned long long pfn;		/* iova >> shift */
	unsigned long long frame;	/* akvm_iotlb_set_leaf(); perm 0 until then */
	unsigned int perm;
	unsigned long long pte;		/* akvm_iotlb_set_origin() */
	unsigned int sid;
	unsigned long long stamp;	/* the table's insert count when this key came */
	unsigned int did;
	unsigned int shift_index;
	int used;
	int prev, next;			/* LRU: prev is more recent */
	int hnext;			/* hash chain */
};

struct akvm_iotlb {
	unsigned int capacity, count, nbuckets;
	struct slot *slots;
	int *buckets;
	int mru, lru, free;		/* free list threads through hnext */
	unsigned int by_shift[3];
	unsigned long long generation;	/* moves whenever a translation changes or goes */
	unsigned long long stamps;	/* inserts of a new key so far */
};

static unsigned int hash(unsigned int did, unsigned int si, unsigned long long pfn, unsigned int n)
{
	unsigned long long h = (pfn * 0x9E3779B97F4A7C15ULL) ^ ((unsigned long long)did << 2 | si);
	h ^= h >> 29;
	return (unsigned int)(h * 0xBF58476D1CE4E5B9ULL >> 32) & (n - 1);
}

struct akvm_iotlb *akvm_iotlb_new(unsigned int capacity)
{
	struct akvm_iotlb *t = calloc(1, sizeof(*t));

	if (!t || !capacity)
		goto fail;
	t->capacity = capacity;
	for (t->nbuckets = 16; t->nbuckets < 2 * capacity; t->nbuckets *= 2)
		;
	t->slots = calloc(capacity, sizeof(*t->slots));
	t->buckets = malloc(t->nbuckets * sizeof(*t->buckets));
	if (!t->slots || !t->buckets)
		goto fail;
	for (unsigned int i = 0; i < t->nbuckets; i++)
		t->buckets[i] = NIL;
	for (unsigned int i = 0; i < capacity; i++)
		t->slots[i].hnext = i + 1 < capacity ? (int)i + 1 : NIL;
	t->free = 0;
	t->mru = t->lru = NIL;
	return t;
fail:
	if (t) {
		free(t->slots);
		free(t->buckets);
	}
	free(t);
	return NULL;
}

void akvm_iotlb_free(struct akvm_iotlb *t)
{
	if (!t)
		return;
	free(t->slots);
	free(t->buckets);
	free(t);
}

static void lru_unlink(struct akvm_iotlb *t, int i)
{
	struct slot *s = &t->slots[i];

	if (s->prev != NIL)
		t->slots[s->prev].next = s->next;
	else
		t->mru = s->next;
	if (s->next != NIL)
		t->slots[s->next].prev = s->prev;
	else
		t->lru = s->prev;
}

static void lru_push(struct akvm_iotlb *t, int i)
{
	struct slot *s = &t->slots[i];

	s->prev = NIL;
	s->next = t->mru;
	if (t->mru != NIL)
		t->slots[t->mru].prev = i;
	t->mru = i;
	if (t->lru == NIL)
		t->lru = i;
}

static int find(const struct akvm_iotlb *t, unsigned int did, unsigned int si, unsigned long long pfn)
{
	for (int i = t->buckets[hash(did, si, pfn, t->nbuckets)]; i != NIL; i = t->slots[i].hnext) {
		const struct slot *s = &t->slots[i];
		if (s->pfn == pfn && s->did == did && s->shift_index == si)
			return i;
	}
	return NIL;
}

static void remove_slot(struct akvm_iotlb *t, int i)
{
	struct slot *s = &t->slots[i];
	int *link = &t->buckets[hash(s->did, s->shift_index, s->pfn, t->nbuckets)];

	while (*link != i)
		link = &t->slots[*link].hnext;
	*link = s->hnext;
	lru_unlink(t, i);
	t->by_shift[s->shift_index]--;
	t->count--;
	t->generation++;
	s->used = 0;
	s->hnext = t->free;
	t->free = i;
}

int akvm_iotlb_lookup(struct akvm_iotlb *t, unsigned int did, unsigned long long iova)
{
	for (unsigned int si = 0; si < 3; si++) {
		if (!t->by_shift[si])
			continue;
		int i = find(t, did, si, iova >> shifts[si]);
		if (i != NIL) {
			lru_unlink(t, i);
			lru_push(t, i);
			return i;
		}
	}
	return NIL;
}

int akvm_iotlb_insert(struct akvm_iotlb *t, unsigned int did, unsigned long long iova,
		      unsigned int shift, int *evicted)
{
	unsigned int si = shift == 21 ? 1 : shift == 30 ? 2 : 0;
	unsigned long long pfn = iova >> shifts[si];
	int i = find(t, did, si, pfn);

	*evicted = NIL;
	if (shift != shifts[si])
		return -EINVAL;
	if (i != NIL) {
		lru_unlink(t, i);
		lru_push(t, i);
		return i;
	}
	if (t->free == NIL) {
		*evicted = t->lru;
		remove_slot(t, t->lru);
	}
	i = t->free;
	t->free = t->slots[i].hnext;
	t->slots[i] = (struct slot){ .pfn = pfn, .did = did, .shift_index = si, .used = 1,
				     .stamp = ++t->stamps };
	unsigned int b = hash(did, si, pfn, t->nbuckets);
	t->slots[i].hnext = t->buckets[b];
	t->buckets[b] = i;
	lru_push(t, i);
	t->by_shift[si]++;
	t->count++;
	return i;
}

void akvm_iotlb_set_leaf(struct akvm_iotlb *t, int slot, unsigned long long frame,
			 unsigned int perm)
{
	if (slot >= 0 && (unsigned int)slot < t->capacity && t->slots[slot].used) {
		t->slots[slot].frame = frame;
		t->slots[slot].perm = perm;
		t->generation++;
	}
}

void akvm_iotlb_set_origin(struct akvm_iotlb *t, int slot, unsigned int sid,
			   unsigned long long pte)
{
	if (slot >= 0 && (unsigned int)slot < t->capacity && t->slots[slot].used) {
		t->slots[slot].sid = sid;
		t->slots[slot].pte = pte;
	}
}

int akvm_iotlb_info(const struct akvm_iotlb *t, int slot, struct akvm_iotlb_info *out)
{
	if (slot < 0 || (unsigned int)slot >= t->capacity)
		return -1;
	const struct slot *s = &t->slots[slot];
	out->did = s->did;
	out->shift = shifts[s->shift_index];
	out->iova = s->pfn << out->shift;
	out->frame = s->frame;
	out->perm = s->perm;
	out->pte = s->pte;
	out->sid = s->sid;
	out->stamp = s->stamp;
	out->used = s->used;
	return 0;
}

unsigned long long akvm_iotlb_stamp(const struct akvm_iotlb *t, int slot)
{
	return slot >= 0 && (unsigned int)slot < t->capacity ? t->slots[slot].stamp : 0;
}

int akvm_iotlb_victim(const struct akvm_iotlb *t)
{
	return t->free == NIL ? t->lru : NIL;
}

unsigned int akvm_iotlb_count(const struct akvm_iotlb *t)
{
	return t->count;
}

unsigned long long akvm_iotlb_generation(const struct akvm_iotlb *t)
{
	return t->generation;
}

int akvm_iotlb_leaf(struct akvm_iotlb *t, unsigned int did, unsigned long long iova,
		    unsigned long long *frame, unsigned int *perm, unsigned int *shift)
{
	int i = akvm_iotlb_lookup(t, did, iova);

	if (i == NIL)
		return -1;
	*frame = t->slots[i].frame;
	*perm = t->slots[i].perm;
	*shift = shifts[t->slots[i].shift_index];
	return 0;
}

/* Whether slot s overlaps [start, last]. */
static int overlaps(const struct slot *s, unsigned long long start, unsigned long long last)
{
	unsigned int sh = shifts[s->shift_index];
	unsigned long long first = s->pfn << sh;
	return first <= last && start <= first + ((1ULL << sh) - 1);
}

int akvm_iotlb_invalidate(struct akvm_iotlb *t, int granularity, unsigned int did,
			  unsigned long long address, unsigned int address_mask,
			  int *removed, unsigned int max)
{
	unsigned int n = 0;
	unsigned long long start = 0, last = ~0ULL;

	if (granularity == AKVM_IOTLB_PAGE && address_mask < 52) {
		unsigned long long size = 1ULL << (12 + address_mask);
		start = address & ~(size - 1);
		last = start + (size - 1);
	}
	if (granularity == AKVM_IOTLB_PAGE) {
		unsigned long long names = 0;
		for (unsigned int si = 0; si < 3; si++)
			if (t->by_shift[si])
				names += (last >> shifts[si]) - (start >> shifts[si]) + 1;
		if (names <= t->count) {	/* few pages to name: look each up */
			for (unsigned int si = 0; si < 3; si++) {
				if (!t->by_shift[si])
					continue;
				for (unsigned long long p = start >> shifts[si]; p <= last >> shifts[si]; p++) {
					int i = find(t, did, si, p);
					if (i == NIL)
						continue;
					if (n == max)
						return -ENOSPC;
					remove_slot(t, i);
					removed[n++] = i;
				}
			}
			return (int)n;
		}
	}
	for (unsigned int i = 0; i < t->capacity; i++) {
		const struct slot *s = &t->slots[i];
		if (!s->used)
			continue;
		if (granularity != AKVM_IOTLB_GLOBAL && s->did != did)
			continue;
		if (granularity == AKVM_IOTLB_PAGE && !overlaps(s, start, last))
			continue;
		if (n == max)
			return -ENOSPC;
		remove_slot(t, (int)i);
		removed[n++] = (int)i;
	}
	return (int)n;
}

int akvm_iotlb_request(struct akvm_iotlb *t, unsigned int granularity, unsigned int did,
		       unsigned long long address, unsigned int address_mask, int psi,
		       unsigned int mamv, int *removed, unsigned int max, unsigned int *emptied)
{
	int n;

	if (granularity == AKVM_IOTLB_PAGE && !psi)
		granularity = AKVM_IOTLB_DOMAIN;
	if (!granularity || granularity > AKVM_IOTLB_PAGE ||
	    (granularity == AKVM_IOTLB_PAGE && address_mask > mamv))
		return 0;
	n = akvm_iotlb_invalidate(t, (int)granularity, did, address, address_mask, removed, max);
	if (n < 0)
		return -1;
	*emptied = (unsigned int)n;
	return (int)granularity;
}

int akvm_iotlb_order(const struct akvm_iotlb *t, int *out, unsigned int max)
{
	unsigned int n = 0;

	for (int i = t->lru; i != NIL && n < max; i = t->slots[i].prev)
		out[n++] = i;
	return (int)n;
}
