/* The kernel monitor on COM1: prompt, line editing, commands. */
#include "monitor.h"
#include "acpi.h"
#include "apic.h"
#include "boot.h"
#include "console.h"
#include "cpu.h"
#include "iommu.h"
#include "ioapic.h"
#include "lib.h"
#include "multiboot.h"
#include "pci.h"
#include "power.h"
#include "proc.h"
#include "timer.h"
#include "virtio.h"
#include "x86.h"

#define MAXARGS 16

extern char _kernel_start[], _kernel_end[];


struct command {
	const char *name;
	const char *help;
	int (*fn)(int argc, char **argv);
};

static int cmd_help(int argc, char **argv);

void kerninfo(void)
{
	kprintf("CPU: %s family 0x%x model 0x%x stepping %u\n", cpuinfo.vendor,
		cpuinfo.family, cpuinfo.model, cpuinfo.stepping);
	if (cpuinfo.brand[0])
		kprintf("  brand: %s\n", cpuinfo.brand);
	if (cpuinfo.hypervisor[0])
		kprintf("  hypervisor signature (CPUID 0x40000000): %s\n", cpuinfo.hypervisor);
	kprintf("APIC id %u (%s), core %d of %d\n", lapic_id(), x2apic_mode ? "x2APIC" : "xAPIC",
		this_cpu()->id, ncpus);
	kprintf("TSC frequency: %lu kHz (%s)\n", tsc_khz, tsc_source);
	kprintf("LAPIC timer: %lu kHz (divide by %d)\n", lapic_timer_hz / 1000, LAPIC_TIMER_DIV);
	kprintf("kernel: 0x%lx-0x%lx (%lu KiB)\n", (uint64_t)(uintptr_t)_kernel_start,
		(uint64_t)(uintptr_t)_kernel_end, (uint64_t)(_kernel_end - _kernel_start) / 1024);
	kprintf("serial: input %s, %lu interrupts\n",
		console_irq_mode() ? "by interrupt" : "polled", console_irq_count());
	kprintf("boot: kmain to prompt %lu us (", tsc_to_ns(boot_tsc_prompt - boot_tsc_start) / 1000);
	for (int i = 0; i < boot_nstages; i++)
		kprintf("%s%s %lu", i ? ", " : "", boot_stages[i].name,
			tsc_to_ns(boot_stages[i].tsc - (i ? boot_stages[i - 1].tsc : boot_tsc_start)) / 1000);
	kprintf(")\n");
	if (bootinfo.loader[0])
		kprintf("boot loader: %s\n", bootinfo.loader);
	kprintf("cmdline: %s\n", bootinfo.cmdline);
}

static int cmd_kerninfo(int argc, char **argv)
{
	kerninfo();
	return 0;
}

static int cmd_mem(int argc, char **argv)
{
	if (!bootinfo.valid) {
		kprintf("no multiboot info\n");
		return 1;
	}
	if (bootinfo.flags & MB_INFO_MEM)
		kprintf("mem_lower %u KiB, mem_upper %u KiB\n", bootinfo.mem_lower, bootinfo.mem_upper);
	if (!(bootinfo.flags & MB_INFO_MMAP)) {
		kprintf("no memory map\n");
		return 1;
	}
	uint64_t avail = 0;
	for (int i = 0; i < bootinfo.nmmap; i++) {
		const struct mmap_region *r = &bootinfo.mmap[i];
		kprintf("  0x%016lx-0x%016lx %s\n", r->addr, r->addr + r->len - 1, mmap_type_name(r->type));
		if (r->type == 1)
			avail += r->len;
	}
	if (bootinfo.mmap_truncated)
		kprintf("  (more entries not shown)\n");
	kprintf("%lu KiB available\n", avail / 1024);
	return 0;
}

static int cmd_acpi(int argc, char **argv)
{
	acpi_print();
	ioapic_print();
	return 0;
}

static int cmd_pci(int argc, char **argv)
{
	pci_print();
	return 0;
}

static int cmd_cores(int argc, char **argv)
{
	kprintf("%d cores online\n", ncpus);
	for (int i = 0; i < MAX_CPUS; i++)
		if (cpus[i].online)
			kprintf("  core %d: APIC id %u%s\n", i, cpus[i].apic_id, i == 0 ? " (BSP)" : "");
	return 0;
}

static int cmd_selftest(int argc, char **argv)
{
	return selftest_main(argc - 1, argv + 1);
}

static int cmd_bench(int argc, char **argv)
{
	return bench_main(argc - 1, argv + 1);
}

static int cmd_reboot(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "int"))
		reboot_int(true);
	if (argc > 1 && !strcmp(argv[1], "int0"))
		reboot_int(false);
	if (argc > 1) {
		kprintf("usage: reboot [int|int0]\n");
		return 1;
	}
	power_reboot();
	return 0;
}

static int cmd_iommu(int argc, char **argv)
{
	const char *err = NULL;
	if (argc == 1) {
		iommu_print();
		return 0;
	}
	if (!strcmp(argv[1], "on"))
		err = iommu_enable();
	else if (!strcmp(argv[1], "off"))
		iommu_disable();
	else if (!strcmp(argv[1], "faults"))
		iommu_print_faults();
	else if (!strcmp(argv[1], "qi") && argc == 3 && (!strcmp(argv[2], "on") || !strcmp(argv[2], "off")))
		err = (err = iommu_enable()) ? err : iommu_qi_set(!strcmp(argv[2], "on"));
	else if (!strcmp(argv[1], "noflush") || !strcmp(argv[1], "flush")) {
		iommu_noflush = !strcmp(argv[1], "noflush");
		kprintf("iommu: munmap %s the IOTLB of a process's device\n",
			iommu_noflush ? "does not invalidate" : "invalidates");
	} else
		err = "usage: iommu [on|off|faults|qi on|qi off|noflush|flush]";
	if (err)
		kprintf("iommu: %s\n", err);
	return err != NULL;
}

static int cmd_virtio(int argc, char **argv)
{
	virtio_print();
	return 0;
}

static int parse_int(const char *s, int *v)
{
	int n = 0;
	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		n = n * 10 + (*s - '0');
	}
	*v = n;
	return 0;
}

/* run [-c CORE] PROGRAM [ARGS]: to completion.  spawn: start on another core. */
static int run_or_spawn(int argc, char **argv, bool spawn)
{
	int core = this_cpu()->id, i = 1;
	if (argc > 2 && !strcmp(argv[1], "-c")) {
		if (parse_int(argv[2], &core) || core >= MAX_CPUS || !cpus[core].online) {
			kprintf("%s: no core %s\n", argv[0], argv[2]);
			return 1;
		}
		i = 3;
	} else if (spawn) {
		core = -1;
		for (int c = 0; c < MAX_CPUS && core < 0; c++)
			if (cpus[c].online && c != this_cpu()->id && !cpus[c].job)
				core = c;
	}
	if (i >= argc) {
		kprintf("usage: %s [-c CORE] PROGRAM [ARGS]; programs: ", argv[0]);
		user_programs_list();
		return 1;
	}
	if (spawn && (core < 0 || core == this_cpu()->id)) {
		kprintf("spawn: needs an idle core other than this one\n");
		return 1;
	}
	const char *err;
	struct proc *p = proc_create(argv[i], argc - i, argv + i, &err);
	if (!p) {
		kprintf("%s: %s: %s\n", argv[0], argv[i], err);
		return 1;
	}
	int st;
	if (core == this_cpu()->id) {
		st = proc_run(p);
	} else {
		p->detached = spawn;
		if (!proc_start_on(p, core)) {
			kprintf("%s: core %d is busy\n", argv[0], core);
			proc_free(p);
			return 1;
		}
		if (spawn) {
			kprintf("pid %d (%s) started on core %d\n", p->pid, p->name, core);
			return 0;
		}
		st = proc_wait(p, 0);
	}
	proc_report(p, st);
	proc_free(p);
	return st != 0;
}

static int cmd_run(int argc, char **argv)
{
	return run_or_spawn(argc, argv, false);
}

static int cmd_spawn(int argc, char **argv)
{
	return run_or_spawn(argc, argv, true);
}

static int cmd_ps(int argc, char **argv)
{
	proc_list();
	return 0;
}

static int cmd_poweroff(int argc, char **argv)
{
	power_off();
	return 1;
}

static const struct command commands[] = {
	{ "help", "list commands", cmd_help },
	{ "kerninfo", "CPU, APIC id, TSC frequency", cmd_kerninfo },
	{ "mem", "multiboot memory map", cmd_mem },
	{ "acpi", "ACPI tables and what was parsed from them", cmd_acpi },
	{ "pci", "scan PCI buses", cmd_pci },
	{ "cores", "cores online and their APIC ids", cmd_cores },
	{ "selftest", "[NAME...] run self-tests (no name: all default tests)", cmd_selftest },
	{ "bench", "[NAME...] run micro-benchmarks", cmd_bench },
	{ "iommu", "[on|off|faults|qi on|off|noflush|flush] VT-d: CAP/ECAP decoded, state", cmd_iommu },
	{ "virtio", "virtio devices found (PCI and MMIO)", cmd_virtio },
	{ "run", "[-c CORE] PROGRAM [ARGS] run a user program to completion", cmd_run },
	{ "spawn", "[-c CORE] PROGRAM [ARGS] start a user program on another core", cmd_spawn },
	{ "ps", "processes", cmd_ps },
	{ "reboot", "[int|int0] reset (int: 0xCF9 then int $0 on a zero stack, as Akaros)", cmd_reboot },
	{ "poweroff", "ACPI soft-off (S5)", cmd_poweroff },
};

static int cmd_help(int argc, char **argv)
{
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
		kprintf("%-10s %s\n", commands[i].name, commands[i].help);
	return 0;
}

static void readline(char *buf, int size)
{
	static int last;
	int n = 0;

	for (;;) {
		int c = console_getc();
		int prev = last;
		last = c;
		if (c == '\n' && prev == '\r')
			continue;               /* CR LF is one end of line */
		if (c == '\r' || c == '\n') {
			kprintf("\n");
			buf[n] = 0;
			return;
		}
		if (c == '\b' || c == 0x7F) {
			if (n) {
				n--;
				kprintf("\b \b");
			}
			continue;
		}
		if (c < 0x20 || c > 0x7E || n >= size - 1)
			continue;
		buf[n++] = c;
		console_lock();
		console_putc(c);
		console_unlock();
	}
}

static int split(char *s, char **argv)
{
	int argc = 0;
	for (;;) {
		while (*s == ' ' || *s == '\t')
			*s++ = 0;
		if (!*s || argc == MAXARGS)
			return argc;
		argv[argc++] = s;
		while (*s && *s != ' ' && *s != '\t')
			s++;
	}
}

void monitor_run(void)
{
	char line[128];
	char *argv[MAXARGS + 1];

	for (;;) {
		kprintf("guest(Core %d)> ", this_cpu()->id);
		readline(line, sizeof(line));
		int argc = split(line, argv);
		if (!argc)
			continue;
		argv[argc] = NULL;
		size_t i;
		for (i = 0; i < ARRAY_SIZE(commands); i++)
			if (!strcmp(argv[0], commands[i].name))
				break;
		if (i == ARRAY_SIZE(commands))
			kprintf("Unknown command '%s'\n", argv[0]);
		else
			commands[i].fn(argc, argv);
	}
}
