#ifndef AKVM_QI_H
#define AKVM_QI_H

#include "guestram.h"
#include "iotlb.h"

/* Queued invalidation (qi.c): carry out descriptors from head towards tail
 * of the `entries`-entry queue at guest-physical `base`, as long as they
 * are well-formed IOTLB descriptors (on tlb; psi = CAP.PSI, mamv =
 * CAP.MAMV) or wait descriptors without IF; stop at the first other one.
 * out->head is where it stopped; the IOTLB slots emptied are in removed[]
 * (out->removed of them); iotlb[g] counts IOTLB descriptors by the
 * granularity done. akvm.iommu.invalidation.Invalidator is the twin.
 * Returns 0, or -EINVAL, doing nothing, when the queue makes no sense
 * (no entries, head or tail not inside it: IQE is Python's to set). */
struct akvm_qi_result {
	unsigned int head;
	unsigned int removed;
	unsigned long long descriptors;
	unsigned long long iotlb[4];
	unsigned long long waits_status;
	unsigned long long waits_none;
};
int akvm_qi_process(const struct akvm_mem_slot *slots, unsigned int nslots,
		     struct akvm_iotlb *tlb, unsigned long long base, unsigned int entries,
		     unsigned int head, unsigned int tail, int psi, unsigned int mamv,
		     int *removed, unsigned int max_removed, struct akvm_qi_result *out);

#endif
