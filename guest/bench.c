/*
 * Micro-benchmarks of exit-causing operations, timed with the TSC:
 *   BENCH name iterations=N cycles_per_op=X ns_per_op=Y
 */
#include "monitor.h"
#include "selftest.h"
#include "apic.h"
#include "cpu.h"
#include "edu.h"
#include "iommu.h"
#include "lib.h"
#include "proc.h"
#include "smp.h"
#include "timer.h"
#include "x86.h"

/* Nothing decodes this address: inside the 0xFE000000-0xFEFFFFFF
 * platform range but between the LAPIC (0xFEE00000) and the BIOS. */
#define BENCH_MMIO_PA 0xFEF00000u
#define BENCH_PIO_PORT 0x80     /* POST diagnostic port, harmless to write */

void bench_report(const char *name, uint64_t n, uint64_t cycles)
{
	kprintf("BENCH %s iterations=%lu cycles_per_op=%lu ns_per_op=%lu\n", name, n,
		cycles / n, tsc_to_ns(cycles) / n);
}

static bool bench_pio(void)
{
	const uint64_t n = 10000;
	uint64_t f = irq_save();
	uint64_t t0 = rdtsc();
	for (uint64_t i = 0; i < n; i++)
		outb(BENCH_PIO_PORT, 0);
	uint64_t t1 = rdtsc();
	irq_restore(f);
	bench_report("pio", n, t1 - t0);
	return true;
}

static bool bench_mmio(void)
{
	const uint64_t n = 10000;
	uint64_t f = irq_save();
	uint64_t t0 = rdtsc();
	for (uint64_t i = 0; i < n; i++)
		mmio_write32(BENCH_MMIO_PA, (uint32_t)i);
	uint64_t t1 = rdtsc();
	irq_restore(f);
	bench_report("mmio", n, t1 - t0);
	return true;
}

static bool bench_cpuid(void)
{
	const uint64_t n = 10000;
	uint32_t r[4];
	uint64_t f = irq_save();
	uint64_t t0 = rdtsc();
	for (uint64_t i = 0; i < n; i++)
		cpuid(0, 0, r);
	uint64_t t1 = rdtsc();
	irq_restore(f);
	bench_report("cpuid", n, t1 - t0);
	return true;
}

/* IPI round trip to core 1: send, wait for its handler to count it. */
static bool bench_ipi(void)
{
	const uint64_t n = 1000;
	if (ncpus < 2 || !cpus[1].online) {
		kprintf("BENCH ipi skipped: needs 2 cores\n");
		return true;
	}
	uint64_t t0 = rdtsc();
	for (uint64_t i = 0; i < n; i++)
		if (!smp_ping(1, 100000)) {
			kprintf("BENCH ipi: core 1 did not answer\n");
			return false;
		}
	uint64_t t1 = rdtsc();
	bench_report("ipi", n, t1 - t0);
	return true;
}

/*
 * Ring-0 instruction throughput: a two-instruction register loop and a
 * loop with a memory load.  On kvm_pvm hosts ring 0 is emulated and
 * this shows what each instruction costs.
 */
static bool bench_insn(void)
{
	const uint64_t n = 100000;
	uint64_t c1 = n, c2 = n, dummy;
	uint64_t f = irq_save();
	uint64_t t0 = rdtsc();
	asm volatile("1: dec %0; jnz 1b" : "+r"(c1) :: "cc");
	uint64_t t1 = rdtsc();
	asm volatile("1: mov (%%rsp), %1; dec %0; jnz 1b" : "+r"(c2), "=&r"(dummy) :: "cc");
	uint64_t t2 = rdtsc();
	irq_restore(f);
	bench_report("insn-loop", 2 * n, t1 - t0);
	bench_report("insn-load-loop", 3 * n, t2 - t1);
	return true;
}

/* Ring-3 benchmarks: the programs time themselves and print BENCH lines. */
static bool bench_prog(int argc, char **argv)
{
	const char *err;
	struct proc *p = proc_create(argv[0], argc, argv, &err);
	if (!p) {
		kprintf("BENCH %s skipped: %s\n", argv[0], err);
		return false;
	}
	int st = proc_run(p);
	if (st)
		proc_report(p, st);
	proc_free(p);
	return st == 0;
}

static bool bench_user(char *what)
{
	char *argv[] = { "ubench", what };
	return bench_prog(2, argv);
}

static bool bench_user_pio(void) { return bench_user("pio"); }
static bool bench_user_syscall(void) { return bench_user("syscall"); }
static bool bench_user_loop(void) { return bench_user("loop"); }

/* munmap by a process on 1, 2, ... cores (mcp bench): IPIs to its other
 * cores and, when the edu is there behind VT-d, the IOTLB invalidation of
 * the domain the process owns it through. */
static bool bench_user_shootdown(void)
{
	bool edu_ok = !edu_probe() && !iommu_probe() &&
		      iommu_covers(edu.pci->bus, edu.pci->dev, edu.pci->fn);
	bool ok = true;
	for (int n = 1; n <= ncpus && n <= 8; n++) {
		char num[4] = { (char)('0' + n), 0 };
		char *argv[] = { "mcp", "bench", num, "50", edu_ok ? "edu" : NULL };
		ok &= bench_prog(edu_ok ? 5 : 4, argv);
	}
	return ok;
}

/* edu DMA from ring 3 with and without translation (edudma bench). */
static bool bench_user_edu(void)
{
	char *argv[] = { "edudma", "bench" };
	return bench_prog(2, argv);
}

/* `PROG MODE` with the VT-d unit on; without one, the bench is skipped. */
static bool bench_vtd_prog(const char *name, char *prog, char *mode)
{
	const char *err = iommu_probe();
	if (!err)
		err = iommu_enable();
	if (err) {
		kprintf("BENCH %s skipped: %s\n", name, err);
		return true;
	}
	char *argv[] = { prog, mode };
	return bench_prog(2, argv);
}

/* IOTLB invalidations timed from ring 3 (invbench: the kernel lends the
 * process the VT-d unit, iommu_lend, benchmark only). */
static bool bench_user_iommu(void)
{
	return bench_vtd_prog("user-iommu", "invbench", "bench");
}

/* Exits completed in the VMM's run loop, alone and while another core rings
 * the invalidation queue (invbench contend): the second must not slow the first. */
static bool bench_user_fastexit(void)
{
	return bench_vtd_prog("user-fastexit", "invbench", "contend");
}

/* I/OAT copies from ring 3, through the process's domain and not (ioatdma bench). */
static bool bench_user_ioat(void)
{
	return bench_vtd_prog("user-ioat", "ioatdma", "bench");
}

struct bench {
	const char *name;
	bool (*fn)(void);
};

bool bench_virtio_blk_rand4k(void);     /* virtiobench.c */
bool bench_virtio_blk_seq1m(void);

static const struct bench benches[] = {
	{ "pio", bench_pio },
	{ "mmio", bench_mmio },
	{ "cpuid", bench_cpuid },
	{ "ipi", bench_ipi },
	{ "insn", bench_insn },
	{ "iommu", bench_iommu },
	{ "edu", bench_edu },
	{ "virtio-blk-rand4k", bench_virtio_blk_rand4k },
	{ "virtio-blk-seq1m", bench_virtio_blk_seq1m },
	{ "user-pio", bench_user_pio },
	{ "user-syscall", bench_user_syscall },
	{ "user-loop", bench_user_loop },
	{ "user-shootdown", bench_user_shootdown },
	{ "user-edu", bench_user_edu },
	{ "user-iommu", bench_user_iommu },
	{ "user-fastexit", bench_user_fastexit },
	{ "user-ioat", bench_user_ioat },
};

int bench_main(int argc, char **argv)
{
	int bad = 0;
	if (argc == 0)
		for (size_t i = 0; i < ARRAY_SIZE(benches); i++)
			bad += !benches[i].fn();
	for (int a = 0; a < argc; a++) {
		size_t i;
		for (i = 0; i < ARRAY_SIZE(benches); i++)
			if (!strcmp(argv[a], benches[i].name))
				break;
		if (i == ARRAY_SIZE(benches)) {
			kprintf("Unknown bench '%s'\n", argv[a]);
			bad++;
		} else {
			bad += !benches[i].fn();
		}
	}
	return bad != 0;
}
