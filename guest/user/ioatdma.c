/*
 * ioatdma MODE [BDF]: this process owns an I/OAT channel (assign(); BDF in
 * hex, default any channel no process owns) through the IOMMU, as Akaros's
 * ucbdma does, and drives it from ring 3 through the mapped BAR0: its ring,
 * completion writeback and buffers are its own pages, every address an IOVA
 * (virtual address - USER_DMA_BASE).  Completion is polled in memory.
 *   copy    a page, then a chain of 5 descriptors across 64 KiB of pages
 *   munmap  a copy into a page, munmap it, copy there again: the channel
 *           halts with WRITE_DATA_ERR (the IOMMU blocks the write)
 *   noflush the same under `iommu noflush` with new data: the stale IOTLB
 *           entry takes it to the old frame (held back by the kernel)
 *   bench   BENCH user-ioat-*: MB/s of 4 KiB and 1 MiB copies through the
 *           process's domain and with dev_xlate(0), descriptors/s of 64-byte
 *           copies
 * Exit codes 1-39 name the check that failed.
 */
#include "ulib.h"

#define CHANCTRL        0x80
#define CHANCMD         0x84
#define DMACOUNT        0x86
#define CHANSTS         0x88
#define CHAINADDR       0x90
#define CHANCMP         0x98
#define CHANERR         0xA8
#define CHANCMD_RESET   0x20
#define CHANCTRL_RUN    0x1D            /* INT_REARM | ERR_COMPLETION_EN | ANY_ERR_ABORT_EN | ERR_INT_EN */
#define HALTED          3
#define IDLE            1
#define WRITE_DATA_ERR  0x200
#define COMPL_WRITE     0x08
#define RING            64              /* descriptors: one page */
#define STALE_DATA      0x5A1E000000000000ULL   /* usertest.c has the same */

struct desc {
	uint32_t size, ctl;
	uint64_t src, dst, next;
	uint64_t rsvd[4];
};

/* No writable globals: the programs are one RWX-free segment each. */
struct chan {
	volatile uint8_t *bar;
	struct desc *ring;
	volatile uint64_t *compl;
	int64_t ring_addr;              /* the ring as the device sees it */
	uint64_t tsc_2s;                /* TSC ticks in 2 s (tsc_khz() is a system call) */
	uint16_t head;
	int64_t (*addr)(const void *);  /* what the device is given for an address */
};


static int64_t iova(const void *p) { return iova_of(p); }

static uint64_t ms_to_tsc(uint64_t ms)
{
	uint64_t khz = tsc_khz();
	return ms * (khz ? khz : 1000000);
}

/* Reset, CHANCTRL, the completion and the ring (as addresses the device uses). */
static int start(struct chan *c)
{
	W32(c->bar + CHANERR, R32(c->bar + CHANERR));
	W8(c->bar + CHANCMD, CHANCMD_RESET);
	if (R8(c->bar + CHANCMD) & CHANCMD_RESET)
		return -1;
	int64_t ring = c->addr(c->ring), compl = c->addr((const void *)c->compl);
	if (ring < 0 || compl < 0)
		return -1;
	for (int i = 0; i < RING; i++)
		c->ring[i].next = ring + ((i + 1) % RING) * sizeof(struct desc);
	c->ring_addr = ring;
	*c->compl = 0;
	W16(c->bar + CHANCTRL, CHANCTRL_RUN);
	W32(c->bar + CHANCMP, (uint32_t)compl);
	W32(c->bar + CHANCMP + 4, (uint64_t)compl >> 32);
	W32(c->bar + CHAINADDR, (uint32_t)ring);
	W32(c->bar + CHAINADDR + 4, (uint64_t)ring >> 32);
	c->head = 0;
	return 0;
}

static uint64_t put(struct chan *c, uint32_t size, uint32_t ctl, uint64_t src, uint64_t dst)
{
	struct desc *d = &c->ring[c->head % RING];
	d->size = size;
	d->ctl = ctl;
	d->src = src;
	d->dst = dst;
	c->head++;
	return c->ring_addr + (d - c->ring) * sizeof(*d);
}

/* DMACOUNT, then the completion writeback polled until it shows `want` or the
 * channel halts; the writeback, or 0 on a 2 s timeout. */
static uint64_t issue_wait(struct chan *c, uint64_t want)
{
	asm volatile("" ::: "memory");
	W16(c->bar + DMACOUNT, c->head);
	uint64_t end = rdtsc() + c->tsc_2s;
	for (;;) {
		uint64_t w = *c->compl;
		if (w == want || (w & 7) == HALTED)
			return w;
		if (rdtsc() > end)
			return 0;
		cpu_pause();
	}
}

static bool same(const uint64_t *a, const uint64_t *b, int words)
{
	for (int i = 0; i < words; i++)
		if (a[i] != b[i])
			return false;
	return true;
}

/* A page, then 5 descriptors across 64 KiB: every byte where it belongs. */
static int copy(struct chan *c, int pid)
{
	uint64_t *src = mmap(65536), *dst = mmap(65536);
	if (src == MAP_FAILED || dst == MAP_FAILED)
		return 10;
	for (int i = 0; i < 8192; i++)
		src[i] = 0x10A7000000000000ULL | (uint64_t)pid << 32 | i;
	uint64_t last = put(c, 4096, COMPL_WRITE, iova(src), iova(dst));
	if (issue_wait(c, last | IDLE) != (last | IDLE))
		return 11;
	if (!same(src, dst, 512) || dst[512])
		return 12;
	static const uint32_t sizes[] = { 100, 4000, 20000, 8, 65536 - 24108 };
	uint64_t off = 0;
	for (int k = 0; k < 5; k++) {
		last = put(c, sizes[k], k == 4 ? COMPL_WRITE : 0, iova(src) + off, iova(dst) + off);
		off += sizes[k];
	}
	if (issue_wait(c, last | IDLE) != (last | IDLE))
		return 13;
	if (!same(src, dst, 8192))
		return 14;
	printf("ioatdma: pid %d: 4 KiB and a 5-descriptor chain of 64 KiB copied between its pages "
	       "at IOVA 0x%lx -> 0x%lx\n", pid, iova(src), iova(dst));
	return 0;
}

/* A copy into dst, munmap(dst), the same copy again (noflush: new data). */
static int unmapped(struct chan *c, int pid, bool noflush)
{
	uint64_t *src = mmap(PAGE_SIZE), *dst = mmap(PAGE_SIZE);
	if (src == MAP_FAILED || dst == MAP_FAILED)
		return 20;
	for (int i = 0; i < 512; i++)
		src[i] = 0x10A7000000000000ULL | (uint64_t)pid << 32 | i;
	uint64_t last = put(c, 4096, COMPL_WRITE, iova(src), iova(dst));
	if (issue_wait(c, last | IDLE) != (last | IDLE) || dst[7] != src[7])
		return 21;
	uint64_t at = iova(dst);
	if (munmap(dst, PAGE_SIZE) != 0)
		return 22;
	if (noflush)
		for (int i = 0; i < 512; i++)
			src[i] = STALE_DATA | (uint64_t)pid << 32 | i;
	last = put(c, 4096, COMPL_WRITE, iova(src), at);
	uint64_t w = issue_wait(c, last | IDLE);
	if (noflush) {
		if (w != (last | IDLE))
			return 23;      /* the stale entry should have served it */
		printf("ioatdma: pid %d: copy to IOVA 0x%lx after munmap without IOTLB flush done\n",
		       pid, at);
		return 0;
	}
	if ((w & 7) != HALTED || R32(c->bar + CHANERR) != WRITE_DATA_ERR)
		return 24;
	printf("ioatdma: pid %d: copy to IOVA 0x%lx after munmap: HALTED, CHANERR 0x%x\n", pid, at,
	       R32(c->bar + CHANERR));
	return 0;
}

/* --- bench ---------------------------------------------------------------------------- */

/* Time spent and copies done, per size and way (translated, pass-through). */
struct tally { uint64_t tsc, ops; };

/* `batch` copies of `size` per doorbell for at least 8 rounds and up to 50 ms,
 * after two rounds untimed (the IOTLB then holds the pages), into *t. */
static int bench_copies(struct chan *c, uint8_t *src, uint8_t *dst, uint32_t size, int batch,
			struct tally *t)
{
	uint64_t limit = c->tsc_2s / 40, rounds = 0, t0, dt;
	if (start(c))
		return 30;
	int64_t s = c->addr(src), d = c->addr(dst);
	for (int warm = 0; warm < 2; warm++) {
		uint64_t last = 0;
		for (int k = 0; k < batch; k++)
			last = put(c, size, k == batch - 1 ? COMPL_WRITE : 0, s, d);
		if (issue_wait(c, last | IDLE) != (last | IDLE))
			return 31;
	}
	t0 = rdtsc();
	do {
		uint64_t last = 0;
		for (int k = 0; k < batch; k++)
			last = put(c, size, k == batch - 1 ? COMPL_WRITE : 0, s, d);
		if (issue_wait(c, last | IDLE) != (last | IDLE))
			return 32;
		rounds++;
		dt = rdtsc() - t0;
	} while (rounds < 8 || (dt < limit && rounds < 100000));
	t->tsc += dt;
	t->ops += rounds * batch;
	return 0;
}

static int64_t phys(const void *p) { return dma_addr(p); }

/* Under dev_xlate(0) the device is given physical addresses, so each buffer
 * must be contiguous there too: the first window of len bytes at or after
 * `from` whose frames are (mmap takes freed frames first, then fresh ones in
 * order), or NULL. */
static uint8_t *contiguous(uint8_t *from, uint8_t *end, uint64_t len)
{
	uint8_t *start = from;
	for (uint8_t *p = from + PAGE_SIZE; p < end && start + len <= end; p += PAGE_SIZE) {
		if (dma_addr(p) != dma_addr(p - PAGE_SIZE) + PAGE_SIZE)
			start = p;
		else if (p + PAGE_SIZE - start >= (int64_t)len)
			return start;
	}
	return NULL;
}

static int bench(struct chan *c)
{
	uint64_t len = 1 << 20, area = 6 * len;
	uint8_t *base = mmap(area);
	if (base == MAP_FAILED)
		return 33;
	if (dev_xlate(0) != 0)
		return 34;
	uint8_t *src = contiguous(base, base + area, len);
	uint8_t *dst = src ? contiguous(src + len, base + area, len) : NULL;
	if (dev_xlate(1) != 0)
		return 36;
	if (!dst) {
		printf("BENCH user-ioat skipped: no physically contiguous 1 MiB buffers\n");
		return 0;
	}
	for (uint64_t i = 0; i < len; i += 8)
		*(uint64_t *)(src + i) = i * 0x9E3779B97F4A7C15ULL;
	/* The two ways in turn, five times, so that both see the same host. */
	const struct { const char *name; uint32_t size; int batch; } kinds[] = {
		{ "copy-4k", 4096, 16 }, { "copy-1m", 1 << 20, RING - 1 }, { "desc-64b", 64, RING - 1 },
	};
	struct tally tally[2][3] = { 0 };
	for (int round = 0; round < 10; round++) {
		int pass = round % 2;
		if (dev_xlate(!pass) != 0)
			return 34;
		c->addr = pass ? phys : iova;
		for (int k = 0; k < 3; k++) {
			int err = bench_copies(c, src, dst, kinds[k].size, kinds[k].batch, &tally[pass][k]);
			if (err)
				return err;
		}
		for (uint64_t i = 0; i < len; i += 4096)
			if (*(uint64_t *)(dst + i) != *(uint64_t *)(src + i))
				return 35;
	}
	uint64_t khz = c->tsc_2s / 2000;
	for (int pass = 0; pass < 2; pass++) {
		for (int k = 0; k < 3; k++) {
			struct tally *t = &tally[pass][k];
			uint64_t ns = t->tsc * 1000000 / khz;
			printf("BENCH user-ioat-%s-%s iterations=%lu cycles_per_op=%lu ns_per_op=%lu "
			       "bytes_per_op=%u MBps=%lu\n", kinds[k].name,
			       pass ? "passthrough" : "translated", t->ops, t->tsc / t->ops, ns / t->ops,
			       kinds[k].size, ns ? (uint64_t)kinds[k].size * t->ops * 1000 / ns : 0);
		}
	}
	if (dev_xlate(1) != 0)
		return 36;
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "copy";
	uint64_t sel = argc > 2 ? (uint64_t)atolx(argv[2]) : ASSIGN_IOAT;
	int pid = getpid();
	struct chan c = { .addr = iova, .tsc_2s = ms_to_tsc(2000) };
	c.ring = mmap(PAGE_SIZE);
	c.compl = mmap(PAGE_SIZE);
	if (c.ring == MAP_FAILED || c.compl == MAP_FAILED)
		return 1;
	if ((c.bar = assign_dev(sel, 0)) == MAP_FAILED) {
		if (!strcmp(mode, "bench")) {
			printf("BENCH user-ioat skipped: cannot assign an I/OAT channel\n");
			return 0;
		}
		return 2;
	}
	if (R8(c.bar + 0x08) != 0x33)
		return 3;                       /* CBVER: the BAR is an I/OAT's */
	if (start(&c))
		return 4;
	if (!strcmp(mode, "copy"))
		return copy(&c, pid);
	if (!strcmp(mode, "munmap"))
		return unmapped(&c, pid, false);
	if (!strcmp(mode, "noflush"))
		return unmapped(&c, pid, true);
	if (!strcmp(mode, "bench"))
		return bench(&c);
	return 5;
}
