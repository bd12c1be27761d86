/* smp [N]: wait (natively, in ring 3) until N processes run at once. */
#include "ulib.h"

int main(int argc, char **argv)
{
	int want = argc > 1 ? (int)atol(argv[1]) : 2;
	uint64_t khz = tsc_khz();
	uint64_t end = rdtsc() + 5000 * khz;      /* 5 s */
	int seen;
	while ((seen = nrunning()) < want && rdtsc() < end)
		for (int i = 0; i < 100000; i++)
			cpu_pause();
	/* Stay a little so that the other one sees us too. */
	uint64_t linger = rdtsc() + 200 * khz;
	while (rdtsc() < linger)
		cpu_pause();
	uint64_t *m = mmap(PAGE_SIZE);
	m[0] = getpid();
	printf("smp: pid %d on core %d saw %d running\n", getpid(), getcore(), seen);
	return seen >= want && m[0] == (uint64_t)getpid() ? 0 : 1;
}
