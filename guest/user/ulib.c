/* The user programs' libc. */
#include "ulib.h"

void exit(int status)
{
	__syscall(SYS_EXIT, status, 0, 0);
	for (;;)
		;
}

long write(int fd, const void *buf, size_t len) { return __syscall(SYS_WRITE, fd, (long)buf, len); }
void *mmap(size_t len) { return (void *)__syscall(SYS_MMAP, len, 0, 0); }
int munmap(void *addr, size_t len) { return __syscall(SYS_MUNMAP, (long)addr, len, 0); }
int getpid(void) { return __syscall(SYS_GETPID, 0, 0, 0); }
void yield(void) { __syscall(SYS_YIELD, 0, 0, 0); }
int getcore(void) { return __syscall(SYS_GETCORE, 0, 0, 0); }
int nrunning(void) { return __syscall(SYS_NRUNNING, 0, 0, 0); }
int ioperm(unsigned port, unsigned n, int on) { return __syscall(SYS_IOPERM, port, n, on); }
uint64_t tsc_khz(void) { return __syscall(SYS_TSC_KHZ, 0, 0, 0); }
volatile void *assign(unsigned bdf) { return (volatile void *)__syscall(SYS_ASSIGN, bdf, 0, 0); }
volatile void *assign_dev(uint64_t sel, struct assign_virtio *info)
{
	return (volatile void *)__syscall(SYS_ASSIGN, sel, (long)info, 0);
}
int release(void) { return __syscall(SYS_RELEASE, 0, 0, 0); }
int core_request(void (*entry)(void *arg, int core), void *stack_top, void *arg)
{
	return __syscall(SYS_CORE_REQUEST, (long)entry, (long)stack_top, (long)arg);
}
void core_yield(void)
{
	__syscall(SYS_CORE_YIELD, 0, 0, 0);
	for (;;)
		;
}
int ncores(void) { return __syscall(SYS_NCORES, 0, 0, 0); }
int dev_xlate(int on) { return __syscall(SYS_DEV_XLATE, on, 0, 0); }
int64_t dma_addr(const volatile void *va) { return __syscall(SYS_DMA_ADDR, (long)va, 0, 0); }
long iommu_lend(int mode, struct iommu_lend *info)
{
	return __syscall(SYS_IOMMU_LEND, mode, (long)info, 0);
}

void *memcpy(void *d, const void *s, size_t n)
{
	char *dp = d;
	const char *sp = s;
	while (n--)
		*dp++ = *sp++;
	return d;
}

void *memset(void *d, int c, size_t n)
{
	char *dp = d;
	while (n--)
		*dp++ = c;
	return d;
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
	return (unsigned char)*a - (unsigned char)*b;
}

long atol(const char *s)
{
	long v = 0;
	bool neg = *s == '-';
	if (neg)
		s++;
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (*s++ - '0');
	return neg ? -v : v;
}

long atolx(const char *s)
{
	long v = 0;
	for (; *s; s++)
		v = v * 16 + (*s <= '9' ? *s - '0' : (*s | 0x20) - 'a' + 10);
	return v;
}

struct out { char *buf; size_t n, len; };

static void put(struct out *o, char c)
{
	if (o->len + 1 < o->n)
		o->buf[o->len] = c;
	o->len++;
}

static void put_num(struct out *o, uint64_t v, unsigned base, bool neg, int width, char pad)
{
	char tmp[24];
	int i = 0;
	do {
		tmp[i++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (neg)
		tmp[i++] = '-';
	while (width-- > i)
		put(o, pad);
	while (i)
		put(o, tmp[--i]);
}

/* %d %i %u %x %lx %ld %lu %s %c %p %%, width and 0 padding. */
int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap)
{
	struct out o = { buf, n, 0 };
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(&o, *fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0, lng = 0;
		if (*fmt == '0')
			pad = '0', fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l')
			lng++, fmt++;
		switch (*fmt) {
		case 'd': case 'i': {
			int64_t v = lng ? va_arg(ap, long) : va_arg(ap, int);
			put_num(&o, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, v < 0, width, pad);
			break;
		}
		case 'u':
			put_num(&o, lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned), 10, false, width, pad);
			break;
		case 'x':
			put_num(&o, lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned), 16, false, width, pad);
			break;
		case 'p':
			put(&o, '0'), put(&o, 'x');
			put_num(&o, (uintptr_t)va_arg(ap, void *), 16, false, width, pad);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			size_t l = strlen(s);
			while (width-- > (int)l)
				put(&o, ' ');
			while (*s)
				put(&o, *s++);
			break;
		}
		case 'c':
			put(&o, (char)va_arg(ap, int));
			break;
		case '%':
			put(&o, '%');
			break;
		default:
			put(&o, '%');
			if (*fmt)
				put(&o, *fmt);
			else
				fmt--;
		}
	}
	if (n)
		buf[o.len < n ? o.len : n - 1] = 0;
	return o.len;
}

int snprintf(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(buf, n, fmt, ap);
	va_end(ap);
	return r;
}

int printf(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	write(1, buf, r < (int)sizeof(buf) ? (size_t)r : sizeof(buf) - 1);
	return r;
}
