#ifndef AKVM_VTDDOOR_H
#define AKVM_VTDDOOR_H

#include "guestram.h"
#include "iotlb.h"
#include "qi.h"

/* The VT-d unit's invalidation in C (vtddoor.c): IQT writes carried out by
 * qi.c while Python has armed the queue, and the IVA and IOTLB registers
 * (writes, and the IOTLB register's reads a driver polls) while it has
 * armed the registers; on the unit's RAM view and IOTLB table, with its
 * CAP.PSI and MAMV. Its lock is the unit's lock: Python holds it for
 * publish and take (akvm.iommu.doorbell.QueueDoorbell); lock returns 1 if C did
 * work since the last take. take copies C's state and the work summed
 * since (emptied IOTLB slots are removed[0 .. sum.removed); register
 * invalidations by granularity in reg_iotlb, which take resets). */
struct akvm_vtd_door;
struct akvm_vtd_queue {
	int armed;			/* the queue */
	unsigned long long base;	/* guest-physical */
	unsigned int entries;
	unsigned int head;		/* IQH's index */
	unsigned long long iqt;		/* IQT's value */
	int regs_armed;			/* IVA and IOTLB */
	unsigned long long iva;
	unsigned long long iotlb;
	unsigned long long reg_iotlb[4];
};
struct akvm_vtd_door *akvm_vtd_door_new(unsigned long long iqt_gpa, unsigned long long iva_gpa,
					 const struct akvm_mem_slot *slots, unsigned int nslots,
					 struct akvm_iotlb *tlb, int *removed, unsigned int capacity,
					 int psi, unsigned int mamv);
void akvm_vtd_door_free(struct akvm_vtd_door *d);
int akvm_vtd_door_lock(struct akvm_vtd_door *d);
void akvm_vtd_door_unlock(struct akvm_vtd_door *d);
void akvm_vtd_door_publish(struct akvm_vtd_door *d, const struct akvm_vtd_queue *q);
/* The RAM view from now on (guest RAM's slots changed); the caller keeps the
 * array alive as long as the door may use it. */
void akvm_vtd_door_set_slots(struct akvm_vtd_door *d, const struct akvm_mem_slot *slots,
			     unsigned int nslots);
/* For C that fills the IOTLB under the lock (vtdfast.c): the RAM view, and
 * whether slots C emptied wait for Python's take (their keys say which
 * domain lost them: no slot may be refilled before). */
const struct akvm_mem_slot *akvm_vtd_door_slots(const struct akvm_vtd_door *d,
						unsigned int *nslots);
int akvm_vtd_door_removed_pending(const struct akvm_vtd_door *d);
void akvm_vtd_door_take(struct akvm_vtd_door *d, struct akvm_vtd_queue *q,
			struct akvm_qi_result *sum);
/* An akvm_exit_fn (runloop.h) for the register page; opaque is the akvm_vtd_door. */
int akvm_vtd_door_complete(void *opaque, void *kvm_run);


#endif
