/*
 * Application processors: INIT-SIPI-SIPI through the local APIC with a
 * real-mode trampoline at TRAMPOLINE_PA.  APs are started one at a time
 * (they share the trampoline's stack slot); we poll for each to check in
 * instead of sleeping fixed delays.  Once up, an AP idles in sti;hlt and
 * only runs IPI handlers.
 */
#include "smp.h"
#include "acpi.h"
#include "apic.h"
#include "cpu.h"
#include "lib.h"
#include "mm.h"
#include "proc.h"
#include "timer.h"
#include "trap.h"
#include "x86.h"

#define AP_STACK_SIZE 8192

extern char tramp_start[], tramp_end[], tramp_cr3[], tramp_stack[], tramp_cpu[];
extern uint64_t boot_pml4[];

static uint8_t ap_stacks[MAX_CPUS][AP_STACK_SIZE] __attribute__((aligned(16)));

static void tramp_set(const char *field, uint64_t v)
{
	*(volatile uint64_t *)PHYS_TO_VIRT(TRAMPOLINE_PA + (field - tramp_start)) = v;
}

static bool wait_online(struct cpu *c, uint64_t us)
{
	uint64_t end = tsc_deadline_us(us);
	while (!__atomic_load_n(&c->online, __ATOMIC_ACQUIRE)) {
		if (tsc_passed(end))
			return false;
		pause();
	}
	return true;
}

static bool start_ap(struct cpu *c)
{
	uint32_t sipi = ICR_STARTUP | (TRAMPOLINE_PA >> 12);

	tramp_set(tramp_stack, c->stack_top);
	tramp_set(tramp_cpu, (uint64_t)(uintptr_t)c);
	lapic_send_ipi(c->apic_id, ICR_INIT | ICR_LEVEL_ASSERT);
	udelay(200);
	lapic_send_ipi(c->apic_id, sipi);
	if (wait_online(c, 10000))
		return true;
	lapic_send_ipi(c->apic_id, sipi);       /* the spec's second SIPI */
	return wait_online(c, 200000);
}

static void ipi_test_handler(struct trapframe *tf)
{
	this_cpu()->ipi_count++;
}

/*
 * TLB shootdown: one request at a time (shoot_lock), IPIs to the cores
 * asked for, each invalidates the range in its handler and acknowledges;
 * the sender waits for every acknowledgement.  Processes that span several
 * cores (user.c) shoot only the other cores running them.
 */
#define SHOOT_MAX_PAGES 32      /* more than this: the whole (non-global) TLB */

static volatile uintptr_t shoot_va;
static volatile uint64_t shoot_pages;
static volatile bool shoot_probe;
static volatile int shoot_acks;
static spinlock_t shoot_lock;

static void flush_range(uintptr_t va, uint64_t pages)
{
	if (pages > SHOOT_MAX_PAGES) {
		write_cr3(read_cr3());
		return;
	}
	for (uint64_t i = 0; i < pages; i++)
		invlpg(va + i * PAGE_SIZE);
}

static void shootdown_handler(struct trapframe *tf)
{
	struct cpu *c = this_cpu();
	flush_range(shoot_va, shoot_pages);
	if (shoot_probe)
		c->probe_val = *(volatile uint64_t *)shoot_va;
	c->shoot_count++;
	__atomic_add_fetch(&shoot_acks, 1, __ATOMIC_RELEASE);
}

/* The cores in mask (not this one) invalidate [va, va + pages); returns how
 * many acknowledged within the timeout. */
static int shoot(uint64_t mask, uintptr_t va, uint64_t pages, bool probe)
{
	struct cpu *self = this_cpu();
	int sent = 0;

	/* Interrupts on between attempts: a core waiting for the lock must
	 * still answer the IPIs of the one that holds it. */
	while (!spin_trylock(&shoot_lock)) {
		uint64_t f = read_rflags();
		sti();
		pause();
		if (!(f & 0x200))
			cli();
	}
	shoot_va = va;
	shoot_pages = pages;
	shoot_probe = probe;
	__atomic_store_n(&shoot_acks, 0, __ATOMIC_RELEASE);
	for (int i = 0; i < MAX_CPUS; i++) {
		if (!(mask & (1ULL << i)) || &cpus[i] == self || !cpus[i].online)
			continue;
		lapic_send_ipi(cpus[i].apic_id, VEC_SHOOTDOWN);
		sent++;
	}
	uint64_t end = sent ? tsc_deadline_us(1000000) : 0;
	while (__atomic_load_n(&shoot_acks, __ATOMIC_ACQUIRE) < sent && !tsc_passed(end))
		pause();
	int acks = __atomic_load_n(&shoot_acks, __ATOMIC_ACQUIRE);
	spin_unlock(&shoot_lock);
	return acks;
}

int tlb_shootdown(uintptr_t va, bool probe)
{
	struct cpu *self = this_cpu();
	invlpg(va);
	if (probe)
		self->probe_val = *(volatile uint64_t *)va;
	return shoot(~0ULL, va, 1, probe) + 1;
}

int tlb_shootdown_cores(uint64_t mask, uintptr_t va, uint64_t pages)
{
	return shoot(mask & ~(1ULL << this_cpu()->id), va, pages, false);
}

bool smp_ping(int i, uint64_t timeout_us)
{
	struct cpu *c = &cpus[i];
	uint64_t before = c->ipi_count;
	lapic_send_ipi(c->apic_id, VEC_IPI_TEST);
	uint64_t end = tsc_deadline_us(timeout_us);
	while (c->ipi_count == before) {
		if (tsc_passed(end))
			return false;
		pause();
	}
	return true;
}

void smp_boot(void)
{
	uint32_t bsp_id = lapic_id();

	cpus[0].apic_id = bsp_id;
	cpus[0].online = 1;
	ncpus = 1;
	irq_register(VEC_IPI_TEST, ipi_test_handler);
	irq_register(VEC_SHOOTDOWN, shootdown_handler);
	if (!acpi.have_madt || acpi.nlapic <= 1)
		return;

	memcpy(PHYS_TO_VIRT(TRAMPOLINE_PA), tramp_start, tramp_end - tramp_start);
	tramp_set(tramp_cr3, KVA_TO_PA(boot_pml4));

	int n = 1;
	for (int i = 0; i < acpi.nlapic && n < MAX_CPUS; i++) {
		uint32_t id = acpi.lapics[i].apic_id;
		if (id == bsp_id)
			continue;
		if (!x2apic_mode && id > 0xFE) {
			kprintf("SMP: APIC id %u needs x2APIC, skipped\n", id);
			continue;
		}
		struct cpu *c = &cpus[n];
		c->id = n;
		c->apic_id = id;
		c->stack_top = (uint64_t)(uintptr_t)(ap_stacks[n] + AP_STACK_SIZE);
		if (start_ap(c)) {
			n++;
			ncpus++;
		} else {
			kprintf("SMP: core with APIC id %u did not start\n", id);
		}
	}
}

void ap_main(void *arg)
{
	struct cpu *c = arg;

	gdt_load();
	idt_load();
	cpu_setup_percpu(c);
	user_cpu_init();
	lapic_init_ap();
	if (lapic_id() != c->apic_id)
		kprintf("SMP: core %d has APIC id %u, MADT said %u\n", c->id, lapic_id(), c->apic_id);
	__atomic_store_n(&c->online, 1, __ATOMIC_RELEASE);
	proc_ap_idle();                 /* sti; hlt until a process is sent here */
}
