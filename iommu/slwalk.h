#ifndef AKVM_SLWALK_H
#define AKVM_SLWALK_H

#include "guestram.h"

/* VT-d second-level walk (slwalk.c): walk the `levels`-level table at
 * `table` for `address`, reading entries through the slots above. Returns
 * 0 with the page in *out, or the VT-d fault reason (4, 5, 6, 7 or 0xC);
 * on a fault out->level / pte / entry say where (entry only once read).
 * akvm.iommu.translate.walk_python() is the Python twin. */
struct akvm_sl_leaf {
	unsigned long long iova;	/* first byte of the page, device side */
	unsigned long long frame;	/* first byte of the page, guest-physical */
	unsigned long long pte;		/* address of the last entry looked at */
	unsigned long long entry;	/* its value */
	unsigned int shift;		/* 12, 21 or 30 */
	unsigned int read, write;
	unsigned int level;		/* level of the last entry looked at */
};
#define AKVM_SL_MAX_LEVELS 6
#define AKVM_SL_E_ARGS -1		/* levels outside 1..AKVM_SL_MAX_LEVELS */
int akvm_sl_walk(const struct akvm_mem_slot *slots, unsigned int nslots,
		 unsigned long long table, unsigned int levels, unsigned int width,
		 unsigned int haw, unsigned int large_pages,
		 unsigned long long address, int write, struct akvm_sl_leaf *out);

#endif
