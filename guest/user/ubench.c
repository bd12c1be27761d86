/*
 * ubench pio|syscall|loop [N]: timed in ring 3 with rdtsc, printed as
 *   BENCH user-NAME iterations=N cycles_per_op=X ns_per_op=Y
 * pio: outb to port 0x80, opened with ioperm (TSS I/O bitmap);
 * syscall: getpid round trips; loop: dec/jnz, one op = 1000 instructions.
 */
#include "ulib.h"

static void report(const char *name, uint64_t n, uint64_t cycles)
{
	uint64_t khz = tsc_khz();
	printf("BENCH %s iterations=%lu cycles_per_op=%lu ns_per_op=%lu\n", name, n, cycles / n,
	       cycles * 1000000 / khz / n);
}

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "pio";
	uint64_t n = argc > 2 ? (uint64_t)atol(argv[2]) : 0;
	if (!strcmp(what, "pio")) {
		if (!n)
			n = 10000;
		if (ioperm(0x80, 1, 1) != 0) {
			printf("ubench: ioperm refused\n");
			return 1;
		}
		uint64_t t0 = rdtsc();
		for (uint64_t i = 0; i < n; i++)
			outb(0x80, (uint8_t)i);
		report("user-pio", n, rdtsc() - t0);
		return 0;
	}
	if (!strcmp(what, "syscall")) {
		if (!n)
			n = 200;
		uint64_t t0 = rdtsc();
		for (uint64_t i = 0; i < n; i++)
			getpid();
		report("user-syscall", n, rdtsc() - t0);
		return 0;
	}
	if (!strcmp(what, "loop")) {
		if (!n)
			n = 100000000;
		uint64_t c = n, t0 = rdtsc();
		asm volatile("1: dec %0; jnz 1b" : "+r"(c) :: "cc");
		report("user-insn-loop-1k", 2 * n / 1000, rdtsc() - t0);   /* per 1000 instructions */
		return 0;
	}
	printf("ubench: unknown '%s'\n", what);
	return 2;
}
