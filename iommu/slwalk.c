/* The VT-d second-level page walk (VT-d 3.x 3.7, 9.8) over guest RAM given
 * as host-mapped slots: the C twin of akvm.iommu.translate.walk_python(), which
 * tests/unit/test_vtd_native.py compares it with. Python keeps the policy
 * (caches, invalidation, fault recording); this only walks the tables.
 *
 * Every table entry is read through sl_read(), which checks that all 8
 * bytes lie inside one slot: a table outside guest RAM is fault 7, never
 * a host access. Fault numbers are the spec's (and translate.py's). */
#include <stdint.h>

#include "slwalk.h"
#include "vtdspec.h"

#define ADDR_MASK	((1ull << 52) - 1)	/* address bits end at 51 */
#define PAGE_SHIFT	12
#define LEVEL_STRIDE	9

/* The little-endian u64 at gpa, when all 8 bytes are inside one slot. */
static int sl_read(const struct akvm_mem_slot *slots, unsigned int nslots,
		   uint64_t gpa, uint64_t *out)
{
	const unsigned char *p = akvm_ram(slots, nslots, gpa, 8);
	uint64_t v = 0;

	if (!p)
		return -1;
	for (int b = 7; b >= 0; b--)
		v = v << 8 | p[b];
	*out = v;
	return 0;
}

int akvm_sl_walk(const struct akvm_mem_slot *slots, unsigned int nslots,
		 unsigned long long table, unsigned int levels, unsigned int width,
		 unsigned int haw, unsigned int large_pages,
		 unsigned long long address, int write, struct akvm_sl_leaf *out)
{
	/* Address bits 51:HAW are reserved in every entry that holds an address. */
	uint64_t reserved_addr = haw >= 52 ? 0 : ADDR_MASK & ~((1ull << haw) - 1);
	unsigned int readable = 1, writable = 1;

	if (levels < 1 || levels > AKVM_SL_MAX_LEVELS)
		return AKVM_SL_E_ARGS;
	out->level = levels;
	if (width < 64 && address >> width)
		return VTD_FR_ADDRESS_BEYOND_MGAW;
	for (unsigned int level = levels; level >= 1; level--) {
		unsigned int shift = PAGE_SHIFT + LEVEL_STRIDE * (level - 1);
		uint64_t offset = ((address >> shift) & 0x1FF) * 8;
		uint64_t gpa = table + offset, entry, reserved = reserved_addr;
		int leaf = level == 1;

		out->level = level;
		out->pte = gpa;
		if (table > UINT64_MAX - offset || sl_read(slots, nslots, gpa, &entry))
			return VTD_FR_PAGING_ACCESS;
		out->entry = entry;
		if (!(entry & (VTD_SL_R | VTD_SL_W)))		/* not present */
			return write ? VTD_FR_WRITE : VTD_FR_READ;
		if ((entry & VTD_SL_PS) && level > 1) {
			if ((level == 2 && (large_pages & 1)) || (level == 3 && (large_pages & 2))) {
				leaf = 1;		/* 2 MiB or 1 GiB page */
				reserved |= ((1ull << shift) - 1) & ~0xFFFull;
			} else {
				reserved |= VTD_SL_PS;	/* PS where no large page exists */
			}
		}
		if (entry & reserved)
			return VTD_FR_PAGING_RESERVED;
		readable &= !!(entry & VTD_SL_R);	/* permissions AND over the levels */
		writable &= !!(entry & VTD_SL_W);
		table = entry & ADDR_MASK & ~0xFFFull;
		if (leaf) {
			out->iova = address & ~((1ull << shift) - 1);
			out->frame = table;
			out->shift = shift;
			out->read = readable;
			out->write = writable;
			return 0;
		}
	}
	return AKVM_SL_E_ARGS;			/* unreachable: level 1 is a leaf */
}
