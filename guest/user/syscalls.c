/*
 * syscalls: getpid, mmap (write and read back), a second mmap, munmap,
 * yield; then it touches the unmapped page, which must kill it with a
 * page fault (the self-test checks that).  Exit codes 1-9 name the check
 * that failed.
 */
#include "ulib.h"

int main(int argc, char **argv)
{
	int pid = getpid();
	if (pid <= 0)
		return 1;
	if (getpid() != pid)
		return 2;
	const size_t len = 3 * PAGE_SIZE;
	uint64_t *a = mmap(len);
	if (a == MAP_FAILED || !a)
		return 3;
	for (size_t i = 0; i < len / 8; i++)
		if (a[i] != 0)
			return 4;               /* fresh memory is zeroed */
	for (size_t i = 0; i < len / 8; i++)
		a[i] = 0x1234567800000000ULL + i * 0x1001 + pid;
	uint64_t *b = mmap(PAGE_SIZE);
	if (b == MAP_FAILED || (b >= a && b < a + len / 8))
		return 5;
	b[0] = 42;
	for (size_t i = 0; i < len / 8; i++)
		if (a[i] != 0x1234567800000000ULL + i * 0x1001 + pid)
			return 6;
	for (int i = 0; i < 3; i++)
		yield();
	if (munmap(b, PAGE_SIZE) != 0)
		return 7;
	if (munmap((void *)0x1000, PAGE_SIZE) == 0)
		return 8;                   /* not user memory: must be refused */
	if (munmap(a, len) != 0)
		return 9;
	printf("syscalls: pid %d, mmap/munmap/yield ok; touching %p after munmap\n", pid, (void *)a);
	volatile uint64_t *p = a + 8;
	return (int)*p + 100;           /* must not get here */
}
