/*
 * printf-style formatting: %d %i %u %x %X %p %c %s %%, with l/ll/z
 * length, '-' and '0' flags, width and precision (for %s).
 */
#include "lib.h"
#include "console.h"
#include "x86.h"

/*
 * Output is formatted into a buffer and handed to the console in blocks:
 * far fewer (possibly emulated) instructions per character than a call
 * chain per byte.
 */
struct sink {
	char *buf;
	size_t pos, cap;        /* pos: bytes in buf */
	size_t total;           /* bytes produced */
	bool console;           /* flush to the console, else truncate */
};

static void flush(struct sink *s)
{
	if (s->console)
		console_write_locked(s->buf, s->pos);
	s->pos = 0;
}

static inline void put(struct sink *s, char c)
{
	if (s->pos == s->cap) {
		if (!s->console) {
			s->total++;
			return;
		}
		flush(s);
	}
	s->buf[s->pos++] = c;
	s->total++;
}

/* n bytes at once: a block copy, not a call per byte. */
static void put_run(struct sink *s, const char *p, size_t n)
{
	s->total += n;
	while (n) {
		if (s->pos == s->cap) {
			if (!s->console)
				return;
			flush(s);
		}
		size_t k = n < s->cap - s->pos ? n : s->cap - s->pos;
		memcpy(s->buf + s->pos, p, k);
		s->pos += k;
		p += k;
		n -= k;
	}
}

static void put_padded(struct sink *s, const char *str, size_t len, int width, bool left, char pad)
{
	int fill = width > (int)len ? width - (int)len : 0;
	if (!left && pad == '0' && len && (*str == '-')) {
		/* sign goes before zero padding */
		put(s, *str++);
		len--;
	}
	if (!left)
		while (fill--> 0)
			put(s, pad);
	put_run(s, str, len);
	if (left)
		while (fill-- > 0)
			put(s, ' ');
}

static void format(struct sink *s, const char *fmt, va_list ap)
{
	char tmp[24];
	const char *fend = fmt + strlen(fmt);
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			const char *pct = memchr(fmt, '%', (size_t)(fend - fmt));
			size_t run = pct ? (size_t)(pct - fmt) : (size_t)(fend - fmt);
			put_run(s, fmt, run);
			fmt += run - 1;
			continue;
		}
		fmt++;
		bool left = false;
		char pad = ' ';
		for (;; fmt++) {
			if (*fmt == '-')
				left = true;
			else if (*fmt == '0')
				pad = '0';
			else
				break;
		}
		int width = 0, prec = -1;
		if (*fmt == '*') {
			width = va_arg(ap, int);
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		if (*fmt == '.') {
			fmt++;
			prec = 0;
			if (*fmt == '*') {
				prec = va_arg(ap, int);
				fmt++;
			}
			while (*fmt >= '0' && *fmt <= '9')
				prec = prec * 10 + (*fmt++ - '0');
		}
		int lng = 0;
		while (*fmt == 'l' || *fmt == 'z') {
			lng++;
			fmt++;
		}
		if (!*fmt)
			break;

		uint64_t v;
		bool neg = false;
		unsigned base = 10;
		bool upper = false;
		switch (*fmt) {
		case 'c':
			tmp[0] = (char)va_arg(ap, int);
			put_padded(s, tmp, 1, width, left, ' ');
			continue;
		case 's': {
			const char *str = va_arg(ap, const char *);
			if (!str)
				str = "(null)";
			size_t len;
			if (prec < 0) {
				len = strlen(str);
			} else {
				for (len = 0; str[len] && (int)len < prec; len++)
					;
			}
			put_padded(s, str, len, width, left, ' ');
			continue;
		}
		case 'd':
		case 'i': {
			int64_t sv = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			neg = sv < 0;
			v = neg ? -(uint64_t)sv : (uint64_t)sv;
			break;
		}
		case 'p':
			put(s, '0');
			put(s, 'x');
			v = (uintptr_t)va_arg(ap, void *);
			base = 16;
			break;
		case 'X':
			upper = true;
			/* fall through */
		case 'x':
			base = 16;
			/* fall through */
		case 'u':
			v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
			break;
		default:
			put(s, '%');
			put(s, *fmt);
			continue;
		}
		const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
		int i = sizeof(tmp);
		do {
			tmp[--i] = digits[v % base];
			v /= base;
		} while (v);
		if (neg)
			tmp[--i] = '-';
		put_padded(s, tmp + i, sizeof(tmp) - i, width, left, pad);
	}
}

int kvsnprintf(char *buf, size_t n, const char *fmt, va_list ap)
{
	struct sink s = { buf, 0, n ? n - 1 : 0, 0, false };
	format(&s, fmt, ap);
	if (n)
		buf[s.pos] = 0;
	return (int)s.total;
}

int ksnprintf(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = kvsnprintf(buf, n, fmt, ap);
	va_end(ap);
	return r;
}

int vkprintf(const char *fmt, va_list ap)
{
	char buf[128];
	struct sink s = { buf, 0, sizeof(buf), 0, true };
	console_lock();
	format(&s, fmt, ap);
	flush(&s);
	console_unlock();
	return (int)s.total;
}

int kprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vkprintf(fmt, ap);
	va_end(ap);
	return r;
}

void panic(const char *fmt, ...)
{
	va_list ap;
	cli();
	console_force_unlock();
	kprintf("panic: ");
	va_start(ap, fmt);
	vkprintf(fmt, ap);
	va_end(ap);
	kprintf("\n");
	for (;;)
		hlt();
}
