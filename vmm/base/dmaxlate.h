/* How C device code reaches memory that a DmaSpace translates (an IOMMU):
 * a translator it calls for each page, without Python. akvm.base.dma's
 * DmaSpace.fast_translator() hands one out while it can serve the device
 * (akvm.iommu.fastdma for VT-d); anything it cannot translate is the Python
 * DmaSpace's to do (a miss, a fault to record).
 *
 * lock() holds the translations still (0), or says they may have changed
 * since the translator was handed out (nonzero, nothing held): the caller
 * then leaves the access to Python. translate() gives the guest-physical
 * address of addr and how many bytes from there share its translation, or
 * nonzero; it is called with the lock held, and the lock is held while the
 * memory it named is accessed, so an invalidation that completes meanwhile
 * waits for that access (as hardware drains DMA in flight). */
#ifndef AKVM_DMAXLATE_H
#define AKVM_DMAXLATE_H

struct akvm_dma_xlate {
	int (*lock)(void *opaque);
	void (*unlock)(void *opaque);
	int (*translate)(void *opaque, unsigned long long addr, int write,
			 unsigned long long *gpa, unsigned long long *span);
	void *opaque;
};

#ifndef AKVM_CDEF
/* A step's hold on x's lock, *held saying whether it has it: taken once for
 * all the step's accesses (0), or -1 with nothing held when x's translations
 * changed since it was handed out. */
static inline int akvm_xlate_hold(const struct akvm_dma_xlate *x, int *held)
{
	if (*held)
		return 0;
	if (x->lock(x->opaque))
		return -1;
	*held = 1;
	return 0;
}

/* The step is done with the memory x named. */
static inline void akvm_xlate_let_go(const struct akvm_dma_xlate *x, int *held)
{
	if (*held) {
		x->unlock(x->opaque);
		*held = 0;
	}
}
#endif

#endif
