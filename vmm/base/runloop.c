/* The vCPU loop, and the exits completed without returning to Python.
 *
 * A guest that pokes a port nothing decodes, or the POST-code port in a
 * benchmark loop, should cost one KVM_RUN round trip, not a trip through
 * the Python bus. Two kinds of exit end here: those a device registered a
 * C completion for (a bus range and a function; it may still decline), and
 * accesses inside no range Python's buses claim (reads all ones, writes
 * dropped, as akvm.base.bus.Bus does). This file knows no device.
 *
 * The tables are read under a read lock, so vCPUs never wait for each
 * other here, even while one is inside a long completion; replacing them
 * (a BAR moved, a handler added or removed) takes the write lock and so
 * waits for completions in flight. */
#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "runloop.h"

#define NBUS 2

struct range_table {
	unsigned int n;
	unsigned long long *bases, *ends;
};

struct handler {
	int bus;			/* -1: a free entry */
	unsigned long long base, end;
	akvm_exit_fn fn;
	void *opaque;
};

struct akvm_fastpath {
	pthread_rwlock_t lock;		/* guards the tables below, not the stats */
	struct range_table bus[NBUS];
	struct handler handlers[AKVM_FASTPATH_MAX_HANDLERS];
	struct akvm_fast_stats stats;	/* atomic counters */
};

static void kick_handler(int signo)
{
	(void)signo;
}

int akvm_install_kick_signal(int signo)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler;
	sigemptyset(&sa.sa_mask);
	if (sigaction(signo, &sa, NULL) < 0)
		return -errno;
	return 0;
}

struct akvm_fastpath *akvm_fastpath_new(void)
{
	struct akvm_fastpath *fp = calloc(1, sizeof(*fp));

	if (!fp)
		return NULL;
	pthread_rwlock_init(&fp->lock, NULL);
	for (int i = 0; i < AKVM_FASTPATH_MAX_HANDLERS; i++)
		fp->handlers[i].bus = -1;
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
	pthread_rwlock_destroy(&fp->lock);
	free(fp);
}

int akvm_fastpath_set_ranges(struct akvm_fastpath *fp, int bus,
			     const unsigned long long *bases,
			     const unsigned long long *ends, unsigned int n)
{
	size_t bytes = (n ? n : 1) * sizeof(unsigned long long);
	unsigned long long *nb, *ne;

	if (bus < 0 || bus >= NBUS)
		return -EINVAL;
	nb = malloc(bytes);
	ne = malloc(bytes);
	if (!nb || !ne) {
		free(nb);
		free(ne);
		return -ENOMEM;
	}
	memcpy(nb, bases, n * sizeof(*nb));
	memcpy(ne, ends, n * sizeof(*ne));
	pthread_rwlock_wrlock(&fp->lock);
	free(fp->bus[bus].bases);
	free(fp->bus[bus].ends);
	fp->bus[bus] = (struct range_table){ n, nb, ne };
	pthread_rwlock_unlock(&fp->lock);
	return 0;
}

int akvm_fastpath_add(struct akvm_fastpath *fp, int bus, unsigned long long base,
		      unsigned long long end, akvm_exit_fn fn, void *opaque)
{
	int id = -ENOSPC;

	if (bus < 0 || bus >= NBUS || end <= base || !fn)
		return -EINVAL;
	pthread_rwlock_wrlock(&fp->lock);
	for (int i = 0; i < AKVM_FASTPATH_MAX_HANDLERS; i++) {
		if (fp->handlers[i].bus < 0) {
			fp->handlers[i] = (struct handler){ bus, base, end, fn, opaque };
			id = i;
			break;
		}
	}
	pthread_rwlock_unlock(&fp->lock);
	return id;
}

void akvm_fastpath_remove(struct akvm_fastpath *fp, int id)
{
	if (id < 0 || id >= AKVM_FASTPATH_MAX_HANDLERS)
		return;
	pthread_rwlock_wrlock(&fp->lock);
	fp->handlers[id].bus = -1;
	pthread_rwlock_unlock(&fp->lock);
}

void akvm_fastpath_stats(struct akvm_fastpath *fp, struct akvm_fast_stats *out)
{
	const unsigned long long *in = (const unsigned long long *)&fp->stats;
	unsigned long long *o = (unsigned long long *)out;

	for (size_t i = 0; i < sizeof(*out) / sizeof(*o); i++)
		o[i] = __atomic_load_n(&in[i], __ATOMIC_RELAXED);
}

static void count(unsigned long long *counter, unsigned long long n)
{
	__atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
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

/* 1 when a handler whose range holds addr completed the exit. Caller holds lock. */
static int handled(const struct akvm_fastpath *fp, int bus, unsigned long long addr, void *run)
{
	for (int i = 0; i < AKVM_FASTPATH_MAX_HANDLERS; i++) {
		const struct handler *h = &fp->handlers[i];

		if (h->bus == bus && addr >= h->base && addr < h->end)
			return h->fn(h->opaque, run);
	}
	return 0;
}

static int unclaimed_io(struct akvm_fastpath *fp, struct kvm_run *run)
{
	unsigned char *data = (unsigned char *)run + run->io.data_offset;

	if (claimed(&fp->bus[AKVM_BUS_PIO], run->io.port, run->io.size))
		return 0;
	if (run->io.direction == KVM_EXIT_IO_OUT) {
		count(&fp->stats.unclaimed_writes[AKVM_BUS_PIO], run->io.count);
	} else {
		memset(data, 0xff, (size_t)run->io.size * run->io.count);
		count(&fp->stats.unclaimed_reads[AKVM_BUS_PIO], run->io.count);
	}
	return 1;
}

static int unclaimed_mmio(struct akvm_fastpath *fp, struct kvm_run *run)
{
	if (claimed(&fp->bus[AKVM_BUS_MMIO], run->mmio.phys_addr, run->mmio.len))
		return 0;
	if (run->mmio.is_write) {
		count(&fp->stats.unclaimed_writes[AKVM_BUS_MMIO], 1);
	} else {
		memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
		count(&fp->stats.unclaimed_reads[AKVM_BUS_MMIO], 1);
	}
	return 1;
}

int akvm_fastpath_complete(struct akvm_fastpath *fp, void *kvm_run)
{
	struct kvm_run *run = kvm_run;
	int done = 0;

	pthread_rwlock_rdlock(&fp->lock);
	if (run->exit_reason == KVM_EXIT_IO)
		done = handled(fp, AKVM_BUS_PIO, run->io.port, run) || unclaimed_io(fp, run);
	else if (run->exit_reason == KVM_EXIT_MMIO)
		done = handled(fp, AKVM_BUS_MMIO, run->mmio.phys_addr, run) ||
		       unclaimed_mmio(fp, run);
	pthread_rwlock_unlock(&fp->lock);
	if (done)
		count(&fp->stats.fast_exits, 1);
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
