/* The vCPU run loop: KVM_RUN without the GIL, and the kick that ends it. */
#include <errno.h>
#include <linux/kvm.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>

#include "akvm_native.h"

int akvm_vcpu_run(int vcpu_fd, void *kvm_run)
{
	struct kvm_run *run = kvm_run;

	if (ioctl(vcpu_fd, KVM_RUN, 0) < 0)
		return -errno;
	return (int)run->exit_reason;
}

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
