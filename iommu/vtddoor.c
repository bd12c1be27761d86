/* VT-d invalidation completed in C: the queue's doorbell and the IOTLB
 * registers.
 *
 * A driver queues descriptors in memory and writes IQT: one MMIO exit per
 * batch. While Python has armed it (queued invalidation on, no queue
 * error), that write is carried out here: qi.c runs the descriptors it
 * owns, and when it reaches the tail the exit is complete. Otherwise the
 * exit goes on to akvm.iommu.vtd as before, which finds the queue where C left
 * it. Without queued invalidation a driver writes IVA and the IOTLB
 * register, then polls IVT (Akaros: a domain flush on every TLB shootdown
 * of a process with a device): those are done here too, as
 * akvm.iommu.invalidation.Invalidator.iotlb_register does them.
 *
 * The mutex here is the unit's lock: Python takes it around every register
 * access and translation (akvm.iommu.doorbell.QueueDoorbell), catching up with
 * what C did when it takes it and publishing its state before it lets go.
 * The doorbell only tries it: a busy unit means the Python path. */
#include <linux/kvm.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vtddoor.h"
#include "vtdspec.h"

struct akvm_vtd_door {
	pthread_mutex_t lock;		/* the unit's lock (recursive) */
	unsigned long long iqt_gpa, iva_gpa;	/* the IOTLB register at iva_gpa + 8 */
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

struct akvm_vtd_door *akvm_vtd_door_new(unsigned long long iqt_gpa, unsigned long long iva_gpa,
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
	d->iva_gpa = iva_gpa;
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

void akvm_vtd_door_set_slots(struct akvm_vtd_door *d, const struct akvm_mem_slot *slots,
			     unsigned int nslots)
{
	pthread_mutex_lock(&d->lock);
	d->slots = slots;
	d->nslots = nslots;
	pthread_mutex_unlock(&d->lock);
}

const struct akvm_mem_slot *akvm_vtd_door_slots(const struct akvm_vtd_door *d,
						unsigned int *nslots)
{
	*nslots = d->nslots;
	return d->slots;
}

int akvm_vtd_door_removed_pending(const struct akvm_vtd_door *d)
{
	return d->sum.removed != 0;
}

void akvm_vtd_door_take(struct akvm_vtd_door *d, struct akvm_vtd_queue *q,
			struct akvm_qi_result *sum)
{
	*q = d->q;
	*sum = d->sum;
	memset(&d->sum, 0, sizeof(d->sum));
	memset(d->q.reg_iotlb, 0, sizeof(d->q.reg_iotlb));
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

/* An IOTLB register write with IVT (Invalidator.iotlb_register's twin);
 * 0 when Python must do it (more emptied slots than room). Lock held. */
static int iotlb_register(struct akvm_vtd_door *d, unsigned long long value)
{
	unsigned int n;
	int done = akvm_iotlb_request(d->tlb, (unsigned int)(value >> 60) & 3,
				      (unsigned int)(value >> 32) & 0xFFFF, d->q.iva & ~0xFFFULL,
				      (unsigned int)(d->q.iva & VTD_IVA_AM_MASK), d->psi, d->mamv,
				      d->removed + d->sum.removed, d->capacity - d->sum.removed, &n);

	if (done < 0)
		return 0;
	if (done) {
		d->sum.removed += n;
		d->q.reg_iotlb[done]++;
	}
	d->q.iotlb = (value & ~(VTD_IOTLB_IVT | VTD_IOTLB_IAIG_MASK)) |
		   (unsigned long long)done << VTD_IOTLB_IAIG_SHIFT;
	d->dirty = 1;
	return 1;
}

static int registers(struct akvm_vtd_door *d, struct kvm_run *run)
{
	unsigned long long addr = run->mmio.phys_addr, value = 0;

	if (!d->q.regs_armed || run->mmio.len != 8 ||
	    (addr != d->iva_gpa && addr != d->iva_gpa + 8))
		return 0;
	if (!run->mmio.is_write) {
		value = addr == d->iva_gpa ? d->q.iva : d->q.iotlb;
		memcpy(run->mmio.data, &value, 8);
		return 1;
	}
	memcpy(&value, run->mmio.data, 8);
	if (addr == d->iva_gpa) {
		d->q.iva = value & VTD_IVA_WRITABLE;
		d->dirty = 1;
		return 1;
	}
	value = (value & VTD_IOTLB_WRITABLE) | (d->q.iotlb & VTD_IOTLB_IAIG_MASK);
	if (value & VTD_IOTLB_IVT)
		return iotlb_register(d, value);
	d->q.iotlb = value;
	d->dirty = 1;
	return 1;
}

static int doorbell(struct akvm_vtd_door *d, struct kvm_run *run)
{
	struct akvm_qi_result r;
	unsigned long long value = 0;
	unsigned int tail;

	if (!run->mmio.is_write || run->mmio.phys_addr != d->iqt_gpa ||
	    (run->mmio.len != 8 && run->mmio.len != 4) || !d->q.armed)
		return 0;
	memcpy(&value, run->mmio.data, run->mmio.len);
	value &= VTD_IQ_INDEX_MASK;
	tail = (unsigned int)(value >> 4);
	/* A tail, or a head (IQA shrunk under it), outside the queue is IQE: Python's. */
	if (akvm_qi_process(d->slots, d->nslots, d->tlb, d->q.base, d->q.entries, d->q.head, tail,
			    d->psi, d->mamv, d->removed + d->sum.removed,
			    d->capacity - d->sum.removed, &r) < 0)
		return 0;
	if (r.descriptors) {
		add(&d->sum, &r);
		d->q.head = r.head;
		d->dirty = 1;
	}
	if (r.head != tail)
		return 0;
	d->q.iqt = value;
	d->dirty = 1;
	return 1;
}

int akvm_vtd_door_complete(void *opaque, void *kvm_run)
{
	struct akvm_vtd_door *d = opaque;
	struct kvm_run *run = kvm_run;
	unsigned long long addr = run->mmio.phys_addr;
	int done;

	if (run->exit_reason != KVM_EXIT_MMIO ||
	    (addr != d->iqt_gpa && addr != d->iva_gpa && addr != d->iva_gpa + 8))
		return 0;
	if (pthread_mutex_trylock(&d->lock) != 0)
		return 0;
	done = addr == d->iqt_gpa ? doorbell(d, run) : registers(d, run);
	pthread_mutex_unlock(&d->lock);
	return done;
}
