/*
 * mcp MODE [N] [ITERATIONS]: a process that spans several cores (Akaros's
 * "many-core process"): core_request() starts more cores in ring 3 in this
 * address space, each at a function of ours on its own stack.  Modes:
 *   hello N      N - 1 more cores each say where they run and core_yield();
 *                ncores() goes back to 1 (exit 0)
 *   exit N       N - 1 more cores spin in ring 3; the first core exits:
 *                the kernel must stop them (exit 0)
 *   fault        a second core touches an unmapped page: the whole process
 *                is killed (#PF), the first core with it
 *   shootdown    a second core reads a page in a loop; the first munmaps
 *                it: the reader's TLB must be shot down, so its next read
 *                faults (#PF at that page on the reader's core).  If the
 *                reader still sees the page 2 s later: exit 4
 *   bench N [ITERATIONS] [edu]   the cost of munmap while the process runs
 *                on N cores (N - 1 spin in ring 3): IPIs to the others and,
 *                with "edu" (the edu assigned), the IOTLB invalidation:
 *                BENCH user-shootdown-N iterations=I cycles_per_op=X ns_per_op=Y
 * Exit codes below 100 name the check that failed.
 */
#include "ulib.h"

#define STACK           (4 * PAGE_SIZE)
#define MAGIC           0x5EAD0F7A6E5EAD00ULL
#define MAX_CORES       64

/* Shared by the cores: one mmapped page (they share the address space). */
struct ctl {
	volatile uint64_t *page;                /* shootdown: what the reader reads */
	volatile uint64_t reads, bad;
	volatile int running;                   /* extra cores that reached ring 3 */
	volatile int stop;
	volatile int core_of[MAX_CORES];        /* vcore k -> core id */
	volatile int yielded;
};

static uint64_t ms_to_tsc(uint64_t ms)
{
	uint64_t khz = tsc_khz();
	return ms * (khz ? khz : 1000000);
}

/* Wait until *v >= want, up to ms milliseconds, in ring 3. */
static bool wait_for(volatile int *v, int want, uint64_t ms)
{
	uint64_t end = rdtsc() + ms_to_tsc(ms);
	while (*v < want)
		if (rdtsc() > end)
			return false;
	return true;
}

/* Start fn on another core with a fresh stack; its core id, or -1. */
static int start_core(void (*fn)(void *, int), struct ctl *ctl)
{
	uint8_t *stack = mmap(STACK);
	if (stack == MAP_FAILED)
		return -1;
	return core_request(fn, stack + STACK, ctl);
}

static void hello_core(void *arg, int core)
{
	struct ctl *ctl = arg;
	int k = __atomic_add_fetch(&ctl->running, 1, __ATOMIC_SEQ_CST);
	printf("mcp: pid %d: core %d in ring 3 (extra core %d), %d cores in the process\n",
	       getpid(), getcore(), k, ncores());
	ctl->core_of[k] = core;
	__atomic_add_fetch(&ctl->yielded, 1, __ATOMIC_SEQ_CST);
	core_yield();
}

static void spin_core(void *arg, int core)
{
	struct ctl *ctl = arg;
	__atomic_add_fetch(&ctl->running, 1, __ATOMIC_SEQ_CST);
	while (!ctl->stop)
		cpu_pause();
	core_yield();
}

static void fault_core(void *arg, int core)
{
	struct ctl *ctl = arg;
	__atomic_add_fetch(&ctl->running, 1, __ATOMIC_SEQ_CST);
	*(volatile int *)0x0000009000000000ULL = 1;     /* unmapped */
	for (;;)
		;
}

static void reader_core(void *arg, int core)
{
	struct ctl *ctl = arg;
	__atomic_add_fetch(&ctl->running, 1, __ATOMIC_SEQ_CST);
	for (;;) {
		uint64_t v = *ctl->page;
		if (v != MAGIC)
			ctl->bad = v;
		ctl->reads++;
	}
}

static int bench(int n, uint64_t iters, bool edu, struct ctl *ctl)
{
	for (int i = 1; i < n; i++)
		if (start_core(spin_core, ctl) < 0) {
			printf("BENCH user-shootdown-%d skipped: only %d cores\n", n, i);
			return 0;
		}
	if (!wait_for(&ctl->running, n - 1, 5000))
		return 20;
	if (edu && assign(ASSIGN_EDU) == MAP_FAILED) {
		printf("BENCH user-shootdown-%d skipped: cannot assign the edu\n", n);
		return 0;
	}
	uint64_t total = 0;
	for (uint64_t i = 0; i < iters; i++) {
		volatile uint64_t *p = mmap(PAGE_SIZE);
		if (p == MAP_FAILED)
			return 21;
		p[0] = i;               /* in this core's TLB (and the domain) */
		uint64_t t0 = rdtsc();
		if (munmap((void *)p, PAGE_SIZE) != 0)
			return 22;
		total += rdtsc() - t0;
	}
	uint64_t khz = tsc_khz();
	printf("BENCH user-shootdown-%d iterations=%lu cycles_per_op=%lu ns_per_op=%lu iotlb=%d\n", n,
	       iters, total / iters, total * 1000000 / (khz ? khz : 1000000) / iters, edu ? 1 : 0);
	ctl->stop = 1;
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "hello";
	int n = argc > 2 ? (int)atol(argv[2]) : 2;
	struct ctl *ctl = mmap(PAGE_SIZE);
	if (ctl == MAP_FAILED || n < 1 || n > MAX_CORES)
		return 1;
	if (!strcmp(mode, "hello")) {
		for (int i = 1; i < n; i++)
			if (start_core(hello_core, ctl) < 0)
				return 2;
		if (!wait_for(&ctl->yielded, n - 1, 5000))
			return 3;
		uint64_t end = rdtsc() + ms_to_tsc(1000);
		while (ncores() != 1)           /* the yields take effect */
			if (rdtsc() > end)
				return 4;
		printf("mcp: pid %d: %d cores ran, back to 1\n", getpid(), n);
		return 0;
	}
	if (!strcmp(mode, "exit")) {
		for (int i = 1; i < n; i++)
			if (start_core(spin_core, ctl) < 0)
				return 2;
		if (!wait_for(&ctl->running, n - 1, 5000))
			return 3;
		if (ncores() != n)
			return 4;
		printf("mcp: pid %d: %d cores running, exiting from core %d\n", getpid(), n, getcore());
		return 0;
	}
	if (!strcmp(mode, "fault")) {
		if (start_core(fault_core, ctl) < 0)
			return 2;
		for (;;)
			cpu_pause();            /* until the kernel stops this core */
	}
	if (!strcmp(mode, "shootdown")) {
		volatile uint64_t *page = mmap(PAGE_SIZE);
		if (page == MAP_FAILED)
			return 1;
		page[0] = MAGIC;
		ctl->page = page;
		int core = start_core(reader_core, ctl);
		if (core < 0)
			return 2;
		/* The reader has the page in its TLB once it has read it a lot. */
		uint64_t end = rdtsc() + ms_to_tsc(5000);
		while (ctl->reads < 100000)
			if (rdtsc() > end)
				return 3;
		printf("mcp: pid %d: core %d reads 0x%lx in a loop; core %d unmaps it\n", getpid(), core,
		       (uint64_t)page, getcore());
		if (munmap((void *)page, PAGE_SIZE) != 0)
			return 5;
		/* The reader must fault now; the kernel then stops this core too. */
		end = rdtsc() + ms_to_tsc(2000);
		while (rdtsc() < end)
			cpu_pause();
		printf("mcp: core %d still read the page 2 s after munmap (%lu reads, bad 0x%lx)\n", core,
		       ctl->reads, ctl->bad);
		return 4;
	}
	if (!strcmp(mode, "bench")) {
		uint64_t iters = argc > 3 ? (uint64_t)atol(argv[3]) : 100;
		bool edu = argc > 4 && !strcmp(argv[4], "edu");
		return bench(n, iters ? iters : 100, edu, ctl);
	}
	printf("mcp: unknown mode '%s'\n", mode);
	return 99;
}
