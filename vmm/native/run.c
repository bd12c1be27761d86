/* The kick that ends a vCPU's KVM_RUN (the loop itself is in fastpath.c). */
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "akvm_native.h"

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
