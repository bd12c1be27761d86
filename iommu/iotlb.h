#ifndef AKVM_IOTLB_H
#define AKVM_IOTLB_H

/* The IOTLB's table (iotlb.c): which (domain, page size, page number)
 * entries exist, in which slot (0..capacity-1), in LRU order; the caller
 * keeps what each slot holds. akvm.iommu.cache.PyIotlb is the Python twin.
 * lookup() tries 4 KiB, 2 MiB then 1 GiB pages and returns a slot or -1;
 * insert() returns the slot (and in *evicted the one it evicted, or -1);
 * invalidate() writes the slots it emptied to removed[] and returns their
 * number (-ENOSPC when max is too small); order() lists slots LRU first. */
#define AKVM_IOTLB_GLOBAL 1
#define AKVM_IOTLB_DOMAIN 2
#define AKVM_IOTLB_PAGE 3
struct akvm_iotlb;
struct akvm_iotlb *akvm_iotlb_new(unsigned int capacity);
void akvm_iotlb_free(struct akvm_iotlb *t);
int akvm_iotlb_lookup(struct akvm_iotlb *t, unsigned int did, unsigned long long iova);
int akvm_iotlb_insert(struct akvm_iotlb *t, unsigned int did, unsigned long long iova,
		      unsigned int shift, int *evicted);
int akvm_iotlb_invalidate(struct akvm_iotlb *t, int granularity, unsigned int did,
			  unsigned long long address, unsigned int address_mask,
			  int *removed, unsigned int max);
/* One invalidation request as the unit carries it out (akvm.iommu.invalidation.
 * Invalidator.iotlb's twin): without PSI a page request is done for the
 * domain, an address mask above MAMV is invalid. Returns the granularity
 * done, 0 when invalid, -1 when it would empty more than max slots; the
 * slots emptied are removed[0 .. *emptied). */
int akvm_iotlb_request(struct akvm_iotlb *t, unsigned int granularity, unsigned int did,
		       unsigned long long address, unsigned int address_mask, int psi,
		       unsigned int mamv, int *removed, unsigned int max, unsigned int *emptied);
int akvm_iotlb_order(const struct akvm_iotlb *t, int *out, unsigned int max);
/* What a slot maps, set after insert(): the page's first guest-physical byte
 * and AKVM_IOTLB_R | AKVM_IOTLB_W (0 for a cached fault). leaf() looks one up
 * as lookup() does: 0 with the frame, permissions and page shift, or -1.
 * generation() moves whenever what the table gives changes or goes (an
 * insert that evicts, set_leaf, an invalidation): a copy of a leaf is good
 * while it stays. */
#define AKVM_IOTLB_R 1
#define AKVM_IOTLB_W 2
void akvm_iotlb_set_leaf(struct akvm_iotlb *t, int slot, unsigned long long frame,
			 unsigned int perm);
int akvm_iotlb_leaf(struct akvm_iotlb *t, unsigned int did, unsigned long long iova,
		    unsigned long long *frame, unsigned int *perm, unsigned int *shift);
unsigned long long akvm_iotlb_generation(const struct akvm_iotlb *t);
/* Who filled a slot (the requester id, the address of the leaf entry), for
 * reports; set after set_leaf() by whoever inserted. info() reads a slot
 * back, used or not (a slot emptied keeps its key until reused): the key,
 * the leaf, the origin and its stamp, which is new at every insert of a new
 * key, so a caller that keeps a copy of what a slot holds knows whether the
 * slot was refilled since (by C: vtdfast.c fills the IOTLB on a miss).
 * victim() is the slot the next insert of a new key empties, or -1;
 * count() how many slots are used. */
struct akvm_iotlb_info {
	unsigned long long iova, frame, pte, stamp;
	unsigned int did, shift, perm, sid, used;
};
void akvm_iotlb_set_origin(struct akvm_iotlb *t, int slot, unsigned int sid,
			   unsigned long long pte);
int akvm_iotlb_info(const struct akvm_iotlb *t, int slot, struct akvm_iotlb_info *out);
unsigned long long akvm_iotlb_stamp(const struct akvm_iotlb *t, int slot);
int akvm_iotlb_victim(const struct akvm_iotlb *t);
unsigned int akvm_iotlb_count(const struct akvm_iotlb *t);

#endif
