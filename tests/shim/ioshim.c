/* ioshim: an LD_PRELOAD library that plays a disk with a volatile write cache, for
 * tests of what akvm does with one image file (the one whose "DEV:INO" is in
 * AKVM_SHIM_FILE). Built by the tests with gcc (tests/conftest.py, io_shim).
 *
 *   AKVM_SHIM_HOLD=1        writes to the file are held in memory, as in a disk's
 *                           cache: reads see them, fdatasync/fsync write them out
 *                           first; a process killed before that loses them (a
 *                           power cut)
 *   AKVM_SHIM_SYNC_DELAY_MS fdatasync/fsync wait this long before writing out
 *   AKVM_SHIM_NO_SYNC=1     fdatasync/fsync return at once, writing nothing out:
 *                           what a VMM that does not sync would give the guest
 *   AKVM_SHIM_READ_DELAY_MS reads wait this long before they happen (a slow disk),
 *   AKVM_SHIM_NOTIFY_FD     after writing one byte 'r' to this fd
 *
 * Only the positioned calls a VMM uses on an image are covered (pread, pwrite,
 * their vectored forms under every name glibc gives them, fdatasync, fsync);
 * anything else passes through. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

struct held {
	off_t off;
	size_t len;
	unsigned char *data;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct held *held;
static size_t nheld, capheld;

static long env_long(const char *name)
{
	const char *v = getenv(name);
	return v ? strtol(v, NULL, 10) : 0;
}

static int target(int fd)
{
	const char *want = getenv("AKVM_SHIM_FILE");
	unsigned long long dev, ino;
	struct stat st;

	if (!want || sscanf(want, "%llu:%llu", &dev, &ino) != 2 || fstat(fd, &st) < 0)
		return 0;
	return st.st_dev == dev && st.st_ino == ino;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (ms > 0 && nanosleep(&ts, &ts) < 0)
		;
}

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

static ssize_t real_preadv(int fd, const struct iovec *iov, int n, off_t off)
{
	return REAL(preadv)(fd, iov, n, off);
}

static ssize_t real_pwrite(int fd, const void *buf, size_t len, off_t off)
{
	return REAL(pwrite)(fd, buf, len, off);
}

/* Keep a write in the cache: the caller sees it done. */
static ssize_t hold(const struct iovec *iov, int n, off_t off)
{
	size_t len = 0;
	unsigned char *data, *p;

	for (int i = 0; i < n; i++)
		len += iov[i].iov_len;
	data = p = malloc(len ? len : 1);
	if (!data)
		return -1;
	for (int i = 0; i < n; i++) {
		memcpy(p, iov[i].iov_base, iov[i].iov_len);
		p += iov[i].iov_len;
	}
	pthread_mutex_lock(&lock);
	if (nheld == capheld) {
		capheld = capheld ? 2 * capheld : 64;
		held = realloc(held, capheld * sizeof(*held));
	}
	held[nheld++] = (struct held){ off, len, data };
	pthread_mutex_unlock(&lock);
	return (ssize_t)len;
}

/* A read sees what the cache holds over what the file has. */
static ssize_t read_through(int fd, const struct iovec *iov, int n, off_t off)
{
	long delay = env_long("AKVM_SHIM_READ_DELAY_MS");
	ssize_t got;

	if (delay) {
		int nfd = (int)env_long("AKVM_SHIM_NOTIFY_FD");
		if (nfd > 0)
			(void)!write(nfd, "r", 1);
		sleep_ms(delay);
	}
	got = real_preadv(fd, iov, n, off);
	if (got <= 0)
		return got;
	pthread_mutex_lock(&lock);
	for (size_t h = 0; h < nheld; h++) {
		off_t pos = off;
		for (int i = 0; i < n && pos < off + got; i++) {
			off_t lo = pos > held[h].off ? pos : held[h].off;
			off_t end = pos + (off_t)iov[i].iov_len;
			off_t hi = held[h].off + (off_t)held[h].len;
			if (end > off + got)
				end = off + got;
			if (hi > end)
				hi = end;
			if (lo < hi)
				memcpy((unsigned char *)iov[i].iov_base + (lo - pos),
				       held[h].data + (lo - held[h].off), (size_t)(hi - lo));
			pos += (off_t)iov[i].iov_len;
		}
	}
	pthread_mutex_unlock(&lock);
	return got;
}

static int write_out(int fd)
{
	long delay = env_long("AKVM_SHIM_SYNC_DELAY_MS");

	if (delay)
		sleep_ms(delay);
	if (env_long("AKVM_SHIM_NO_SYNC"))
		return 0;
	pthread_mutex_lock(&lock);
	for (size_t h = 0; h < nheld; h++) {
		if (real_pwrite(fd, held[h].data, held[h].len, held[h].off) != (ssize_t)held[h].len) {
			pthread_mutex_unlock(&lock);
			return -1;
		}
		free(held[h].data);
	}
	nheld = 0;
	pthread_mutex_unlock(&lock);
	return 0;
}

static int holding(int fd)
{
	return env_long("AKVM_SHIM_HOLD") && target(fd);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
	return holding(fd) ? hold(iov, n, off) : REAL(pwritev)(fd, iov, n, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t off)
{
	return pwritev(fd, iov, n, off);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int n, off_t off, int flags)
{
	return holding(fd) && off >= 0 ? hold(iov, n, off) : REAL(pwritev2)(fd, iov, n, off, flags);
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int n, off_t off, int flags)
{
	return pwritev2(fd, iov, n, off, flags);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
	struct iovec v = { (void *)buf, len };

	return holding(fd) ? hold(&v, 1, off) : real_pwrite(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off)
{
	return pwrite(fd, buf, len, off);
}

ssize_t preadv(int fd, const struct iovec *iov, int n, off_t off)
{
	return target(fd) ? read_through(fd, iov, n, off) : real_preadv(fd, iov, n, off);
}

ssize_t preadv64(int fd, const struct iovec *iov, int n, off_t off)
{
	return preadv(fd, iov, n, off);
}

ssize_t preadv2(int fd, const struct iovec *iov, int n, off_t off, int flags)
{
	return target(fd) && off >= 0 ? read_through(fd, iov, n, off)
				      : REAL(preadv2)(fd, iov, n, off, flags);
}

ssize_t preadv64v2(int fd, const struct iovec *iov, int n, off_t off, int flags)
{
	return preadv2(fd, iov, n, off, flags);
}

ssize_t pread(int fd, void *buf, size_t len, off_t off)
{
	struct iovec v = { buf, len };

	return target(fd) ? read_through(fd, &v, 1, off) : REAL(pread)(fd, buf, len, off);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t off)
{
	return pread(fd, buf, len, off);
}

int fdatasync(int fd)
{
	if (target(fd) && write_out(fd) < 0)
		return -1;
	return REAL(fdatasync)(fd);
}

int fsync(int fd)
{
	if (target(fd) && write_out(fd) < 0)
		return -1;
	return REAL(fsync)(fd);
}
