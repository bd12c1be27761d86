/* User processes: per-core user-mode setup, processes, system calls. */
#ifndef PROC_H
#define PROC_H
#include "types.h"
#include "trap.h"
#include "iommu.h"
#include "lib.h"
#include "uapi.h"

struct pci_dev;
struct virtio_dev;

/* Kernel context (callee-saved registers), for switching between the
 * core's scheduler context and a process's kernel stack. */
struct kctx { uint64_t rbx, rbp, r12, r13, r14, r15, rsp, rip; };
int ctx_save(struct kctx *c);                   /* 0, or the value given to ctx_restore */
void ctx_restore(struct kctx *c, int val) NORETURN;

void user_cpu_init(void);
uint64_t tss_set_rsp0(uint64_t rsp0);           /* this core's; returns the old one */                       /* every core: TSS, LTR, syscall MSRs */

#define PROC_MAX        16
#define PROC_KSTACK     16384           /* per core: ring 3 -> ring 0 stack */
#define PROC_QUARANTINE 64

enum proc_state { P_FREE, P_READY, P_RUNNING, P_DEAD };

struct proc {
	int pid;
	volatile int state;
	int core;                       /* where it runs (set when it starts) */
	char name[16];
	uint64_t *pml4;                 /* kernel VA */
	uint64_t cr3;
	uint64_t mmap_next;
	uint8_t iobitmap[128];          /* ports 0-0x3FF: 0 = allowed */
	bool iobitmap_used;
	uint64_t entry, user_rsp, argc, argv;
	volatile int exit_status;       /* 0-255 from exit(); 128 + vector when killed */
	int kill_vector;                /* -1 unless killed by an exception */
	uint64_t kill_addr, kill_rip, kill_err;
	uint64_t last_unmap;            /* start of the last munmap (self-tests) */
	bool detached;                  /* spawn: the core frees it when it ends */
	bool quiet;                     /* no "exited" line (self-tests print their own) */
	/* The cores running it (core_request adds more; user.c). */
	volatile uint64_t cores;        /* bit per core in it now */
	volatile bool dying;            /* exit or kill: every core leaves */
	int kill_core;                  /* the core that took the fatal exception */
	unsigned ncores_started;        /* cores given by core_request */
	spinlock_t vm_lock;             /* its cores' system calls on the address space */
	/* munmap: the other cores' TLBs (IPIs) and the IOTLB of its domain. */
	unsigned shootdowns;            /* munmaps that sent IPIs */
	unsigned shoot_acks;            /* acknowledgements received */
	uint64_t quarantine[PROC_QUARANTINE];   /* `iommu noflush`: frames held back */
	unsigned nquarantine, quarantine_lost;
	uint64_t stale_word;            /* word 7 of quarantine[0] when it was let go (self-tests) */
	bool dev_passthrough;           /* dev_xlate(0): its device's context is pass-through */
	/* Device assignment (assign/release): the edu or a virtio-pci device through VT-d. */
	bool dev_owned;
	uint16_t dev_sid;               /* bus << 8 | devfn */
	struct pci_dev *dev_pci;
	struct virtio_dev *dev_virtio;  /* a virtio device taken from the kernel's driver */
	struct iodomain iodom;          /* tables from user frames; did = pid */
	uint64_t bar_va, bar_pages;     /* its BARs in the process (uncached), back to back */
	uint64_t assigned_ctx[2];       /* the context entry written at assign (self-tests) */
	unsigned iotlb_page_invs;       /* page-selective IOTLB invalidations by munmap */
	/* iommu_lend (benchmark only): the VT-d register page and queue mapped in. */
	bool iommu_lent;
	uint64_t lend_va, lend_pages;
};

/* `iommu noflush`: munmap skips the IOTLB invalidation of owned devices. */
extern bool iommu_noflush;

/* Create a process from an embedded program; NULL + *err on failure. */
struct proc *proc_create(const char *prog, int argc, char **argv, const char **err);
/* Run p on this core until it exits or is killed; returns the status. */
int proc_run(struct proc *p);
/* Start p on another core (returns at once), or wait for it. */
bool proc_start_on(struct proc *p, int core);
int proc_wait(struct proc *p, uint64_t timeout_us);     /* -1 on timeout */
void proc_free(struct proc *p);
void proc_ap_idle(void) NORETURN;               /* APs: run what they are sent */
struct proc *proc_current(void);
void proc_list(void);
void proc_report(struct proc *p, int status);   /* "pid N (name): exit status S" */
long frames_available(void);
/* n physically contiguous frames (not zeroed, never given back): device
 * buffers for self-tests, taken once; 0 when there is no room. */
uint64_t frames_contig(unsigned n);
bool user_program_exists(const char *name);
void user_programs_list(void);

/* Entered from the assembly stubs. */
void syscall_dispatch(struct trapframe *tf);
bool user_trap(struct trapframe *tf);           /* exception in ring 3: kills, no return */
void user_enter(struct trapframe *tf) NORETURN; /* restore tf, SYSRET to ring 3 */

#endif
