/* Port 0x80 in C (debugport.c), as akvm.devices.debugport.DebugPort
 * answers byte accesses: the last value written is read back. */
#ifndef AKVM_DEBUGPORT_H
#define AKVM_DEBUGPORT_H

struct akvm_debugport {
	unsigned long long writes;
	unsigned long long last;
};
/* An akvm_exit_fn (runloop.h); opaque is a struct akvm_debugport. */
int akvm_debugport_complete(void *opaque, void *kvm_run);

#endif
