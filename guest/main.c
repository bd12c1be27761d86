/*
 * Boot sequence on the BSP.  Everything here runs (possibly emulated) in
 * ring 0, so it stays short: no memory zeroing, no long calibrations.
 */
#include "acpi.h"
#include "apic.h"
#include "boot.h"
#include "console.h"
#include "cpu.h"
#include "ioapic.h"
#include "lib.h"
#include "monitor.h"
#include "multiboot.h"
#include "pic.h"
#include "proc.h"
#include "smp.h"
#include "timer.h"
#include "trap.h"
#include "x86.h"

static void serial_irq(struct trapframe *tf)
{
	console_intr();
}

extern char boot_stack_top[];
uint64_t boot_tsc_start, boot_tsc_prompt;

struct boot_stage boot_stages[12];
int boot_nstages;

static void stage(const char *name)
{
	if (boot_nstages < (int)ARRAY_SIZE(boot_stages))
		boot_stages[boot_nstages++] = (struct boot_stage){ name, rdtsc() };
}

void kmain(uint32_t magic, uint32_t mbi_pa)
{
	boot_tsc_start = rdtsc();
	multiboot_save(magic, mbi_pa);  /* before anything reuses low memory */
	console_init();
	kprintf("\nakvm guest kernel: Akaros-style x86_64 test kernel\n");
	if (!bootinfo.valid)
		kprintf("boot: no multiboot info (EAX=0x%x)\n", magic);
	else if (bootinfo.cmdline[0])
		kprintf("cmdline: %s\n", bootinfo.cmdline);
	stage("banner");

	cpus[0].stack_top = (uint64_t)(uintptr_t)boot_stack_top;
	cpu_setup_percpu(&cpus[0]);
	trap_init();
	cpu_identify();
	user_cpu_init();
	pic_disable();
	stage("idt+pic");
	acpi_init();
	stage("acpi");
	lapic_init_bsp();
	timer_calibrate();
	stage("calibrate");

	int nio = ioapic_init();
	int gsi = -1;
	if (nio) {
		irq_register(VEC_IRQ_BASE + COM1_IRQ, serial_irq);
		gsi = ioapic_route_isa(COM1_IRQ, VEC_IRQ_BASE + COM1_IRQ, lapic_id());
	}
	console_enable_irq(gsi >= 0);
	stage("ioapic");

	smp_boot();
	stage("smp");
	kprintf("%s id %u, TSC %lu kHz (%s), %d cores online, serial input %s\n",
		x2apic_mode ? "x2APIC" : "xAPIC", lapic_id(), tsc_khz, tsc_source, ncpus,
		gsi >= 0 ? "by interrupt" : "polled (no IOAPIC)");
	stage("summary");
	boot_tsc_prompt = rdtsc();
	sti();
	monitor_run();
}
