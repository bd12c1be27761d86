/* Port 0x80 writes completed in C: a POST-code loop costs one KVM_RUN
 * round trip per write. Byte accesses only; others go to Python's
 * DebugPort, the twin. */
#include <linux/kvm.h>

#include "debugport.h"

int akvm_debugport_complete(void *opaque, void *kvm_run)
{
	struct akvm_debugport *p = opaque;
	struct kvm_run *run = kvm_run;
	unsigned char *data = (unsigned char *)run + run->io.data_offset;

	if (run->exit_reason != KVM_EXIT_IO || run->io.size != 1 || run->io.count != 1)
		return 0;
	if (run->io.direction == KVM_EXIT_IO_OUT) {
		__atomic_store_n(&p->last, data[0], __ATOMIC_RELAXED);
		__atomic_fetch_add(&p->writes, 1, __ATOMIC_RELAXED);
	} else {
		data[0] = (unsigned char)__atomic_load_n(&p->last, __ATOMIC_RELAXED);
	}
	return 1;
}
