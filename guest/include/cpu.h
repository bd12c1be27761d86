/* Per-core state, reached through %gs, and CPU identification. */
#ifndef CPU_H
#define CPU_H
#include "types.h"

#define MAX_CPUS 64

struct proc;
struct kctx;
struct tss;

struct cpu {
	struct cpu *self;               /* %gs:0 */
	int id;                         /* index: 0 = BSP */
	uint32_t apic_id;
	volatile int online;
	volatile uint64_t ipi_count;    /* VEC_IPI_TEST deliveries */
	volatile uint64_t shoot_count;  /* shootdowns handled */
	volatile uint64_t probe_val;    /* value read after the last shootdown */
	uint64_t stack_top;
	uint64_t kstack_top;            /* 56: syscall entry's stack (CPU_KSTACK) */
	uint64_t user_rsp;              /* 64: user RSP saved by the entry (CPU_USER_RSP) */
	struct proc *cur;               /* process running here, or NULL */
	struct proc *volatile job;      /* a process sent to this core to run */
	struct kctx *sched_ctx;         /* where exit/kill return to */
	struct tss *tss;
};
#define CPU_KSTACK      56
#define CPU_USER_RSP    64

extern struct cpu cpus[MAX_CPUS];
extern int ncpus;                       /* cores online */

static inline struct cpu *this_cpu(void)
{
	struct cpu *c;
	asm volatile("movq %%gs:0, %0" : "=r"(c));
	return c;
}

void cpu_setup_percpu(struct cpu *c);  /* point %gs at c */

struct cpuinfo {
	char vendor[13];
	char brand[49];
	char hypervisor[13];
	uint32_t family, model, stepping;
	uint32_t max_leaf, max_ext_leaf;
	bool x2apic, xsave, tsc_invariant, nx, pdpe1gb;
};
extern struct cpuinfo cpuinfo;
void cpu_identify(void);

#endif
