#ifndef SMP_H
#define SMP_H
#include "types.h"

void smp_boot(void);
void ap_main(void *cpu) NORETURN;
/* Invalidate va on every core; probe: each core then reads a u64 at va
 * into its cpu->probe_val.  Returns the number of cores that acknowledged. */
int tlb_shootdown(uintptr_t va, bool probe);
/* Invalidate [va, va + pages pages) on the cores in mask other than this
 * one (IPIs, waiting for each to acknowledge; the caller invalidates its
 * own TLB).  Returns the number of cores that acknowledged. */
int tlb_shootdown_cores(uint64_t mask, uintptr_t va, uint64_t pages);
/* Send VEC_IPI_TEST to core i; true when its handler ran. */
bool smp_ping(int i, uint64_t timeout_us);

#endif
