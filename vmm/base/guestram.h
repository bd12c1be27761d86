/* Guest RAM as C sees it: the host mappings of the RAM slots, and the one
 * bounds-checked lookup every C path reads and writes guest memory through.
 * akvm.base.native.native_slots() builds the array from a GuestMemory. */
#ifndef AKVM_GUESTRAM_H
#define AKVM_GUESTRAM_H

struct akvm_mem_slot {
	unsigned long long gpa;
	unsigned long long size;
	unsigned char *host;
};

#ifndef AKVM_CDEF
/* The host address of [gpa, gpa + len) when it lies inside one slot, else
 * NULL: a guest address outside RAM is never a host access. */
static inline unsigned char *akvm_ram(const struct akvm_mem_slot *slots, unsigned int nslots,
				      unsigned long long gpa, unsigned long long len)
{
	for (unsigned int i = 0; i < nslots; i++) {
		const struct akvm_mem_slot *s = &slots[i];

		if (gpa >= s->gpa && gpa - s->gpa <= s->size && len <= s->size - (gpa - s->gpa))
			return s->host + (gpa - s->gpa);
	}
	return 0;
}
#endif

#endif
