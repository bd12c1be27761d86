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

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
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
