/* The C side of akvm. This header is read both by the C compiler and by
 * cffi's cdef parser, so it holds plain declarations only. */

/* Enter the guest once: KVM_RUN on vcpu_fd. Returns the exit reason from
 * the vCPU's kvm_run page, or -errno when the ioctl failed (-EINTR after
 * a kick). */
int akvm_vcpu_run(int vcpu_fd, void *kvm_run);

/* Install a no-op handler for signo (without SA_RESTART), so that a signal
 * sent to a vCPU thread makes a blocked KVM_RUN return -EINTR instead of
 * killing the process. Safe to call from any thread. Returns 0 or -errno. */
int akvm_install_kick_signal(int signo);
