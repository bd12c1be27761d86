/* Page pool for device structures, and MMIO mappings above 4 GiB. */
#ifndef VM_H
#define VM_H
#include "types.h"

/* A zeroed, page-aligned 4 KiB page from a static pool (never freed), or
 * NULL when the pool is exhausted.  Pages come from .bss, so they are
 * zero because the loader zeroes .bss: nothing is cleared at run time. */
void *page_alloc(void);
int page_pool_free(void);
static inline uint64_t virt_to_phys(const void *p)
{
	return (uint64_t)(uintptr_t)p - 0xFFFFFFFF80000000ULL;
}
/* Identity-map [pa, pa + len) uncached (2 MiB pages); pa < 512 GiB.
 * Below 4 GiB the boot tables already do.  Returns the address or 0. */
uintptr_t map_mmio(uint64_t pa, uint64_t len);

#endif
