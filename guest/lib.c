/* The few libc-like functions the kernel needs (gcc may call mem*). */
#include "lib.h"
#include "x86.h"

void *memcpy(void *d, const void *s, size_t n)
{
	void *ret = d;
	asm volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) :: "memory");
	return ret;
}

void *memset(void *d, int c, size_t n)
{
	void *ret = d;
	asm volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return ret;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const uint8_t *x = a, *y = b;
	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] - y[i];
	return 0;
}

/* String scans are one REPNE SCASB each: where ring 0 is emulated
 * instruction by instruction that is far cheaper than a byte loop. */
void *memchr(const void *s, int c, size_t n)
{
	const unsigned char *p = s;

	if (!n)
		return NULL;
	asm volatile("repne scasb" : "+D"(p), "+c"(n) : "a"(c) : "cc", "memory");
	return p[-1] == (unsigned char)c ? (void *)(p - 1) : NULL;  /* p: one past the last compared */
}

size_t strlen(const char *s)
{
	const char *p = s;
	size_t n = (size_t)-1;

	asm volatile("repne scasb" : "+D"(p), "+c"(n) : "a"(0) : "cc", "memory");
	return (size_t)(p - 1 - s);
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (uint8_t)*a - (uint8_t)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (uint8_t)*a - (uint8_t)*b;
		if (!*a)
			return 0;
	}
	return 0;
}

size_t strlcpy(char *d, const char *s, size_t n)
{
	size_t len = strlen(s);
	if (n) {
		size_t c = len < n - 1 ? len : n - 1;
		memcpy(d, s, c);
		d[c] = 0;
	}
	return len;
}

char *strchr(const char *s, int c)
{
	for (; *s; s++)
		if (*s == (char)c)
			return (char *)s;
	return c ? NULL : (char *)s;
}

bool mem_eq64(const void *a, const void *b, size_t nwords)
{
	if (!nwords)
		return true;
	bool eq;
	asm volatile("repe cmpsq" : "+S"(a), "+D"(b), "+c"(nwords), "=@ccz"(eq) :: "memory");
	return eq;
}

void mem_fill64(void *d, uint64_t v, size_t nwords)
{
	asm volatile("rep stosq" : "+D"(d), "+c"(nwords) : "a"(v) : "memory");
}

void spin_lock(spinlock_t *l)
{
	while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
		while (l->locked)
			pause();
}

bool spin_trylock(spinlock_t *l)
{
	return !__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE);
}

void spin_unlock(spinlock_t *l)
{
	__atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}
