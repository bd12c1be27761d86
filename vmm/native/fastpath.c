/* Exits completed in C: unclaimed bus accesses, the debug port, COM1's
 * transmit and line status when serial.c is attached, PCI configuration
 * accesses no function answers when pciconf.c is, and the VT-d queue's
 * doorbell when vtddoor.c is.
 *
 * A guest that pokes a port nothing decodes, or the POST-code port in a
 * benchmark loop, should cost one KVM_RUN round trip, not a trip through
 * the Python bus. The ranges here are a snapshot of the Python buses:
 * anything claimed goes back to Python, so device semantics live in one
 * place. */
#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "akvm_native.h"

enum { BUS_PIO, BUS_MMIO, NBUS };

struct range_table {
	unsigned int n;
	unsigned long long *bases, *ends;
};

struct akvm_fastpath {
	pthread_mutex_t lock;		/* guards tables and stats */
	struct range_table bus[NBUS];
	unsigned int debug_port;
	struct akvm_serial *serial;	/* COM1 in C (serial.c), or NULL */
	struct akvm_pci_conf *pci;	/* PCI configuration (pciconf.c), or NULL */
	struct akvm_vtd_door *vtd;	/* the VT-d queue's doorbell (vtddoor.c), or NULL */
	struct akvm_fast_stats stats;
};

struct akvm_fastpath *akvm_fastpath_new(unsigned int debug_port)
{
	struct akvm_fastpath *fp = calloc(1, sizeof(*fp));

	if (!fp)
		return NULL;
	pthread_mutex_init(&fp->lock, NULL);
	fp->debug_port = debug_port;
	return fp;
}

void akvm_fastpath_free(struct akvm_fastpath *fp)
{
	if (!fp)
		return;
	for (int b = 0; b < NBUS; b++) {
		free(fp->bus[b].bases);
		free(fp->bus[b].ends);
	}
	pthread_mutex_destroy(&fp->lock);
	free(fp);
}

int akvm_fastpath_set_ranges(struct akvm_fastpath *fp, int bus,
			     const unsigned long long *bases,
			     const unsigned long long *ends, unsigned int n)
{
	size_t bytes = (n ? n : 1) * sizeof(unsigned long long);
	unsigned long long *nb = malloc(bytes), *ne = malloc(bytes);

	if (bus < 0 || bus >= NBUS || !nb || !ne) {
		free(nb);
		free(ne);
		return bus < 0 || bus >= NBUS ? -EINVAL : -ENOMEM;
	}
	memcpy(nb, bases, n * sizeof(*nb));
	memcpy(ne, ends, n * sizeof(*ne));
	pthread_mutex_lock(&fp->lock);
	free(fp->bus[bus].bases);
	free(fp->bus[bus].ends);
	fp->bus[bus] = (struct range_table){ n, nb, ne };
	pthread_mutex_unlock(&fp->lock);
	return 0;
}

void akvm_fastpath_set_serial(struct akvm_fastpath *fp, struct akvm_serial *s)
{
	pthread_mutex_lock(&fp->lock);
	fp->serial = s;
	pthread_mutex_unlock(&fp->lock);
}

void akvm_fastpath_set_pci_conf(struct akvm_fastpath *fp, struct akvm_pci_conf *c)
{
	pthread_mutex_lock(&fp->lock);
	fp->pci = c;
	pthread_mutex_unlock(&fp->lock);
}

void akvm_fastpath_set_vtd(struct akvm_fastpath *fp, struct akvm_vtd_door *d)
{
	pthread_mutex_lock(&fp->lock);
	fp->vtd = d;
	pthread_mutex_unlock(&fp->lock);
}

void akvm_fastpath_stats(struct akvm_fastpath *fp, struct akvm_fast_stats *out)
{
	pthread_mutex_lock(&fp->lock);
	*out = fp->stats;
	pthread_mutex_unlock(&fp->lock);
}

/* Whether [addr, addr + len) touches a claimed range. Caller holds lock. */
static int claimed(const struct range_table *t, unsigned long long addr, unsigned int len)
{
	unsigned int lo = 0, hi = t->n;

	while (lo < hi) {		/* first range with end > addr */
		unsigned int mid = lo + (hi - lo) / 2;
		if (t->ends[mid] <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < t->n && t->bases[lo] < addr + len;
}

int akvm_fastpath_complete(struct akvm_fastpath *fp, void *kvm_run)
{
	struct kvm_run *run = kvm_run;
	int done = 0;

	pthread_mutex_lock(&fp->lock);
	if (fp->pci && akvm_pci_conf_complete(fp->pci, run)) {
		done = 1;
	} else if (run->exit_reason == KVM_EXIT_IO) {
		unsigned int port = run->io.port, size = run->io.size;
		unsigned char *data = (unsigned char *)run + run->io.data_offset;
		int out = run->io.direction == KVM_EXIT_IO_OUT;

		if (fp->serial && akvm_serial_complete(fp->serial, run)) {
			done = 1;
		} else if (port == fp->debug_port && size == 1 && run->io.count == 1) {
			if (out) {
				fp->stats.debug_last = data[0];
				fp->stats.debug_writes++;
			} else {
				data[0] = (unsigned char)fp->stats.debug_last;
			}
			done = 1;
		} else if (!claimed(&fp->bus[BUS_PIO], port, size)) {
			if (out) {
				fp->stats.unclaimed_writes[BUS_PIO] += run->io.count;
			} else {
				memset(data, 0xff, (size_t)size * run->io.count);
				fp->stats.unclaimed_reads[BUS_PIO] += run->io.count;
			}
			done = 1;
		}
	} else if (run->exit_reason == KVM_EXIT_MMIO) {
		if (fp->vtd && akvm_vtd_door_complete(fp->vtd, run)) {
			done = 1;
		} else if (!claimed(&fp->bus[BUS_MMIO], run->mmio.phys_addr, run->mmio.len)) {
			if (run->mmio.is_write) {
				fp->stats.unclaimed_writes[BUS_MMIO]++;
			} else {
				memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
				fp->stats.unclaimed_reads[BUS_MMIO]++;
			}
			done = 1;
		}
	}
	if (done)
		fp->stats.fast_exits++;
	pthread_mutex_unlock(&fp->lock);
	return done;
}

int akvm_vcpu_loop(int vcpu_fd, void *kvm_run, struct akvm_fastpath *fp,
		   unsigned long long *fast_exits)
{
	struct kvm_run *run = kvm_run;

	for (;;) {
		if (ioctl(vcpu_fd, KVM_RUN, 0) < 0)
			return -errno;
		if (!akvm_fastpath_complete(fp, run))
			return (int)run->exit_reason;
		(*fast_exits)++;
	}
}
