/*
 * User processes, Akaros style but small.
 *
 * - Frames for user memory and page tables come from RAM above the kernel
 *   image (up to 1 GiB, reachable at KERNBASE + pa): a bump pointer plus
 *   a free list.  Pages are zeroed with one REP STOSQ when allocated.
 * - Each process has its own 4-level table: PML4 slot 0 (the kernel's
 *   supervisor-only identity map of 0-4 GiB) and slots 256-511 (kernel)
 *   are copied from boot_pml4, slot 1 (USER_BASE..USER_TOP) is private.
 * - Programs are ELF64 executables embedded in the image (userprogs.S),
 *   loaded at USER_BASE; text is read-only.  8 stack pages below
 *   USER_STACK_TOP hold argc/argv.
 * - A process starts on one core (proc_run) and may take idle APs as well
 *   (core_request, Akaros's many-core processes): core_enter saves the
 *   core's kernel context, switches CR3 and the TSS's RSP0 (the core's own
 *   kernel stack) to the process, and enters ring 3 with IRETQ; leaving
 *   (exit, a fatal exception, core_yield, or VEC_PROC_STOP when the process
 *   ends on another core) comes back there with ctx_restore.  APs wait in
 *   proc_ap_idle for a process sent to them (`spawn`, `run -c`) or for a
 *   process that asked for a core.
 * - munmap shoots down the TLBs of the process's other cores (IPIs,
 *   acknowledged) and the IOTLB of the domain it owns devices through,
 *   before the frames are freed (held back under `iommu noflush`).
 * - System calls: SYSCALL/SYSRETQ (userentry.S).  On kvm_pvm hosts SYSCALL
 *   from ring 3 jumps to LSTAR without leaving ring 3, which faults on the
 *   supervisor page; user_trap() recognises that #PF and runs the system
 *   call from the trap frame, returning with IRETQ (README: the probe).
 * - I/O ports: IOPL is not honoured on kvm_pvm, the TSS I/O bitmap is;
 *   ioperm() opens ports 0-0x3FF per process through the bitmap.
 */
#include "proc.h"
#include "cpu.h"
#include "apic.h"
#include "edu.h"
#include "ioat.h"
#include "iommu.h"
#include "pci.h"
#include "console.h"
#include "lib.h"
#include "mm.h"
#include "multiboot.h"
#include "selftest.h"
#include "smp.h"
#include "timer.h"
#include "trap.h"
#include "virtio.h"
#include "vm.h"
#include "x86.h"

struct tss {
	uint32_t rsvd0;
	uint64_t rsp0, rsp1, rsp2;
	uint64_t rsvd1;
	uint64_t ist[7];
	uint64_t rsvd2;
	uint16_t rsvd3, iomap_base;
	uint8_t iomap[128];             /* ports 0-0x3FF; ports above are past the limit */
	uint8_t iomap_end;              /* 0xFF, as the SDM asks */
} PACKED;

struct user_prog { const char *name; const uint8_t *start, *end; };

extern const struct user_prog user_progs[];
extern uint64_t boot_pml4[];
extern uint64_t gdt_tss[];
extern char _kernel_end[], syscall_entry[];

#define KADDR(pa)       ((void *)(uintptr_t)((pa) + KERNBASE))
#define PTE_ADDR(e)     ((e) & 0x000FFFFFFFFFF000ULL)
#define PTE_NOFREE      0x200           /* software bit: frame not owned (device BAR) */
#define USER_RFLAGS     0x40CD5         /* CF PF AF ZF SF DF OF AC: the user's to set */
#define RFLAGS_IF       0x200

static struct tss tss[MAX_CPUS] __attribute__((aligned(128)));
static struct proc procs[PROC_MAX];
/* A core runs one process at a time, and a process's kernel state does not
 * outlive a trip through ring 0 on the core that took it: the stack ring 3
 * enters ring 0 on belongs to the core. */
static uint8_t core_kstacks[MAX_CPUS][PROC_KSTACK] __attribute__((aligned(16)));
/* core_request -> proc_ap_idle: what an extra core of a process runs.  The
 * requester reserves the core's job slot (CORE_RESERVED), fills this in,
 * then stores the process in the slot. */
#define CORE_RESERVED   ((struct proc *)1)
static struct core_start { struct proc *p; uint64_t entry, sp, arg; } core_start[MAX_CPUS];
static spinlock_t proc_lock;
static int next_pid = 2;        /* pid = VT-d domain id of its devices; 1 is pass-through */
uint64_t pvm_syscalls, sysret_syscalls;
bool iommu_noflush;
static struct proc *dev_owner[PCI_MAX_DEVS];   /* by index in pci_devs[] */
static spinlock_t assign_lock;
static void dev_release(struct proc *p);
static void proc_stop_ipi(struct trapframe *tf);
static int io_map(struct proc *p, uint64_t va, uint64_t pte);
static bool io_clear(struct proc *p, uint64_t va);
static void io_flush(struct proc *p, const uint64_t *iovas, int n);
static void quarantine_release(struct proc *p);
static void lend_end(struct proc *p);
static spinlock_t user_iommu_lock;     /* the VT-d driver is not reentrant */

/* ---- per-core setup ---- */

void user_cpu_init(void)
{
	struct cpu *c = this_cpu();
	struct tss *t = &tss[c->id];
	uint64_t base = (uint64_t)(uintptr_t)t, limit = sizeof(*t) - 1;

	t->iomap_base = offsetof(struct tss, iomap);
	memset(t->iomap, 0xFF, sizeof(t->iomap) + 1);
	t->rsp0 = c->stack_top;
	c->tss = t;
	gdt_tss[2 * c->id] = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89ULL << 40) |
			     (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56);
	gdt_tss[2 * c->id + 1] = base >> 32;
	asm volatile("ltr %w0" :: "r"(SEG_TSS0 + 16 * c->id));
	wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SCE);
	wrmsr(MSR_STAR, (0x18ULL << 48) | ((uint64_t)SEG_KCODE << 32));
	wrmsr(MSR_LSTAR, (uint64_t)(uintptr_t)syscall_entry);
	wrmsr(MSR_FMASK, 0x44700);      /* TF, IF, DF, NT, AC cleared on entry */
	wrmsr(MSR_KERNEL_GS_BASE, 0);   /* the user's GS base while in the kernel */
	write_cr4(read_cr4() | 0x600);  /* OSFXSR, OSXMMEXCPT: user code may use SSE */
	irq_register(VEC_PROC_STOP, proc_stop_ipi);
}

uint64_t tss_set_rsp0(uint64_t rsp0)
{
	struct tss *t = this_cpu()->tss;
	uint64_t old = t->rsp0;
	t->rsp0 = rsp0;
	return old;
}

/* ---- physical frames ---- */

static spinlock_t frame_lock;
static uint64_t frame_next, frame_end, frame_free_list;
static long frames_free_listed;
static bool frames_ready;

static void frame_init(void)
{
	uint64_t start = (KVA_TO_PA(_kernel_end) + (2ULL << 20) - 1) & ~((2ULL << 20) - 1);
	uint64_t end = 0;
	for (int i = 0; i < bootinfo.nmmap; i++) {
		const struct mmap_region *r = &bootinfo.mmap[i];
		if (r->type == 1 && r->addr <= start && r->addr + r->len > start)
			end = r->addr + r->len;
	}
	if (!end && (bootinfo.flags & MB_INFO_MEM))
		end = 0x100000 + (uint64_t)bootinfo.mem_upper * 1024;
	end = MIN(end, 1ULL << 30) & ~0xFFFULL;
	frame_next = start;
	frame_end = end > start ? end : start;
	frames_ready = true;
}

/* A zeroed 4 KiB frame (physical address), or 0. */
static uint64_t frame_alloc(void)
{
	uint64_t pa = 0;
	spin_lock(&frame_lock);
	if (!frames_ready)
		frame_init();
	if (frame_free_list) {
		pa = frame_free_list;
		frame_free_list = *(uint64_t *)KADDR(pa);
		frames_free_listed--;
	} else if (frame_next < frame_end) {
		pa = frame_next;
		frame_next += PAGE_SIZE;
	}
	spin_unlock(&frame_lock);
	if (pa)
		mem_fill64(KADDR(pa), 0, PAGE_SIZE / 8);
	return pa;
}

uint64_t frames_contig(unsigned n)
{
	uint64_t pa = 0;
	spin_lock(&frame_lock);
	if (!frames_ready)
		frame_init();
	if (frame_end - frame_next >= (uint64_t)n * PAGE_SIZE) {
		pa = frame_next;
		frame_next += (uint64_t)n * PAGE_SIZE;
	}
	spin_unlock(&frame_lock);
	return pa;
}

static void frame_free(uint64_t pa)
{
	spin_lock(&frame_lock);
	*(uint64_t *)KADDR(pa) = frame_free_list;
	frame_free_list = pa;
	frames_free_listed++;
	spin_unlock(&frame_lock);
}

long frames_available(void)
{
	if (!frames_ready)
		return -1;
	return (long)((frame_end - frame_next) / PAGE_SIZE) + frames_free_listed;
}

/* ---- page tables ---- */

/* The PTE for va (user half), creating the tables on the way if asked. */
static uint64_t *pte_walk(struct proc *p, uint64_t va, bool create)
{
	uint64_t *t = p->pml4;
	for (int shift = 39; shift > 12; shift -= 9) {
		uint64_t *e = &t[(va >> shift) & 511];
		if (!(*e & PTE_P)) {
			if (!create)
				return NULL;
			uint64_t pa = frame_alloc();
			if (!pa)
				return NULL;
			*e = pa | PTE_P | PTE_W | PTE_U;
		}
		t = KADDR(PTE_ADDR(*e));
	}
	return &t[(va >> 12) & 511];
}

/* Map a new zeroed page at va; its PTE, or NULL when out of memory. */
static uint64_t *map_new(struct proc *p, uint64_t va, uint64_t flags)
{
	uint64_t *pte = pte_walk(p, va, true);
	if (!pte)
		return NULL;
	if (*pte & PTE_P) {
		*pte |= flags;
		return pte;
	}
	uint64_t pa = frame_alloc();
	if (!pa)
		return NULL;
	*pte = pa | PTE_P | PTE_U | flags;
	return pte;
}

/* [va, va + len) is mapped user memory (writable if asked). */
static bool user_ok(struct proc *p, uint64_t va, uint64_t len, bool write)
{
	if (va < USER_BASE || va >= USER_TOP || len > USER_TOP - va)
		return false;
	for (uint64_t a = va & ~0xFFFULL; a < va + len; a += PAGE_SIZE) {
		uint64_t *pte = pte_walk(p, a, false);
		if (!pte || !(*pte & PTE_P) || !(*pte & PTE_U) || (write && !(*pte & PTE_W)))
			return false;
	}
	return true;
}

static void free_table(uint64_t *t, int level)
{
	for (int i = 0; i < 512; i++) {
		uint64_t e = t[i];
		if (!(e & PTE_P))
			continue;
		if (level > 1)
			free_table(KADDR(PTE_ADDR(e)), level - 1);
		if (level > 1 || !(e & PTE_NOFREE))
			frame_free(PTE_ADDR(e));
	}
}

/* ---- ELF ---- */

struct elf64_ehdr {
	uint8_t ident[16];
	uint16_t type, machine;
	uint32_t version;
	uint64_t entry, phoff, shoff;
	uint32_t flags;
	uint16_t ehsize, phentsize, phnum, shentsize, shnum, shstrndx;
};

struct elf64_phdr {
	uint32_t type, flags;
	uint64_t offset, vaddr, paddr, filesz, memsz, align;
};

static const char *elf_load(struct proc *p, const uint8_t *img, uint64_t size)
{
	const struct elf64_ehdr *eh = (const void *)img;
	if (size < sizeof(*eh) || memcmp(eh->ident, "\177ELF", 4) || eh->ident[4] != 2 ||
	    eh->machine != 62 || eh->phentsize != sizeof(struct elf64_phdr) ||
	    eh->phoff + (uint64_t)eh->phnum * sizeof(struct elf64_phdr) > size)
		return "not an x86-64 ELF executable";
	const struct elf64_phdr *ph = (const void *)(img + eh->phoff);
	for (int i = 0; i < eh->phnum; i++, ph++) {
		if (ph->type != 1 || !ph->memsz)        /* PT_LOAD, not empty */
			continue;
		if (ph->vaddr < USER_BASE || ph->memsz > USER_MMAP_BASE - ph->vaddr ||
		    ph->vaddr + ph->memsz > USER_MMAP_BASE || ph->filesz > ph->memsz ||
		    ph->offset + ph->filesz > size)
			return "segment outside the program area";
		uint64_t flags = (ph->flags & 2) ? PTE_W : 0;
		for (uint64_t va = ph->vaddr & ~0xFFFULL; va < ph->vaddr + ph->memsz; va += PAGE_SIZE)
			if (!map_new(p, va, flags))
				return "out of memory";
		for (uint64_t off = 0; off < ph->filesz;) {
			uint64_t va = ph->vaddr + off;
			uint64_t n = MIN(PAGE_SIZE - (va & 0xFFF), ph->filesz - off);
			uint64_t *pte = pte_walk(p, va, false);
			memcpy((uint8_t *)KADDR(PTE_ADDR(*pte)) + (va & 0xFFF), img + ph->offset + off, n);
			off += n;
		}
	}
	p->entry = eh->entry;
	if (!user_ok(p, p->entry, 1, false))
		return "entry point not mapped";
	return NULL;
}

/* ---- processes ---- */

static const struct user_prog *find_prog(const char *name)
{
	for (const struct user_prog *u = user_progs; u->name; u++)
		if (!strcmp(u->name, name))
			return u;
	return NULL;
}

bool user_program_exists(const char *name)
{
	return find_prog(name) != NULL;
}

void user_programs_list(void)
{
	for (const struct user_prog *u = user_progs; u->name; u++)
		kprintf("%s%s", u == user_progs ? "" : " ", u->name);
	kprintf("\n");
}

/* Copy argv to the top stack page; sets p->user_rsp, argc, argv. */
static const char *push_args(struct proc *p, int argc, char **argv)
{
	uint64_t top_page = USER_STACK_TOP - PAGE_SIZE;
	uint8_t *k = KADDR(PTE_ADDR(*pte_walk(p, top_page, false)));
	uint64_t sp = USER_STACK_TOP, uargv[17];
	if (argc > 16)
		return "too many arguments";
	for (int i = argc - 1; i >= 0; i--) {
		size_t n = strlen(argv[i]) + 1;
		if (sp - n < top_page + 8 * 20)
			return "arguments too long";
		sp -= n;
		memcpy(k + (sp - top_page), argv[i], n);
		uargv[i] = sp;
	}
	uargv[argc] = 0;
	sp &= ~15ULL;
	sp -= 8 * (argc + 1);
	sp &= ~15ULL;
	memcpy(k + (sp - top_page), uargv, 8 * (argc + 1));
	p->argc = argc;
	p->argv = sp;
	p->user_rsp = sp;
	return NULL;
}

struct proc *proc_create(const char *prog, int argc, char **argv, const char **err)
{
	const struct user_prog *up = find_prog(prog);
	if (!up) {
		*err = "no such program";
		return NULL;
	}
	struct proc *p = NULL;
	spin_lock(&proc_lock);
	for (int i = 0; i < PROC_MAX; i++) {
		if (procs[i].state == P_FREE) {
			p = &procs[i];
			memset(p, 0, sizeof(*p));
			p->state = P_READY;
			p->pid = next_pid++;
			break;
		}
	}
	spin_unlock(&proc_lock);
	if (!p) {
		*err = "too many processes";
		return NULL;
	}
	strlcpy(p->name, prog, sizeof(p->name));
	p->kill_vector = -1;
	p->kill_core = -1;
	p->core = -1;
	p->mmap_next = USER_MMAP_BASE;
	memset(p->iobitmap, 0xFF, sizeof(p->iobitmap));
	uint64_t pa = frame_alloc();
	if (!pa) {
		*err = "out of memory";
		p->state = P_FREE;
		return NULL;
	}
	p->cr3 = pa;
	p->pml4 = KADDR(pa);
	memcpy(p->pml4, boot_pml4, PAGE_SIZE);
	mem_fill64(&p->pml4[1], 0, 255);        /* user half (slot 0 stays: supervisor only) */
	*err = elf_load(p, up->start, up->end - up->start);
	for (int i = 1; !*err && i <= USER_STACK_PAGES; i++)
		if (!map_new(p, USER_STACK_TOP - i * PAGE_SIZE, PTE_W))
			*err = "out of memory";
	if (!*err)
		*err = push_args(p, argc, argv);
	if (*err) {
		proc_free(p);
		return NULL;
	}
	return p;
}

void proc_free(struct proc *p)
{
	if (p->iommu_lent)
		lend_end(p);
	if (p->dev_owned)
		dev_release(p);
	if (p->pml4) {
		for (int i = 1; i < 256; i++) {
			if (p->pml4[i] & PTE_P) {
				free_table(KADDR(PTE_ADDR(p->pml4[i])), 3);
				frame_free(PTE_ADDR(p->pml4[i]));
			}
		}
		frame_free(p->cr3);
		p->pml4 = NULL;
	}
	__atomic_store_n(&p->state, P_FREE, __ATOMIC_RELEASE);
}

struct proc *proc_current(void)
{
	return this_cpu()->cur;
}

/*
 * Entering and leaving a process on one core.  The caller has set this
 * core's bit in p->cores; core_enter loads the process's CR3, RSP0 and I/O
 * bitmap and IRETQs to ring 3 at rip (RDI, RSI as given).  It returns when
 * this core leaves the process: exit, a fatal exception or core_yield on
 * this core, or the process ending on another core (VEC_PROC_STOP, or the
 * check at the end of a system call).  The bit is cleared last.
 */
static bool ap_idle[MAX_CPUS];          /* the core waits in proc_ap_idle */

static void core_enter(struct proc *p, uint64_t rip, uint64_t rsp, uint64_t rdi, uint64_t rsi)
{
	struct cpu *c = this_cpu();
	struct kctx ctx;
	uint64_t ktop = (uint64_t)(uintptr_t)(core_kstacks[c->id] + PROC_KSTACK);
	int main_core = p->core;

	c->cur = p;
	c->sched_ctx = &ctx;
	c->kstack_top = ktop;
	uint64_t old_rsp0 = tss_set_rsp0(ktop);
	if (p->iobitmap_used)
		memcpy(c->tss->iomap, p->iobitmap, sizeof(p->iobitmap));
	write_cr3(p->cr3);
	if (ctx_save(&ctx) == 0 && !__atomic_load_n(&p->dying, __ATOMIC_SEQ_CST)) {
		struct trapframe *tf = (struct trapframe *)(ktop - sizeof(*tf));
		memset(tf, 0, sizeof(*tf));
		tf->rip = rip;
		tf->cs = SEG_UCODE;
		tf->rflags = RFLAGS_IF | 0x2;
		tf->rsp = rsp;
		tf->ss = SEG_UDATA;
		tf->rdi = rdi;
		tf->rsi = rsi;
		user_enter(tf);
	}
	/* Left (ctx_restore): interrupts off, kernel GS. */
	write_cr3(KVA_TO_PA(boot_pml4));
	if (p->iobitmap_used)
		memset(c->tss->iomap, 0xFF, sizeof(p->iobitmap));
	tss_set_rsp0(old_rsp0);
	c->cur = NULL;
	c->sched_ctx = NULL;
	uint64_t left = __atomic_and_fetch(&p->cores, ~(1ULL << c->id), __ATOMIC_SEQ_CST);
	if (!left && main_core >= 0 && main_core != c->id)
		lapic_send_ipi(cpus[main_core].apic_id, VEC_IPI_TEST);  /* wakes proc_run */
}

/* Take l, with interrupts on while waiting: the holder may be waiting
 * for this core to acknowledge a shootdown. */
static void lock_intr(spinlock_t *l)
{
	while (!spin_trylock(l)) {
		uint64_t f = read_rflags();
		sti();
		pause();
		if (!(f & RFLAGS_IF))
			cli();
	}
}

static NORETURN void core_leave(void)
{
	ctx_restore(this_cpu()->sched_ctx, 1);
}

/* The process ends: true for the first caller (who sets the status); the
 * other cores in it are sent VEC_PROC_STOP. */
static bool proc_end(struct proc *p)
{
	bool first = !__atomic_exchange_n(&p->dying, true, __ATOMIC_SEQ_CST);
	uint64_t others = __atomic_load_n(&p->cores, __ATOMIC_SEQ_CST) & ~(1ULL << this_cpu()->id);
	for (int i = 0; others && i < MAX_CPUS; i++)
		if (others & (1ULL << i))
			lapic_send_ipi(cpus[i].apic_id, VEC_PROC_STOP);
	return first;
}

/* A core of a dying process in ring 3 leaves it here; one in ring 0 (a
 * system call with interrupts on) leaves at the end of the call. */
static void proc_stop_ipi(struct trapframe *tf)
{
	struct proc *p = this_cpu()->cur;
	if (p && (tf->cs & 3) && __atomic_load_n(&p->dying, __ATOMIC_SEQ_CST)) {
		lapic_eoi();
		core_leave();
	}
}

/* Runs p on this core; returns when the process has ended (every core of
 * it has left), with its exit status. */
int proc_run(struct proc *p)
{
	struct cpu *c = this_cpu();
	uint64_t f = irq_save();

	p->core = c->id;
	p->state = P_RUNNING;
	__atomic_or_fetch(&p->cores, 1ULL << c->id, __ATOMIC_SEQ_CST);
	core_enter(p, p->entry, p->user_rsp, p->argc, p->argv);
	/* Its other cores leave when it ends (or yield): wait, halted with
	 * interrupts on (their shootdowns may still IPI this core); the last
	 * one wakes us. */
	while (__atomic_load_n(&p->cores, __ATOMIC_SEQ_CST))
		sti_hlt(), cli();
	if (p->iommu_lent)
		lend_end(p);            /* exit gives the VT-d unit back */
	if (p->dev_owned)
		dev_release(p);         /* exit releases the device */
	__atomic_store_n(&p->state, P_DEAD, __ATOMIC_RELEASE);
	irq_restore(f);
	return p->exit_status;
}

static NORETURN void proc_exit(struct proc *p, int status)
{
	if (proc_end(p))
		p->exit_status = status;
	core_leave();
}

static NORETURN void proc_kill(struct proc *p, struct trapframe *tf)
{
	uint64_t addr = tf->vector == 14 ? read_cr2() : 0;
	if (proc_end(p)) {
		p->kill_vector = tf->vector;
		p->kill_rip = tf->rip;
		p->kill_err = tf->err;
		p->kill_addr = addr;
		p->kill_core = this_cpu()->id;
		p->exit_status = 128 + (int)tf->vector;
	}
	/* From ring 3: this core holds no lock (the console's may be another core's). */
	char what[80] = "";
	if (tf->vector == 14)
		ksnprintf(what, sizeof(what), ", address 0x%lx (%s %s)", addr,
			  (tf->err & 1) ? "protection" : "not present", (tf->err & 2) ? "write" : "read");
	else if (tf->err)
		ksnprintf(what, sizeof(what), ", error code 0x%lx", tf->err);
	kprintf("user fault: pid %d (%s) on core %d: %s at rip 0x%lx%s: killed\n", p->pid, p->name,
		this_cpu()->id, exc_name(tf->vector), tf->rip, what);
	core_leave();
}

/* An exception with a user CS.  Returns true for a system call. */
bool user_trap(struct trapframe *tf)
{
	struct proc *p = this_cpu()->cur;
	if (!p)
		return false;
	if (tf->vector == 14 && tf->rip == (uint64_t)(uintptr_t)syscall_entry &&
	    read_cr2() == tf->rip) {
		/* kvm_pvm: SYSCALL set RIP = LSTAR, RCX, R11 but stayed in ring 3. */
		pvm_syscalls++;
		if (tf->rcx < USER_BASE || tf->rcx >= USER_TOP) {
			tf->rip = tf->rcx;
			proc_kill(p, tf);
		}
		tf->rip = tf->rcx;
		tf->rflags = (tf->r11 & USER_RFLAGS) | RFLAGS_IF | 0x2;
		tf->vector = VEC_SYSCALL;
		syscall_dispatch(tf);
		return true;
	}
	proc_kill(p, tf);
}

/* ---- system calls ---- */

static int64_t sys_mmap(struct proc *p, uint64_t len)
{
	if (!len || len > (64ULL << 20))
		return -1;
	uint64_t n = (len + PAGE_SIZE - 1) / PAGE_SIZE;
	uint64_t va = p->mmap_next;
	if (va + n * PAGE_SIZE > USER_STACK_TOP - USER_STACK_PAGES * PAGE_SIZE - PAGE_SIZE)
		return -1;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t *pte = map_new(p, va + i * PAGE_SIZE, PTE_W);
		if (pte && p->dev_owned && io_map(p, va + i * PAGE_SIZE, *pte))
			pte = NULL;
		if (!pte) {
			/* leave what was mapped: munmap or exit frees it */
			p->mmap_next = va + (i + 1) * PAGE_SIZE;
			return -1;
		}
	}
	p->mmap_next = va + (n + 1) * PAGE_SIZE;       /* one guard page between regions */
	return va;
}

/* `iommu noflush`: a frame the device may still reach through a stale
 * IOTLB entry is held back until the domain is flushed (dev_release, or
 * here once PROC_QUARANTINE frames are held: one flush frees them all). */
static void quarantine(struct proc *p, uint64_t pa)
{
	if (p->nquarantine == PROC_QUARANTINE) {
		spin_lock(&user_iommu_lock);
		const char *err = iommu_inv_iotlb(INV_DOMAIN, p->iodom.did, 0, 0);
		spin_unlock(&user_iommu_lock);
		if (!err)
			quarantine_release(p);
	}
	if (p->nquarantine < PROC_QUARANTINE)
		p->quarantine[p->nquarantine++] = pa;
	else
		p->quarantine_lost++;   /* the flush failed: never reused, safer than the free list */
}

static void quarantine_release(struct proc *p)
{
	for (unsigned i = 0; i < p->nquarantine; i++) {
		if (i == 0)
			p->stale_word = ((volatile uint64_t *)KADDR(p->quarantine[0]))[7];
		frame_free(p->quarantine[i]);
	}
	p->nquarantine = 0;
}

#define UNMAP_BATCH     32      /* pages per shootdown round */
#define FRAME_IO        1ULL    /* frames[] tag: the device could reach it */

/*
 * munmap: a round of up to UNMAP_BATCH pages at a time.  The PTEs are
 * cleared (and INVLPG here), then the other cores running the process
 * invalidate them (IPIs, each acknowledged: tlb_shootdown_cores), then the
 * IOTLB of the process's domain for the IOVAs that were mapped (unless
 * `iommu noflush`), and only then are the frames freed.
 */
static int64_t sys_munmap(struct proc *p, uint64_t va, uint64_t len)
{
	if ((va & 0xFFF) || !len || va < USER_MMAP_BASE || va >= p->mmap_next ||
	    len > p->mmap_next - va)
		return -1;
	uint64_t a = va, end = va + len;
	while (a < end) {
		uint64_t frames[UNMAP_BATCH], iovas[UNMAP_BATCH], first = a;
		int nf = 0, ni = 0;
		for (; a < end && nf < UNMAP_BATCH && ni < UNMAP_BATCH; a += PAGE_SIZE) {
			uint64_t *pte = pte_walk(p, a, false);
			if (!pte || !(*pte & PTE_P))
				continue;
			uint64_t e = *pte;
			*pte = 0;
			invlpg(a);
			bool io = p->dev_owned && io_clear(p, a);
			if (io)
				iovas[ni++] = a - USER_DMA_BASE;
			if (!(e & PTE_NOFREE))
				frames[nf++] = PTE_ADDR(e) | (io ? FRAME_IO : 0);
		}
		uint64_t others = __atomic_load_n(&p->cores, __ATOMIC_SEQ_CST) & ~(1ULL << this_cpu()->id);
		if (others) {
			p->shootdowns++;
			p->shoot_acks += tlb_shootdown_cores(others, first, (a - first) / PAGE_SIZE);
		}
		bool stale = ni && iommu_noflush;
		if (ni && !stale)
			io_flush(p, iovas, ni);
		for (int i = 0; i < nf; i++) {
			if (stale && (frames[i] & FRAME_IO))
				quarantine(p, frames[i] & ~FRAME_IO);
			else
				frame_free(frames[i] & ~FRAME_IO);
		}
	}
	p->last_unmap = va;
	return 0;
}

/* ---- device assignment: the edu or a virtio-pci device through VT-d (domain id = pid) ---- */

/*
 * The process's second-level table mirrors its user page table over the
 * DMA window: IOVA = user virtual address - USER_DMA_BASE (proc.h: the
 * edu's 28-bit DMA mask), leaves point at the same frames (read-only pages
 * read-only), device BAR pages left out.  The tables come from user frames
 * (freed on release).
 */
static uint64_t *io_walk(struct proc *p, uint64_t va, bool create)
{
	uint64_t *t = p->iodom.top;
	for (int l = p->iodom.levels; l > 1; l--) {
		uint64_t *e = &t[(va >> (12 + 9 * (l - 1))) & 511];
		if (!(*e & (SL_R | SL_W))) {
			if (!create)
				return NULL;
			uint64_t pa = frame_alloc();
			if (!pa)
				return NULL;
			iommu_flush_cache(KADDR(pa), PAGE_SIZE);
			*e = pa | SL_R | SL_W;
			iommu_flush_cache(e, 8);
		}
		t = KADDR(PTE_ADDR(*e));
	}
	return &t[(va >> 12) & 511];
}

/* Mirror one user PTE; nonzero when out of memory. */
static int io_map(struct proc *p, uint64_t va, uint64_t pte)
{
	if (!p->iodom.top)
		return 0;               /* an untranslated device (ASSIGN_PHYSICAL_OK) */
	if (!(pte & PTE_P) || !(pte & PTE_U) || (pte & PTE_NOFREE) ||
	    va < USER_DMA_BASE || va - USER_DMA_BASE >= USER_DMA_SIZE)
		return 0;
	uint64_t *e = io_walk(p, va - USER_DMA_BASE, true);
	if (!e)
		return -1;
	*e = PTE_ADDR(pte) | SL_R | ((pte & PTE_W) ? SL_W : 0);
	iommu_flush_cache(e, 8);
	return 0;
}

/* munmap of an owner: clear va's IOVA in the domain; true if it was mapped. */
static bool io_clear(struct proc *p, uint64_t va)
{
	if (!p->iodom.top || va < USER_DMA_BASE || va - USER_DMA_BASE >= USER_DMA_SIZE)
		return false;
	uint64_t *e = io_walk(p, va - USER_DMA_BASE, false);
	if (!e || !*e)
		return false;
	*e = 0;
	iommu_flush_cache(e, 8);
	return true;
}

/* Invalidate these IOVAs in the process's domain: page-selective when
 * CAP.PSI and at most IO_FLUSH_PAGES of them (queued: one descriptor each
 * and one wait; registers: one invalidation each), else the domain. */
#define IO_FLUSH_PAGES  16

static void io_flush(struct proc *p, const uint64_t *iovas, int n)
{
	const char *err = NULL;
	uint16_t did = p->iodom.did;
	spin_lock(&user_iommu_lock);
	if (!CAP_PSI(iommu.cap) || n > IO_FLUSH_PAGES) {
		err = iommu_inv_iotlb(INV_DOMAIN, did, 0, 0);
	} else if (iommu.qi && iommu_qi_room(n + 1)) {
		for (int i = 0; i < n; i++)
			iommu_qi_push_iotlb(INV_PAGE, did, iovas[i], 0);
		err = iommu_qi_wait(false);
	} else {
		for (int i = 0; i < n && !err; i++)
			err = iommu_inv_iotlb(INV_PAGE, did, iovas[i], 0);
	}
	spin_unlock(&user_iommu_lock);
	p->iotlb_page_invs += n;
	if (err)
		kprintf("pid %d: IOTLB invalidation of 0x%lx (%d pages) failed: %s\n", p->pid, iovas[0],
			n, err);
}

static int io_mirror(struct proc *p, uint64_t *t, int level, uint64_t va)
{
	for (int i = 0; i < 512; i++) {
		uint64_t e = t[i], a = va + ((uint64_t)i << (12 + 9 * (level - 1)));
		if (level == 4 && (i < 1 || i >= 256))
			continue;               /* user half only */
		if (!(e & PTE_P))
			continue;
		if (level > 1 ? io_mirror(p, KADDR(PTE_ADDR(e)), level - 1, a) : io_map(p, a, e))
			return -1;
	}
	return 0;
}

static void io_free(uint64_t *t, int level)
{
	for (int i = 0; level > 1 && i < 512; i++) {
		if (t[i] & (SL_R | SL_W)) {
			io_free(KADDR(PTE_ADDR(t[i])), level - 1);
			frame_free(PTE_ADDR(t[i]));
		}
	}
}

/* An edu function: sel's bdf, or for ASSIGN_EDU the first one no process
 * owns (read without the lock: sys_assign tries again when it loses that
 * race).  Bus mastering on: edu.c enables it on the first edu only. */
static struct pci_dev *edu_target(uint64_t sel)
{
	if (edu_probe())
		return NULL;
	for (int i = 0; i < pci_ndevs; i++) {
		struct pci_dev *d = &pci_devs[i];
		if (d->vendor != 0x1234 || d->device != 0x11e8)
			continue;
		if (sel == pci_sid(d) || (sel == ASSIGN_EDU && !dev_owner[i])) {
			pci_set_master(d, true);
			return d;
		}
	}
	return NULL;
}

/* An I/OAT function: sel's bdf, or for ASSIGN_IOAT the first no process owns. */
static struct pci_dev *ioat_target(uint64_t sel)
{
	if (ioat_probe())
		return NULL;
	for (int i = 0; i < ioat_nchans; i++) {
		struct pci_dev *d = ioat_chans[i].pci;
		if (sel == pci_sid(d) || (sel == ASSIGN_IOAT && !dev_owner[d - pci_devs]))
			return d;
	}
	return NULL;
}

static bool is_ioat(const struct pci_dev *d)
{
	return d->vendor == IOAT_VENDOR && d->device == IOAT_DEVICE;
}

/* The function assign(sel) names, if the kernel can give it: an edu, an
 * I/OAT channel, a modern virtio-pci function (*vd: its virtio device,
 * else NULL), or a network controller. */
static struct pci_dev *assign_target(uint64_t sel, struct virtio_dev **vd)
{
	*vd = NULL;
	struct pci_dev *e = edu_target(sel);
	if (e)
		return e;
	if ((e = ioat_target(sel)))
		return e;
	virtio_scan();
	for (int i = 0; i < virtio_ndevs; i++) {
		struct virtio_dev *v = &virtio_devs[i];
		struct pci_dev *d = v->pci;
		if (v->transport != VIRTIO_PCI || !v->common || !v->notify_base)
			continue;
		if (sel == pci_sid(d) || sel == ASSIGN_PCI_ID(d->vendor, d->device)) {
			*vd = v;
			return d;
		}
	}
	/* A network controller (class 02) the kernel has no driver for: its BAR0. */
	for (int i = 0; i < pci_ndevs; i++) {
		struct pci_dev *d = &pci_devs[i];
		if (d->class == 0x02 && d->vendor != 0x1AF4 &&
		    (sel == pci_sid(d) || sel == ASSIGN_PCI_ID(d->vendor, d->device))) {
			pci_set_master(d, true);
			return d;
		}
	}
	return NULL;
}

/* ASSIGN_VIRTIO_MMIO(type): the first modern virtio-mmio device of that type. */
static struct virtio_dev *mmio_target(uint64_t sel)
{
	virtio_scan();
	for (int i = 0; i < virtio_ndevs; i++) {
		struct virtio_dev *v = &virtio_devs[i];
		if (v->transport == VIRTIO_MMIO && v->mmio_version == 2 && !v->err &&
		    sel == ASSIGN_VIRTIO_MMIO(v->type))
			return v;
	}
	return NULL;
}

/* A virtio-mmio device to p: its register page mapped uncached at the next
 * mmap slot; DMA by physical address (dma_addr()), as nothing translates it. */
static int64_t assign_mmio(struct proc *p, struct virtio_dev *vd, uint64_t uinfo)
{
	if (!user_ok(p, uinfo, sizeof(struct assign_virtio), true))
		return -1;
	spin_lock(&assign_lock);
	bool busy = vd->owner_pid != 0;
	if (!busy)
		vd->owner_pid = p->pid;
	spin_unlock(&assign_lock);
	if (busy)
		return -1;
	p->dev_virtio = vd;
	p->dev_passthrough = true;
	p->dev_owned = true;            /* from here dev_release undoes it all */
	uint64_t va = p->mmap_next, *pte = pte_walk(p, va, true);
	if (!virtio_give(vd, p->pid, false) || !pte) {
		dev_release(p);
		return -1;
	}
	*pte = vd->mmio_pa | PTE_P | PTE_W | PTE_U | PTE_PCD | PTE_PWT | PTE_NOFREE;
	p->bar_va = va;
	p->bar_pages = 1;
	p->mmap_next = va + 2 * PAGE_SIZE;
	struct assign_virtio info = { .device = 0x100, .device_len = PAGE_SIZE - 0x100,
				      .map_len = PAGE_SIZE, .mmio = 1 };
	memcpy((void *)(uintptr_t)uinfo, &info, sizeof(info));         /* checked above */
	return va;
}

/* Where the four virtio structures are in the process's mapping of the BARs
 * (bar_off[b]: where BAR b starts in it, len[b]: how much of it is mapped). */
static bool virtio_layout(struct virtio_dev *v, const uint64_t *bar_off, const uint64_t *len,
			  struct assign_virtio *info)
{
	uint32_t *offs = &info->common, *lens = &info->common_len;
	uintptr_t present[] = { v->common, v->notify_base, v->isr, v->devcfg };
	memset(info, 0, sizeof(*info));
	for (int k = VPCI_CAP_COMMON; k <= VPCI_CAP_DEVICE; k++) {
		if (!present[k - 1])
			continue;
		uint8_t b = v->cap[k].bar;
		if ((uint64_t)v->cap[k].off + v->cap[k].len > len[b])
			return false;
		offs[k - 1] = bar_off[b] + v->cap[k].off;
		lens[k - 1] = v->cap[k].len;
	}
	info->notify_off_multiplier = v->notify_mult;
	info->bdf = pci_sid(v->pci);
	info->pci_device = v->pci->device;
	return true;
}

static int64_t sys_assign(struct proc *p, uint64_t sel, uint64_t uinfo)
{
	struct virtio_dev *vd;
	int tries = 0;
	bool physical_ok = sel & ASSIGN_PHYSICAL_OK;
	sel &= ~ASSIGN_PHYSICAL_OK;
	if (p->dev_owned || iommu.lent_to)
		return -1;
	bool have_iommu = !iommu_probe();
	if ((!have_iommu && !physical_ok) || (have_iommu && iommu_enable()))
		return -1;
	if (sel >> 32 == ASSIGN_VIRTIO_MMIO(0) >> 32) {
		vd = mmio_target(sel);
		return physical_ok && vd && vd->type == VIRTIO_ID_NET ? assign_mmio(p, vd, uinfo) : -1;
	}
retry:;
	struct pci_dev *d = assign_target(sel, &vd);
	if (!d)
		return -1;
	/* Untranslated: a network device whose owner asked for it (uapi.h). */
	bool translated = have_iommu && iommu_covers(d->bus, d->dev, d->fn);
	if (!translated && !(physical_ok && (vd ? vd->type == VIRTIO_ID_NET : d->class == 0x02)))
		return -1;
	if (vd && !user_ok(p, uinfo, sizeof(struct assign_virtio), true))
		return -1;
	if (translated && (p->pid <= 1 || p->pid >= (1 << (4 + 2 * CAP_ND(iommu.cap)))))
		return -1;              /* domain id = pid: 1 is the pass-through domain */
	/* The BARs to map: the edu's BAR0; those holding a virtio device's structures. */
	int bars[4], nbars = 0;
	uintptr_t present[] = { 0, vd ? vd->common : 0, vd ? vd->notify_base : 0,
				vd ? vd->isr : 0, vd ? vd->devcfg : 0 };
	if (!vd)
		bars[nbars++] = 0;
	for (int k = VPCI_CAP_COMMON; vd && k <= VPCI_CAP_DEVICE; k++) {
		bool seen = false;
		for (int i = 0; i < nbars; i++)
			seen |= bars[i] == vd->cap[k].bar;
		if (present[k] && !seen)
			bars[nbars++] = vd->cap[k].bar;
	}
	spin_lock(&assign_lock);
	struct proc **owner = &dev_owner[d - pci_devs];
	bool busy = *owner != NULL;
	if (!busy)
		*owner = p;
	spin_unlock(&assign_lock);
	if (busy && (sel == ASSIGN_EDU || sel == ASSIGN_IOAT) && ++tries < 4)
		goto retry;             /* another process took that one first */
	if (busy)
		return -1;
	uint64_t top = translated ? frame_alloc() : 0;
	p->iodom.did = p->pid;
	p->iodom.levels = iommu.levels;
	p->iodom.top = top ? KADDR(top) : NULL;
	p->iodom.ept_format = false;
	p->dev_pci = d;
	p->dev_virtio = vd;
	p->dev_sid = pci_sid(d);
	p->dev_passthrough = !translated;
	p->dev_owned = true;            /* from here dev_release undoes it all */
	/* The kernel's driver lets go first: a reset drops the queues it set up
	 * with physical addresses, before the device sees the process's IOVAs. */
	if (vd && !virtio_give(vd, p->pid, translated))
		goto fail;
	if (is_ioat(d))
		ioat_give(d, p->pid);   /* the channel reset: the kernel's ring is gone */
	if (translated && (!top || io_mirror(p, p->pml4, 4, 0)))
		goto fail;
	if (translated)
		iommu_flush_cache(p->iodom.top, PAGE_SIZE);
	/* The BARs into the process, back to back, uncached (PCD | PWT), at
	 * the next mmap slot; up to 1 MiB of each. */
	uint64_t va = p->mmap_next, bar_off[6] = { 0 }, bar_len[6] = { 0 };
	p->bar_va = va;
	for (int i = 0; i < nbars; i++) {
		uint64_t len, bar = pci_bar(d, bars[i], &len);
		uint64_t n = MIN(len, 1ULL << 20) / PAGE_SIZE;
		if (!bar || !n || va + (p->bar_pages + n + 1) * PAGE_SIZE >
		    USER_STACK_TOP - (USER_STACK_PAGES + 1) * PAGE_SIZE)
			goto fail;
		bar_off[bars[i]] = p->bar_pages * PAGE_SIZE;
		bar_len[bars[i]] = n * PAGE_SIZE;
		for (uint64_t j = 0; j < n; j++) {
			uint64_t *pte = pte_walk(p, va + p->bar_pages * PAGE_SIZE, true);
			if (!pte)
				goto fail;
			*pte = (bar + j * PAGE_SIZE) | PTE_P | PTE_W | PTE_U | PTE_PCD | PTE_PWT | PTE_NOFREE;
			p->bar_pages++;
		}
	}
	p->mmap_next = va + (p->bar_pages + 1) * PAGE_SIZE;
	struct assign_virtio info;
	if (vd) {
		if (!virtio_layout(vd, bar_off, bar_len, &info))
			goto fail;
		info.map_len = p->bar_pages * PAGE_SIZE;
	}
	if (!translated)
		goto done;
	/* The context entry: takes the old one down (context + IOTLB
	 * invalidation), writes TT=0 / did = pid, device-selective context
	 * invalidation; then the new domain's IOTLB, which may hold entries of
	 * an earlier user of this domain id. */
	spin_lock(&user_iommu_lock);
	const char *cerr = iommu_set_context(d->bus, d->dev << 3 | d->fn, TT_UNTRANSLATED, &p->iodom,
					     p->iodom.did);
	if (!cerr)
		cerr = iommu_inv_iotlb(INV_DOMAIN, p->iodom.did, 0, 0);
	spin_unlock(&user_iommu_lock);
	if (cerr)
		goto fail;
	uint64_t *ce = iommu.ctx[d->bus] + 2 * (d->dev << 3 | d->fn);
	p->assigned_ctx[0] = ce[0];
	p->assigned_ctx[1] = ce[1];
done:
	if (vd)
		memcpy((void *)(uintptr_t)uinfo, &info, sizeof(info));         /* checked above */
	return va;
fail:
	dev_release(p);
	return -1;
}

/* A virtio device is reset first (status 0: it stops using the process's
 * queues), then the context entry goes back to pass-through (the old one
 * taken down with the device-selective context and domain IOTLB
 * invalidations), the BARs are unmapped and the tables freed; the kernel's
 * driver sets the device up again on its next use. */
static void dev_release(struct proc *p)
{
	if (!p->dev_owned)
		return;
	struct pci_dev *d = p->dev_pci;
	struct virtio_dev *vd = p->dev_virtio;
	if (vd && !virtio_reset(vd))
		kprintf("pid %d: releasing the device: it did not reset\n", p->pid);
	if (!vd && d->class == 0x02)
		pci_set_master(d, false);       /* no driver here to stop it: no more DMA */
	if (d && is_ioat(d))
		ioat_give(d, 0);        /* reset: no DMA to the process's IOVAs from here */
	if (p->iodom.top) {
		spin_lock(&user_iommu_lock);
		const char *err = iommu_set_passthrough(d->bus, d->dev << 3 | d->fn);
		if (!err)
			err = iommu_inv_iotlb(INV_DOMAIN, p->iodom.did, 0, 0);
		spin_unlock(&user_iommu_lock);
		if (err)
			kprintf("pid %d: releasing the device: %s\n", p->pid, err);
		if (!err)
			quarantine_release(p);  /* the domain's IOTLB is clean now */
	}
	if (vd)
		__atomic_store_n(&vd->owner_pid, 0, __ATOMIC_RELEASE);
	for (uint64_t i = 0; i < p->bar_pages && p->pml4; i++) {
		uint64_t *pte = pte_walk(p, p->bar_va + i * PAGE_SIZE, false);
		if (pte) {
			*pte = 0;
			if (this_cpu()->cur == p)
				invlpg(p->bar_va + i * PAGE_SIZE);
		}
	}
	if (this_cpu()->cur == p)       /* release(): its other cores may map the BAR */
		tlb_shootdown_cores(p->cores, p->bar_va, p->bar_pages);
	p->bar_pages = 0;
	if (p->iodom.top) {
		io_free(p->iodom.top, p->iodom.levels);
		frame_free(KVA_TO_PA(p->iodom.top));
		p->iodom.top = NULL;
	}
	p->dev_owned = false;
	spin_lock(&assign_lock);
	if (d && dev_owner[d - pci_devs] == p)
		dev_owner[d - pci_devs] = NULL;
	spin_unlock(&assign_lock);
	p->dev_pci = NULL;
	p->dev_virtio = NULL;
	p->dev_passthrough = false;
}

/* Another core for p: an idle AP (waiting in proc_ap_idle) enters ring 3
 * at entry(arg, core) with RSP = sp - 8 (as after a call; the return
 * address is 0). */
static int64_t sys_core_request(struct proc *p, uint64_t entry, uint64_t sp, uint64_t arg)
{
	if (!user_ok(p, entry, 1, false) || (sp & 15) || !user_ok(p, sp - 16, 16, true))
		return -1;
	*(volatile uint64_t *)(uintptr_t)(sp - 8) = 0;
	int self = this_cpu()->id;
	for (int i = 0; i < MAX_CPUS; i++) {
		struct proc *none = NULL;
		if (i == self || !cpus[i].online || !__atomic_load_n(&ap_idle[i], __ATOMIC_ACQUIRE) ||
		    !__atomic_compare_exchange_n(&cpus[i].job, &none, CORE_RESERVED, false,
						 __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
			continue;
		core_start[i] = (struct core_start){ p, entry, sp - 8, arg };
		__atomic_or_fetch(&p->cores, 1ULL << i, __ATOMIC_SEQ_CST);
		p->ncores_started++;
		__atomic_store_n(&cpus[i].job, p, __ATOMIC_SEQ_CST);
		lapic_send_ipi(cpus[i].apic_id, VEC_IPI_TEST);
		return i;
	}
	return -1;
}

/* dev_xlate(on): the owner's device through its domain (as assign left it)
 * or through the kernel's pass-through context (benchmarks: no isolation). */
static int64_t sys_dev_xlate(struct proc *p, uint64_t on)
{
	if (!p->dev_owned)
		return -1;
	if (!on == p->dev_passthrough)
		return 0;
	if (!p->iodom.top)
		return -1;              /* nothing translates this device */
	struct pci_dev *d = p->dev_pci;
	uint8_t devfn = d->dev << 3 | d->fn;
	spin_lock(&user_iommu_lock);
	const char *err = on ? iommu_set_context(d->bus, devfn, TT_UNTRANSLATED, &p->iodom, p->iodom.did)
			     : iommu_set_passthrough(d->bus, devfn);
	if (!err)
		err = iommu_inv_iotlb(INV_DOMAIN, p->iodom.did, 0, 0);
	spin_unlock(&user_iommu_lock);
	if (err) {
		kprintf("pid %d: dev_xlate(%lu): %s\n", p->pid, on, err);
		return -1;
	}
	p->dev_passthrough = !on;
	return 0;
}

/* dma_addr(va): the IOVA of va, or its physical address under dev_xlate(0). */
static int64_t sys_dma_addr(struct proc *p, uint64_t va)
{
	if (!p->dev_owned || !user_ok(p, va, 1, false))
		return -1;
	uint64_t pte = *pte_walk(p, va, false);
	if (pte & PTE_NOFREE)
		return -1;              /* a device's BAR */
	if (p->dev_passthrough)
		return PTE_ADDR(pte) | (va & 0xFFF);
	if (va < USER_DMA_BASE || va - USER_DMA_BASE >= USER_DMA_SIZE)
		return -1;
	return va - USER_DMA_BASE;
}

/* ---- lending the VT-d unit to a process (benchmark only, uapi.h) ---- */

/*
 * iommu_lend(mode, info): the DRHD register page (uncached) and, for
 * IOMMU_LEND_QI, the kernel's invalidation queue page are mapped into the
 * process at the next mmap slot, as device BARs are (PTE_NOFREE: frames
 * not the process's); the driver stops issuing invalidations
 * (iommu_lend).  No isolation while it lasts: the process can make the
 * unit write any physical address.  Refused while a process owns a device
 * behind the unit (its munmaps would need the IOTLB), as assign() is
 * refused while the unit is lent.
 */
static int64_t sys_iommu_lend(struct proc *p, uint64_t mode, uint64_t uinfo)
{
	if (mode == IOMMU_LEND_RETURN)
		return p->iommu_lent ? (lend_end(p), 0) : -1;
	if ((mode != IOMMU_LEND_QI && mode != IOMMU_LEND_REG) || p->iommu_lent || p->dev_owned ||
	    !user_ok(p, uinfo, sizeof(struct iommu_lend), true))
		return -1;
	if (iommu_probe() || iommu_enable())
		return IOMMU_LEND_ENODEV;
	bool qi = mode == IOMMU_LEND_QI;
	if (qi && !ECAP_QI(iommu.ecap))
		return IOMMU_LEND_ENOQI;
	struct iommu_lend info;
	memcpy(&info, (const void *)(uintptr_t)uinfo, sizeof(info));
	uint64_t status_pa = 0;
	if (info.status_va) {
		uint64_t sva = info.status_va & ~0xFFFULL;
		if (!user_ok(p, sva, PAGE_SIZE, true) || (*pte_walk(p, sva, false) & PTE_NOFREE))
			return -1;
		status_pa = PTE_ADDR(*pte_walk(p, sva, false)) | (info.status_va & 0xFFF);
	}
	if (p->pid >= (1 << (4 + 2 * CAP_ND(iommu.cap))))
		return -1;              /* the pid is the domain id it invalidates in */
	uint64_t n = qi ? 2 : 1, va = p->mmap_next;
	if (va + (n + 1) * PAGE_SIZE > USER_STACK_TOP - (USER_STACK_PAGES + 1) * PAGE_SIZE)
		return -1;
	uint64_t *ptes[2];
	for (uint64_t i = 0; i < n; i++)
		if (!(ptes[i] = pte_walk(p, va + i * PAGE_SIZE, true)))
			return -1;
	bool busy = false;
	spin_lock(&assign_lock);
	for (int i = 0; i < PCI_MAX_DEVS; i++)
		busy |= dev_owner[i] != NULL;
	spin_unlock(&assign_lock);
	spin_lock(&user_iommu_lock);
	const char *err = busy ? "a process owns a device behind it" : iommu_lend(p->pid, qi);
	spin_unlock(&user_iommu_lock);
	if (err) {
		kprintf("pid %d: iommu_lend: %s\n", p->pid, err);
		return busy || iommu.lent_to ? IOMMU_LEND_EBUSY : -1;
	}
	*ptes[0] = iommu.drhd->base | PTE_P | PTE_W | PTE_U | PTE_PCD | PTE_PWT | PTE_NOFREE;
	if (qi)
		*ptes[1] = virt_to_phys(iommu.iq) | PTE_P | PTE_W | PTE_U | PTE_NOFREE;
	p->iommu_lent = true;
	p->lend_va = va;
	p->lend_pages = n;
	p->mmap_next = va + (n + 1) * PAGE_SIZE;
	info.status_pa = status_pa;
	info.regs = va;
	info.queue = qi ? va + PAGE_SIZE : 0;
	info.cap = iommu.cap;
	info.ecap = iommu.ecap;
	info.desc_drain = iommu.iotlb_drain;
	info.reg_drain = iommu.iotlb_drain << 42;       /* DW 6 -> 48, DR 7 -> 49 */
	info.entries = qi ? IQ_ENTRIES : 0;
	info.tail = qi ? iommu.iq_tail : 0;
	info.iva = iommu.iro;
	info.iotlb = iommu.iro + 8;
	info.iqh = DMAR_IQH;
	info.iqt = DMAR_IQT;
	info.fsts = DMAR_FSTS;
	info.gsts = DMAR_GSTS;
	info.did = p->pid;
	info.qi = qi;
	info.rsvd = 0;
	memcpy((void *)(uintptr_t)uinfo, &info, sizeof(info));         /* checked above */
	return va;
}

/* The pages out of the process (and its other cores' TLBs), then the
 * driver takes the unit back: the queue drained, IQT as its tail. */
static void lend_end(struct proc *p)
{
	for (uint64_t i = 0; i < p->lend_pages && p->pml4; i++) {
		uint64_t *pte = pte_walk(p, p->lend_va + i * PAGE_SIZE, false);
		if (pte) {
			*pte = 0;
			if (this_cpu()->cur == p)
				invlpg(p->lend_va + i * PAGE_SIZE);
		}
	}
	if (this_cpu()->cur == p)
		tlb_shootdown_cores(p->cores, p->lend_va, p->lend_pages);
	spin_lock(&user_iommu_lock);
	const char *err = iommu_take_back();
	spin_unlock(&user_iommu_lock);
	if (err)
		kprintf("pid %d: taking the VT-d unit back: %s\n", p->pid, err);
	p->iommu_lent = false;
	p->lend_pages = 0;
}

static int64_t sys_ioperm(struct proc *p, uint64_t port, uint64_t n, uint64_t on)
{
	if (port >= 0x400 || n > 0x400 - port)
		return -1;
	for (uint64_t i = port; i < port + n; i++) {
		if (on)
			p->iobitmap[i / 8] &= ~(1 << (i % 8));
		else
			p->iobitmap[i / 8] |= 1 << (i % 8);
	}
	p->iobitmap_used = true;
	memcpy(this_cpu()->tss->iomap, p->iobitmap, sizeof(p->iobitmap));
	return 0;
}

void syscall_dispatch(struct trapframe *tf)
{
	struct cpu *c = this_cpu();
	struct proc *p = c->cur;
	uint64_t a0 = tf->rdi, a1 = tf->rsi, a2 = tf->rdx;
	int64_t ret = -1;

	if (tf->cs == SEG_UCODE && tf->vector == VEC_SYSCALL && tf->err == 0 && tf->rip == tf->rcx)
		sysret_syscalls++;
	/* Calls that read or change the address space, one core at a time (a
	 * write must not read a buffer another core is unmapping). */
	bool vm = tf->rax != SYS_EXIT && tf->rax != SYS_CORE_YIELD && tf->rax != SYS_YIELD &&
		  tf->rax != SYS_GETPID && tf->rax != SYS_GETCORE && tf->rax != SYS_NRUNNING &&
		  tf->rax != SYS_TSC_KHZ && tf->rax != SYS_NCORES;
	if (vm)
		lock_intr(&p->vm_lock);
	switch (tf->rax) {
	case SYS_EXIT:
		proc_exit(p, (int)(a0 & 0xFF));
	case SYS_WRITE:
		a2 = MIN(a2, 65536);
		if (user_ok(p, a1, a2, false)) {
			console_write((const char *)(uintptr_t)a1, a2);
			ret = a2;
		}
		break;
	case SYS_MMAP:
		ret = sys_mmap(p, a0);
		break;
	case SYS_MUNMAP:
		ret = sys_munmap(p, a0, a1);
		break;
	case SYS_GETPID:
		ret = p->pid;
		break;
	case SYS_YIELD:
		/* One process per core: let pending interrupts in, then go on. */
		sti();
		pause();
		cli();
		ret = 0;
		break;
	case SYS_GETCORE:
		ret = c->id;
		break;
	case SYS_NRUNNING:
		ret = 0;
		for (int i = 0; i < PROC_MAX; i++)
			ret += procs[i].state == P_RUNNING;
		break;
	case SYS_IOPERM:
		ret = sys_ioperm(p, a0, a1, a2);
		break;
	case SYS_TSC_KHZ:
		ret = tsc_khz;
		break;
	case SYS_ASSIGN:
		ret = sys_assign(p, a0, a1);
		break;
	case SYS_RELEASE:
		ret = p->dev_owned ? (dev_release(p), 0) : -1;
		break;
	case SYS_CORE_REQUEST:
		ret = sys_core_request(p, a0, a1, a2);
		break;
	case SYS_CORE_YIELD:
		core_leave();
	case SYS_DEV_XLATE:
		ret = sys_dev_xlate(p, a0);
		break;
	case SYS_DMA_ADDR:
		ret = sys_dma_addr(p, a0);
		break;
	case SYS_IOMMU_LEND:
		ret = sys_iommu_lend(p, a0, a1);
		break;
	case SYS_NCORES:
		ret = 0;
		for (uint64_t m = __atomic_load_n(&p->cores, __ATOMIC_SEQ_CST); m; m &= m - 1)
			ret++;
		break;
	}
	if (vm)
		spin_unlock(&p->vm_lock);
	tf->rax = ret;
	/* The process ended on another core while this one was in here. */
	if (__atomic_load_n(&p->dying, __ATOMIC_SEQ_CST))
		core_leave();
}

/* ---- several cores ---- */

/* Each AP waits here for a process sent by proc_start_on, or for a
 * process that asked for one more core (core_request). */
void proc_ap_idle(void)
{
	struct cpu *c = this_cpu();
	__atomic_store_n(&ap_idle[c->id], true, __ATOMIC_RELEASE);
	for (;;) {
		cli();
		struct proc *p = __atomic_load_n(&c->job, __ATOMIC_SEQ_CST);
		if (p == CORE_RESERVED) {
			pause();
			continue;
		}
		if (p && core_start[c->id].p == p) {
			struct core_start cs = core_start[c->id];
			core_start[c->id].p = NULL;
			core_enter(p, cs.entry, cs.sp, cs.arg, c->id);
			__atomic_store_n(&c->job, NULL, __ATOMIC_RELEASE);
			continue;
		}
		if (p) {
			int st = proc_run(p);
			bool detached = p->detached;
			if (detached) {
				kprintf("pid %d (%s) on core %d: exit status %d\n", p->pid, p->name, c->id, st);
				proc_free(p);
			}
			__atomic_store_n(&c->job, NULL, __ATOMIC_RELEASE);
			continue;
		}
		sti_hlt();
	}
}

bool proc_start_on(struct proc *p, int core)
{
	if (core < 0 || core >= MAX_CPUS || !cpus[core].online || core == this_cpu()->id)
		return false;
	struct proc *none = NULL;
	if (!__atomic_compare_exchange_n(&cpus[core].job, &none, p, false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return false;           /* busy */
	lapic_send_ipi(cpus[core].apic_id, VEC_IPI_TEST);
	return true;
}

int proc_wait(struct proc *p, uint64_t timeout_us)
{
	uint64_t end = timeout_us ? tsc_deadline_us(timeout_us) : 0;
	while (__atomic_load_n(&p->state, __ATOMIC_ACQUIRE) != P_DEAD) {
		if (end && tsc_passed(end))
			return -1;
		pause();
	}
	/* The AP clears its job slot after the state changes: wait for that too. */
	if (p->core >= 0)
		while (__atomic_load_n(&cpus[p->core].job, __ATOMIC_ACQUIRE) == p)
			pause();
	return p->exit_status;
}

void proc_list(void)
{
	static const char *const names[] = { "free", "ready", "running", "dead" };
	kprintf("PID  STATE    CORE CORES NAME\n");
	for (int i = 0; i < PROC_MAX; i++) {
		struct proc *p = &procs[i];
		if (p->state != P_FREE)
			kprintf("%-4d %-8s %4d %5lx %s\n", p->pid, names[p->state], p->core, p->cores,
				p->name);
	}
	kprintf("user frames free: %ld; system calls: %lu by SYSCALL/SYSRET, %lu by the #PF route\n",
		frames_available(), sysret_syscalls, pvm_syscalls);
}

void proc_report(struct proc *p, int status)
{
	/* One line in one call: other cores may be printing too. */
	if (p->kill_vector >= 0)
		kprintf("pid %d (%s): exit status %d (killed: %s)\n", p->pid, p->name, status,
			exc_name(p->kill_vector));
	else
		kprintf("pid %d (%s): exit status %d\n", p->pid, p->name, status);
}
