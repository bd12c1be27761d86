/*
 * A bump allocator over a static pool of pages, for the structures that
 * devices read by DMA (IOMMU tables, invalidation queue, virtqueues,
 * buffers), and identity mappings for MMIO above 4 GiB.
 */
#include "vm.h"
#include "lib.h"
#include "mm.h"
#include "x86.h"

#define POOL_PAGES 160

static uint8_t pool[POOL_PAGES][PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));
static int pool_next;
static spinlock_t pool_lock;

void *page_alloc(void)
{
	void *p = NULL;
	spin_lock(&pool_lock);
	if (pool_next < POOL_PAGES)
		p = pool[pool_next++];
	spin_unlock(&pool_lock);
	return p;
}

int page_pool_free(void)
{
	return POOL_PAGES - pool_next;
}

extern uint64_t boot_pml4[];

/* boot_pml4[0] -> boot_pdpt_low: entries 0-3 map 0-4 GiB; we add PDs. */
uintptr_t map_mmio(uint64_t pa, uint64_t len)
{
	if (!len)
		return 0;
	if (pa + len <= PHYS_LIMIT)
		return (uintptr_t)pa;
	if (pa + len > (512ULL << 30) || pa + len < pa)
		return 0;
	uint64_t *pdpt = PHYS_TO_VIRT(boot_pml4[0] & ~0xFFFULL);
	for (uint64_t a = pa & ~((2ULL << 20) - 1); a < pa + len; a += 2ULL << 20) {
		unsigned gi = a >> 30, di = (a >> 21) & 511;
		if (!(pdpt[gi] & PTE_P)) {
			uint64_t *pd = page_alloc();
			if (!pd)
				return 0;
			pdpt[gi] = virt_to_phys(pd) | PTE_P | PTE_W;
		}
		uint64_t *pd = (uint64_t *)(uintptr_t)((pdpt[gi] & ~0xFFFULL) + 0xFFFFFFFF80000000ULL);
		pd[di] = a | PTE_P | PTE_W | PTE_PS | PTE_PWT | PTE_PCD;
	}
	write_cr3(read_cr3());
	return (uintptr_t)pa;
}
