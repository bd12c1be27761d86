/* The C side of akvm. This header is read both by the C compiler and by
 * cffi's cdef parser, so it holds plain declarations only. */

/* Install a no-op handler for signo (without SA_RESTART), so that a signal
 * sent to a vCPU thread makes a blocked KVM_RUN return -EINTR instead of
 * killing the process. Safe to call from any thread. Returns 0 or -errno. */
int akvm_install_kick_signal(int signo);

/* The exits C completes without Python: accesses nothing claims on a bus
 * (reads all ones, writes dropped, as vmm.bus.Bus does) and the port-0x80
 * debug port (as devices.debugport.DebugPort does). The claimed ranges
 * are a copy of the Python buses, replaced whenever a bus changes. */
struct akvm_fastpath;

struct akvm_fastpath *akvm_fastpath_new(unsigned int debug_port);
void akvm_fastpath_free(struct akvm_fastpath *fp);
/* Replace the claimed ranges of one bus (0 = port I/O, 1 = MMIO): n
 * [base, end) pairs sorted by base. Returns 0 or -ENOMEM. */
int akvm_fastpath_set_ranges(struct akvm_fastpath *fp, int bus,
			     const unsigned long long *bases,
			     const unsigned long long *ends, unsigned int n);

struct akvm_fast_stats {
	unsigned long long unclaimed_reads[2];	/* by bus */
	unsigned long long unclaimed_writes[2];
	unsigned long long debug_writes;
	unsigned long long fast_exits;		/* completed here */
	unsigned int debug_last;
};
void akvm_fastpath_stats(struct akvm_fastpath *fp, struct akvm_fast_stats *out);

/* Complete the exit described by kvm_run if the fast path owns it: 1 when
 * done, 0 when it belongs to Python. */
int akvm_fastpath_complete(struct akvm_fastpath *fp, void *kvm_run);

/* Run the vCPU until an exit C does not complete: returns its exit reason,
 * or -errno when KVM_RUN failed (-EINTR after a kick). */
int akvm_vcpu_loop(int vcpu_fd, void *kvm_run, struct akvm_fastpath *fp);
