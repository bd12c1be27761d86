/* The VT-d invalidation queue's doorbell: IQT writes completed in C.
 *
 * A driver queues descriptors in memory and writes IQT: one MMIO exit per
 * batch (Akaros: one per TLB shootdown). While Python has armed it
 * (queued invalidation on, no queue error), that write is carried out here:
 * qi.c runs the descriptors it owns, and when it reaches the tail the exit
 * is complete. Otherwise the exit goes on to iommu.vtd as before, which
 * finds the queue where C left it.
 *
 * The mutex here is the unit's lock: Python takes it around every register
 * access and translation (iommu.doorbell.QueueDoorbell), catching up with
 * what C did when it takes it and publishing its state before it lets go.
 * The doorbell only tries it: a busy unit means the Python path. */
#include <linux/kvm.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "akvm_native.h"

#define IQ_INDEX_MASK 0x7FFF0ULL	/* IQT[18:4]; the rest reads as zero */

struct akvm_vtd_door {
	pthread_mutex_t lock;		/* the unit's lock (recursive) */
	unsigned long long iqt_gpa;
	const struct akvm_mem_slot *slots;
	unsigned int nslots;
	struct akvm_iotlb *tlb;
	int *removed;
	unsigned int capacity;
	int psi;
	unsigned int mamv;
	struct akvm_vtd_queue q;	/* published by Python, moved on by C */
	struct akvm_qi_result sum;	/* C's work since Python's last take */
	int dirty;
};

struct akvm_vtd_door *akvm_vtd_door_new(unsigned long long iqt_gpa,
					 const struct akvm_mem_slot *slots, unsigned int nslots,
					 struct akvm_iotlb *tlb, int *removed, unsigned int capacity,
					 int psi, unsigned int mamv)
{
	struct akvm_vtd_door *d = calloc(1, sizeof(*d));
	pthread_mutexattr_t attr;

	if (!d)
		return NULL;
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&d->lock, &attr);
	pthread_mutexattr_destroy(&attr);
	d->iqt_gpa = iqt_gpa;
	d->slots = slots;
	d->nslots = nslots;
	d->tlb = tlb;
	d->removed = removed;
	d->capacity = capacity;
	d->psi = psi;
	d->mamv = mamv;
	return d;
}

void akvm_vtd_door_free(struct akvm_vtd_door *d)
{
	if (!d)
		return;
	pthread_mutex_destroy(&d->lock);
	free(d);
}

int akvm_vtd_door_lock(struct akvm_vtd_door *d)
{
	pthread_mutex_lock(&d->lock);
	return d->dirty;
}

void akvm_vtd_door_unlock(struct akvm_vtd_door *d)
{
	pthread_mutex_unlock(&d->lock);
}

void akvm_vtd_door_publish(struct akvm_vtd_door *d, const struct akvm_vtd_queue *q)
{
	d->q = *q;
}

void akvm_vtd_door_take(struct akvm_vtd_door *d, struct akvm_vtd_queue *q,
			struct akvm_qi_result *sum)
{
	*q = d->q;
	*sum = d->sum;
	memset(&d->sum, 0, sizeof(d->sum));
	d->dirty = 0;
}

static void add(struct akvm_qi_result *sum, const struct akvm_qi_result *r)
{
	sum->removed += r->removed;
	sum->descriptors += r->descriptors;
	for (int g = 0; g < 4; g++)
		sum->iotlb[g] += r->iotlb[g];
	sum->waits_status += r->waits_status;
	sum->waits_none += r->waits_none;
}

int akvm_vtd_door_complete(struct akvm_vtd_door *d, void *kvm_run)
{
	struct kvm_run *run = kvm_run;
	struct akvm_qi_result r;
	unsigned long long value = 0;
	unsigned int tail;
	int done = 0;

	if (run->exit_reason != KVM_EXIT_MMIO || !run->mmio.is_write ||
	    run->mmio.phys_addr != d->iqt_gpa || (run->mmio.len != 8 && run->mmio.len != 4))
		return 0;
	if (pthread_mutex_trylock(&d->lock) != 0)
		return 0;
	if (!d->q.armed)
		goto out;
	memcpy(&value, run->mmio.data, run->mmio.len);
	value &= IQ_INDEX_MASK;
	tail = (unsigned int)(value >> 4);
	if (tail >= d->q.entries)
		goto out;		/* the queue error is Python's */
	akvm_qi_process(d->slots, d->nslots, d->tlb, d->q.base, d->q.entries, d->q.head, tail,
			d->psi, d->mamv, d->removed + d->sum.removed,
			d->capacity - d->sum.removed, &r);
	if (r.descriptors) {
		add(&d->sum, &r);
		d->q.head = r.head;
		d->dirty = 1;
	}
	if (r.head == tail) {
		d->q.iqt = value;
		d->dirty = 1;
		done = 1;
	}
out:
	pthread_mutex_unlock(&d->lock);
	return done;
}
