/* Freestanding helpers: memory/string functions and formatted output. */
#ifndef LIB_H
#define LIB_H
#include "types.h"

void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
void *memchr(const void *s, int c, size_t n);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
size_t strlcpy(char *d, const char *s, size_t n);
char *strchr(const char *s, int c);
/* n 64-bit words: equal?  (REPE CMPSQ: one instruction to emulate) */
bool mem_eq64(const void *a, const void *b, size_t nwords);
/* Fill n 64-bit words with v (REP STOSQ). */
void mem_fill64(void *d, uint64_t v, size_t nwords);

int kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vkprintf(const char *fmt, va_list ap);
int ksnprintf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int kvsnprintf(char *buf, size_t n, const char *fmt, va_list ap);

void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2))) NORETURN;

typedef struct { volatile int locked; } spinlock_t;
void spin_lock(spinlock_t *l);
void spin_unlock(spinlock_t *l);
bool spin_trylock(spinlock_t *l);

#endif
