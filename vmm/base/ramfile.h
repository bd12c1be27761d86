/* Guest RAM to and from a snapshot's sparse RAM file (ramfile.c); memory.py's
 * GuestMemory.save_sparse() and GuestMemory.from_ram_file() call these. */
#ifndef AKVM_RAMFILE_H
#define AKVM_RAMFILE_H

/* Runs of data found by akvm_ram_save, as (offset, length) pairs relative
 * to the region's base: v[2 * i], v[2 * i + 1] for i < n. */
struct akvm_ram_runs {
	unsigned long long *v;
	unsigned long long n, cap;
};

/* Write every page of [base + start, base + end) that holds a non-zero byte
 * to fd at file_offset + (page - base). With pagemap_fd >= 0 (an open
 * /proc/self/pagemap) pages the process never touched (neither present nor
 * swapped) are skipped without being read, which keeps untouched RAM
 * untouched. Appends the runs written to *runs (offsets from base; runs
 * that meet are joined); adds to *touched the pages pagemap says are
 * present or swapped (the non-zero pages without it). base, start and end
 * are page-aligned. Returns 0 or -errno. */
int akvm_ram_save(const void *base, unsigned long long start, unsigned long long end,
		  int pagemap_fd, int fd, unsigned long long file_offset,
		  struct akvm_ram_runs *runs, unsigned long long *touched);
void akvm_ram_runs_free(struct akvm_ram_runs *runs);

/* Map n extents of fd privately (MAP_PRIVATE | MAP_FIXED) over the region at
 * base: extent i is (offset, length) pairs[2 * i], pairs[2 * i + 1], file
 * offset file_offset + offset, every one inside the region. Asks for them to
 * be read ahead. Returns 0 or -errno. */
int akvm_ram_map(void *base, unsigned long long len, int fd, unsigned long long file_offset,
		 const unsigned long long *pairs, unsigned long long n);

#endif
