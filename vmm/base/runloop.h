/* The vCPU run loop in C (runloop.c) and the table of exits it completes
 * without Python. akvm.base.runloop.FastPath is its Python handle. */
#ifndef AKVM_RUNLOOP_H
#define AKVM_RUNLOOP_H

/* Install a no-op handler for signo (without SA_RESTART), so that a signal
 * sent to a vCPU thread makes a blocked KVM_RUN return -EINTR instead of
 * killing the process. Safe to call from any thread. Returns 0 or -errno. */
int akvm_install_kick_signal(int signo);

#define AKVM_BUS_PIO 0
#define AKVM_BUS_MMIO 1
#define AKVM_FASTPATH_MAX_HANDLERS 32

/* A device's completion: 1 when it completed the exit in kvm_run (a struct
 * kvm_run), 0 when the exit belongs to Python. */
typedef int (*akvm_exit_fn)(void *opaque, void *kvm_run);

struct akvm_fastpath;
struct akvm_fastpath *akvm_fastpath_new(void);
void akvm_fastpath_free(struct akvm_fastpath *fp);
/* Replace the ranges Python's bus claims (AKVM_BUS_*): n [base, end) pairs
 * sorted by base. Exits inside none of them and no handler's are
 * completed here as unclaimed. Returns 0, -EINVAL or -ENOMEM. */
int akvm_fastpath_set_ranges(struct akvm_fastpath *fp, int bus,
			     const unsigned long long *bases,
			     const unsigned long long *ends, unsigned int n);
/* Offer exits in [base, end) of a bus to fn(opaque, run) first. Returns a
 * handler id (>= 0), -EINVAL or -ENOSPC. */
int akvm_fastpath_add(struct akvm_fastpath *fp, int bus, unsigned long long base,
		      unsigned long long end, akvm_exit_fn fn, void *opaque);
/* Take a handler out; returns once no vCPU is inside its fn. */
void akvm_fastpath_remove(struct akvm_fastpath *fp, int id);

struct akvm_fast_stats {
	unsigned long long unclaimed_reads[2];	/* by bus */
	unsigned long long unclaimed_writes[2];
	unsigned long long fast_exits;		/* completed here, handlers included */
};
void akvm_fastpath_stats(struct akvm_fastpath *fp, struct akvm_fast_stats *out);

/* Complete the exit described by kvm_run if a handler or the unclaimed
 * rule owns it: 1 when done, 0 when it belongs to Python. */
int akvm_fastpath_complete(struct akvm_fastpath *fp, void *kvm_run);

/* Run the vCPU until an exit C does not complete: returns its exit reason,
 * or -errno when KVM_RUN failed (-EINTR after a kick). *fast_exits counts
 * this vCPU's exits completed here. */
int akvm_vcpu_loop(int vcpu_fd, void *kvm_run, struct akvm_fastpath *fp,
		   unsigned long long *fast_exits);

#endif
