/* The host's memcpy, the physical limit for a copy engine that copies with
 * it: MB/s of repeated copies of SIZE bytes between two buffers, as the
 * guest's ioatdma bench repeats its copies, for at least 200 ms.
 * Prints "SIZE MBPS". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	for (int a = 1; a < argc; a++) {
		size_t size = strtoul(argv[a], NULL, 0);
		char *src = aligned_alloc(4096, size), *dst = aligned_alloc(4096, size);
		if (!src || !dst)
			return 1;
		memset(src, 0x5A, size);
		memset(dst, 0, size);
		unsigned long n = 0;
		double t0 = now(), t;
		do {
			for (int i = 0; i < 64; i++, n++) {
				memcpy(dst, src, size);
				__asm__ volatile("" ::: "memory");	/* each copy happens */
			}
			t = now() - t0;
		} while (t < 0.2);
		printf("%zu %.0f\n", size, n * size / t / 1e6);
		free(src);
		free(dst);
	}
	return 0;
}
