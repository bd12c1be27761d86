/*
 * `selftest user-probe`: what works between ring 0 and ring 3 on this
 * host.  Each step is announced before it runs, so that a VMM that stops
 * leaves the last step that was tried in the log.  Runs on static page
 * tables of its own (user code at USER_BASE), not on the process code.
 */
#include "selftest.h"
#include "apic.h"
#include "cpu.h"
#include "lib.h"
#include "mm.h"
#include "proc.h"
#include "timer.h"
#include "trap.h"
#include "x86.h"

extern char probe_user_start[], probe_user_end[], probe_user_pf[], probe_user_int[],
	probe_user_spin[], probe_user_out[], probe_user_gp[], probe_syscall_entry[];
extern uint64_t boot_pml4[];
void probe_iret(uint64_t rip, uint64_t rsp, uint64_t rflags) NORETURN;
void probe_sysret(uint64_t rip, uint64_t rsp, uint64_t rflags) NORETURN;
void probe_swapgs(void);

static uint64_t pml4[512] __attribute__((aligned(PAGE_SIZE)));
static uint64_t pdpt[512] __attribute__((aligned(PAGE_SIZE)));
static uint64_t pd[512] __attribute__((aligned(PAGE_SIZE)));
static uint64_t pt[512] __attribute__((aligned(PAGE_SIZE)));
static uint8_t ucode[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));
static uint8_t ustack[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));
static uint8_t kstack[8192] __attribute__((aligned(16)));
uint64_t probe_kstack_top, probe_user_rsp;

static struct kctx ctx;
static volatile int nsys, ntimer;
static volatile uint64_t last_rcx, last_r11, last_rflags, last_rsp;
static volatile uint64_t last_vec, last_err, last_cs, last_rip, last_cr2;

void probe_syscall(uint64_t nr)
{
	nsys++;
	if (nr == 2)
		ctx_restore(&ctx, 1);
}

static void hook(struct trapframe *tf)
{
	last_vec = tf->vector;
	last_err = tf->err;
	last_cs = tf->cs;
	last_rip = tf->rip;
	last_cr2 = read_cr2();
	last_rcx = tf->rcx;
	last_r11 = tf->r11;
	last_rflags = tf->rflags;
	last_rsp = tf->rsp;
	if (tf->vector == VEC_TIMER) {
		if (!(tf->cs & 3))
			return;
		if (++ntimer < 3)
			return;                 /* IRETQ back to ring 3 twice */
		lapic_timer_stop();
		lapic_eoi();
	}
	ctx_restore(&ctx, 2);
}

#define UVA(sym) (USER_BASE + (uint64_t)((sym) - probe_user_start))

static const char *step(const char *name, char *label, bool sysret, uint64_t rflags)
{
	kprintf("  probe: %s\n", name);
	last_vec = ~0ULL;
	uint64_t f = irq_save();
	if (ctx_save(&ctx) == 0) {
		if (sysret)
			probe_sysret(UVA(label), USER_BASE + 2 * PAGE_SIZE, rflags);
		probe_iret(UVA(label), USER_BASE + 2 * PAGE_SIZE, rflags);
	}
	irq_restore(f);
	return NULL;
}

static const char *test_user_probe(void)
{
	memcpy(ucode, probe_user_start, probe_user_end - probe_user_start);
	pt[0] = KVA_TO_PA(ucode) | PTE_P | PTE_U;
	pt[1] = KVA_TO_PA(ustack) | PTE_P | PTE_W | PTE_U;
	pd[0] = KVA_TO_PA(pt) | PTE_P | PTE_W | PTE_U;
	pdpt[0] = KVA_TO_PA(pd) | PTE_P | PTE_W | PTE_U;
	pml4[0] = boot_pml4[0];
	pml4[1] = KVA_TO_PA(pdpt) | PTE_P | PTE_W | PTE_U;
	pml4[511] = boot_pml4[511];
	probe_kstack_top = (uint64_t)(uintptr_t)(kstack + sizeof(kstack));
	uint64_t old_rsp0 = tss_set_rsp0(probe_kstack_top);

	kprintf("  probe: swapgs x2 in ring 0\n");
	probe_swapgs();
	kprintf("  probe: swapgs ok (gs:0 -> core %d)\n", this_cpu()->id);

	uint64_t old_lstar = rdmsr(MSR_LSTAR);
	wrmsr(MSR_LSTAR, (uint64_t)(uintptr_t)probe_syscall_entry);
	uint64_t old_cr3 = read_cr3();
	write_cr3(KVA_TO_PA(pml4));
	const int hooked[] = { 6, 13, 14 };
	for (size_t i = 0; i < ARRAY_SIZE(hooked); i++)
		trap_register_soft(hooked[i], hook);
	irq_register(VEC_TIMER, hook);

	nsys = 0;
	step("iretq to ring 3, syscall, sysretq, syscall", probe_user_start, false, 0x2);
	kprintf("  probe: %d syscalls seen (want 2), vector %ld err 0x%lx cs 0x%lx rip 0x%lx cr2 0x%lx, EFER 0x%lx\n", nsys, last_vec, last_err, last_cs, last_rip, last_cr2, rdmsr(MSR_EFER));
	kprintf("  probe: frame rcx 0x%lx r11 0x%lx rflags 0x%lx rsp 0x%lx\n", last_rcx, last_r11, last_rflags, last_rsp);
	nsys = 0;
	step("sysretq to ring 3, syscall, sysretq, syscall", probe_user_start, true, 0x2);
	kprintf("  probe: %d syscalls seen (want 2), vector %ld err 0x%lx cs 0x%lx rip 0x%lx cr2 0x%lx, EFER 0x%lx\n", nsys, last_vec, last_err, last_cs, last_rip, last_cr2, rdmsr(MSR_EFER));
	kprintf("  probe: frame rcx 0x%lx r11 0x%lx rflags 0x%lx rsp 0x%lx\n", last_rcx, last_r11, last_rflags, last_rsp);
	step("#PF in ring 3", probe_user_pf, false, 0x2);
	kprintf("  probe: vector %ld err 0x%lx cs 0x%lx rip 0x%lx cr2 0x%lx\n", last_vec, last_err, last_cs, last_rip, last_cr2);
	step("int $0x80 in ring 3", probe_user_int, false, 0x2);
	kprintf("  probe: vector %ld err 0x%lx cs 0x%lx rip 0x%lx\n", last_vec, last_err, last_cs, last_rip);
	step("outb in ring 3, IOPL 0", probe_user_out, false, 0x2);
	kprintf("  probe: vector %ld err 0x%lx cs 0x%lx rip 0x%lx\n", last_vec, last_err, last_cs, last_rip);
	step("cli in ring 3", probe_user_gp, false, 0x2);
	kprintf("  probe: vector %ld err 0x%lx cs 0x%lx rip 0x%lx\n", last_vec, last_err, last_cs, last_rip);
	ntimer = 0;
	lapic_timer_periodic(VEC_TIMER, lapic_timer_hz / 1000);
	step("timer interrupts in ring 3 (IF=1), iretq back twice", probe_user_spin, false, 0x202);
	kprintf("  probe: %d timer interrupts from ring 3, vector %ld cs 0x%lx\n", ntimer, last_vec, last_cs);
	lapic_timer_stop();
	step("outb in ring 3 with IOPL 3", probe_user_out, false, 0x3002);
	kprintf("  probe: vector %ld (6: passed to the ud2 after it) rip 0x%lx\n", last_vec, last_rip);
	struct cpu *c = this_cpu();
	uint8_t *iomap = (uint8_t *)c->tss + 104;
	iomap[0x80 / 8] &= ~1;
	step("outb in ring 3 with port 0x80 allowed in the TSS I/O bitmap", probe_user_out, false, 0x2);
	kprintf("  probe: vector %ld (6: passed to the ud2 after it) rip 0x%lx\n", last_vec, last_rip);
	iomap[0x80 / 8] |= 1;

	for (size_t i = 0; i < ARRAY_SIZE(hooked); i++)
		trap_register_soft(hooked[i], NULL);
	irq_register(VEC_TIMER, NULL);
	write_cr3(old_cr3);
	wrmsr(MSR_LSTAR, old_lstar);
	tss_set_rsp0(old_rsp0);
	return NULL;
}

const struct selftest probe_tests[] = {
	{ "user-probe", test_user_probe, false },
};
const size_t probe_ntests = ARRAY_SIZE(probe_tests);
