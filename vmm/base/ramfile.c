/* Sparse RAM files: the pages of guest RAM that hold data, written at their
 * offsets (holes elsewhere), and mapped back copy-on-write.
 *
 * Saving reads /proc/self/pagemap first, so a page the guest never touched
 * is neither read (which would fault in the zero page) nor written; a
 * touched page that holds only zeros is skipped too. Restoring maps each
 * data extent of the file MAP_PRIVATE over anonymous memory: the guest's
 * first access of a page loads it from the page cache, a write copies it,
 * the file is never changed, and a hole stays anonymous memory, which reads
 * as the zero page (a file hole mapped privately would fill the page cache
 * with zeros, with read-ahead, on every read). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ramfile.h"

#define PAGE 4096ULL
#define CHUNK_PAGES 512ULL			/* pagemap entries read at a time */
#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)

static int page_is_zero(const unsigned char *p)
{
	const unsigned long long *q = (const unsigned long long *)p;
	unsigned long long acc = 0;

	for (unsigned int i = 0; i < PAGE / 8; i += 8) {
		acc |= q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] | q[i + 7];
		if (acc)
			return 0;
	}
	return 1;
}

static int add_run(struct akvm_ram_runs *runs, unsigned long long off, unsigned long long len)
{
	if (runs->n && runs->v[2 * runs->n - 2] + runs->v[2 * runs->n - 1] == off) {
		runs->v[2 * runs->n - 1] += len;
		return 0;
	}
	if (runs->n == runs->cap) {
		unsigned long long cap = runs->cap ? 2 * runs->cap : 256;
		unsigned long long *v = realloc(runs->v, 2 * cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		runs->v = v;
		runs->cap = cap;
	}
	runs->v[2 * runs->n] = off;
	runs->v[2 * runs->n + 1] = len;
	runs->n++;
	return 0;
}

static int write_all(int fd, const unsigned char *p, unsigned long long len, unsigned long long at)
{
	while (len) {
		ssize_t w = pwrite(fd, p, len > (1ULL << 30) ? (1ULL << 30) : len, (off_t)at);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		at += (unsigned long long)w;
		len -= (unsigned long long)w;
	}
	return 0;
}

/* Flush the pending run [start, end) of region offsets. */
static int flush(const unsigned char *base, int fd, unsigned long long file_offset,
		 struct akvm_ram_runs *runs, unsigned long long start, unsigned long long end)
{
	int r;

	if (start == end)
		return 0;
	r = write_all(fd, base + start, end - start, file_offset + start);
	return r ? r : add_run(runs, start, end - start);
}

int akvm_ram_save(const void *base_, unsigned long long from, unsigned long long to,
		  int pagemap_fd, int fd, unsigned long long file_offset,
		  struct akvm_ram_runs *runs, unsigned long long *touched)
{
	const unsigned char *base = base_;
	unsigned long long entries[CHUNK_PAGES];
	unsigned long long start = from, end = from;	/* the run being collected */
	int r;

	for (unsigned long long off = from; off < to; off += CHUNK_PAGES * PAGE) {
		unsigned long long pages = (to - off) / PAGE;

		if (pages > CHUNK_PAGES)
			pages = CHUNK_PAGES;
		if (pagemap_fd >= 0) {
			unsigned long long want = pages * sizeof(entries[0]);
			off_t at = (off_t)(((unsigned long long)(base + off) / PAGE) * sizeof(entries[0]));
			ssize_t got = pread(pagemap_fd, entries, want, at);

			if (got < 0)
				return -errno;
			if ((unsigned long long)got != want)
				return -EIO;
		}
		for (unsigned long long i = 0; i < pages; i++) {
			unsigned long long page = off + i * PAGE;
			int data;

			if (pagemap_fd >= 0 && !(entries[i] & (PM_PRESENT | PM_SWAPPED))) {
				data = 0;
			} else {
				data = !page_is_zero(base + page);
				if (pagemap_fd >= 0 || data)
					(*touched)++;
			}
			if (data) {
				if (page != end) {
					r = flush(base, fd, file_offset, runs, start, end);
					if (r)
						return r;
					start = page;
				}
				end = page + PAGE;
			}
		}
	}
	return flush(base, fd, file_offset, runs, start, end);
}

void akvm_ram_runs_free(struct akvm_ram_runs *runs)
{
	free(runs->v);
	runs->v = NULL;
	runs->n = runs->cap = 0;
}

int akvm_ram_map(void *base, unsigned long long len, int fd, unsigned long long file_offset,
		 const unsigned long long *pairs, unsigned long long n)
{
	for (unsigned long long i = 0; i < n; i++) {
		unsigned long long off = pairs[2 * i], size = pairs[2 * i + 1];

		if (off % PAGE || size % PAGE || !size || off > len || size > len - off)
			return -EINVAL;
		if (mmap((unsigned char *)base + off, size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_FIXED, fd, (off_t)(file_offset + off)) == MAP_FAILED)
			return -errno;
		posix_fadvise(fd, (off_t)(file_offset + off), (off_t)size, POSIX_FADV_WILLNEED);
	}
	return 0;
}
