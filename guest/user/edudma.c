/*
 * edudma MODE [BDF]: assigns the edu device to this process (assign(),
 * BDF in hex, default the edu wherever it is) and programs its DMA engine
 * from ring 3 through the mapped BAR0; DMA addresses are this process's
 * virtual addresses minus USER_DMA_BASE (the kernel's VT-d domain for the
 * process mirrors its page table over that window; the edu's DMA mask is
 * 28 bits).  Modes:
 *   dma     buffer -> edu -> second buffer, compare (exit 0 when equal)
 *   fault   DMA to FAULT_IOVA, never mapped: the IOMMU must block it
 *   munmap  DMA into a buffer, munmap it, DMA there again (must fault)
 *   noflush the same with `iommu noflush`, new data the second time: the
 *           stale IOTLB entry takes it to the old frame (the kernel holds
 *           that frame back until the domain is flushed)
 *   hold    assign and exit without release (exit must release)
 *   release assign, release, exit
 *   two a|b two processes, each with an edu of its own (two edu devices):
 *           both DMA into their own buffers at the same IOVAs; b keeps a
 *           page that a unmapped and a DMAs there (must fault); b checks
 *           that page and its buffer are untouched once a has exited
 *   bench   timed DMAs (device buffer -> RAM) from ring 3, through the
 *           process's domain, then with dev_xlate(0) to the physical
 *           address:  BENCH user-edu-dma-{translated,passthrough} ...
 * Exit codes 1-19 name the check that failed.
 */
#include "ulib.h"

#define EDU_DMA_SRC     0x80
#define EDU_DMA_DST     0x88
#define EDU_DMA_CNT     0x90
#define EDU_DMA_CMD     0x98
#define EDU_BUF         0x40000
#define DMA_START       1
#define DMA_TO_RAM      2
#define LEN             4088            /* QEMU's edu: not up to the last byte */
#define FAULT_IOVA      0x0F000000ULL   /* never mapped; usertest.c has the same */
#define STALE_DATA      0x5A1E000000000000ULL   /* noflush's second DMA; usertest.c too */
#define CHURN_PAGES     100     /* more than a process's held-back frames (PROC_QUARANTINE) */
#define SECRET_DATA     0x5EC2E70000000000ULL   /* two: b's page that a must not reach */

/* No writable globals: the programs are one RWX-free segment each. */
#define wr64(off, v)    (*(volatile uint64_t *)(bar + (off)) = (v))
#define rd32(off)       (*(volatile uint32_t *)(bar + (off)))

/* One transfer; 0 when the engine went idle within 2 s. */
static int dma(volatile uint8_t *bar, uint64_t src, uint64_t dst, uint32_t len, bool to_ram)
{
	uint64_t khz = tsc_khz(), end = rdtsc() + 2000 * (khz ? khz : 1000000);
	wr64(EDU_DMA_SRC, src);
	wr64(EDU_DMA_DST, dst);
	wr64(EDU_DMA_CNT, len);
	wr64(EDU_DMA_CMD, DMA_START | (to_ram ? DMA_TO_RAM : 0));
	while (rd32(EDU_DMA_CMD) & DMA_START)
		if (rdtsc() > end)
			return -1;
	return 0;
}

static uint64_t ms_to_tsc(uint64_t ms)
{
	uint64_t khz = tsc_khz();
	return ms * (khz ? khz : 1000000);
}

/* Until nrunning() is (at least / below) n, up to ms milliseconds. */
static bool wait_running(int n, bool at_least, uint64_t ms)
{
	uint64_t end = rdtsc() + ms_to_tsc(ms);
	while ((nrunning() >= n) != at_least) {
		if (rdtsc() > end)
			return false;
		for (int i = 0; i < 20000; i++)
			cpu_pause();
	}
	return true;
}

static int two(const char *role)
{
	bool a = !strcmp(role, "a");
	int pid = getpid();
	uint64_t *src = mmap(PAGE_SIZE), *dst = mmap(PAGE_SIZE), *secret = mmap(PAGE_SIZE);
	if (src == MAP_FAILED || dst == MAP_FAILED || secret == MAP_FAILED)
		return 30;
	volatile uint8_t *bar = assign(ASSIGN_EDU);
	if (bar == MAP_FAILED)
		return 31;
	for (int i = 0; i < LEN / 8; i++)
		secret[i] = SECRET_DATA | (uint64_t)pid << 32 | i;
	if (a && munmap(secret, PAGE_SIZE) != 0)
		return 32;              /* a's domain no longer maps that IOVA; b's does */
	if (!wait_running(2, true, 5000))
		return 33;
	for (int i = 0; i < LEN / 8; i++)
		src[i] = 0xED00000000000000ULL | (uint64_t)pid << 32 | i;
	if (dma(bar, iova_of(src), EDU_BUF, LEN, false) || dma(bar, EDU_BUF, iova_of(dst), LEN, true))
		return 34;
	for (int i = 0; i < LEN / 8; i++)
		if (dst[i] != src[i])
			return 35;
	if (a) {
		if (dma(bar, EDU_BUF, iova_of(secret), LEN, true))
			return 36;
		printf("edudma: pid %d (a): DMA into its buffer at IOVA 0x%lx ok; DMA to IOVA 0x%lx "
		       "(mapped only in b) done\n", pid, iova_of(dst), iova_of(secret));
		uint64_t end = rdtsc() + ms_to_tsc(300);        /* b sees us running */
		while (rdtsc() < end)
			cpu_pause();
		return 0;
	}
	if (!wait_running(2, false, 20000))
		return 37;
	for (int i = 0; i < LEN / 8; i++)
		if (secret[i] != (SECRET_DATA | (uint64_t)pid << 32 | i))
			return 38;
	for (int i = 0; i < LEN / 8; i++)
		if (dst[i] != src[i])
			return 39;
	printf("edudma: pid %d (b): DMA into its buffer at IOVA 0x%lx ok; after a exited, that "
	       "buffer and its page at IOVA 0x%lx are unchanged\n", pid, iova_of(dst), iova_of(secret));
	return 0;
}

static int bench(void)
{
	uint64_t *dst = mmap(PAGE_SIZE);
	if (dst == MAP_FAILED)
		return 40;
	volatile uint8_t *bar = assign(ASSIGN_EDU);
	if (bar == MAP_FAILED) {
		printf("BENCH user-edu skipped: cannot assign an edu device\n");
		return 0;
	}
	uint64_t khz = tsc_khz();
	if (!khz)
		khz = 1000000;
	for (int pass = 0; pass < 2; pass++) {
		const char *name = pass ? "user-edu-dma-passthrough" : "user-edu-dma-translated";
		if (pass && dev_xlate(0) != 0) {
			printf("BENCH %s skipped: dev_xlate(0) refused\n", name);
			break;
		}
		int64_t addr = dma_addr(dst);
		if (addr < 0 || addr + LEN > (1LL << 28)) {
			printf("BENCH %s skipped: address 0x%lx out of the edu's reach\n", name, addr);
			continue;
		}
		if (dma(bar, EDU_BUF, addr, LEN, true))         /* warm: the IOTLB holds it */
			return 41;
		uint64_t i, t0 = rdtsc(), t;
		for (i = 0; i < 8 || (i < 1000 && rdtsc() - t0 < ms_to_tsc(200)); i++)
			if (dma(bar, EDU_BUF, addr, LEN, true))
				return 41;
		t = rdtsc() - t0;
		uint64_t ns = t * 1000000 / khz;
		printf("BENCH %s iterations=%lu cycles_per_op=%lu ns_per_op=%lu bytes_per_op=%d MBps=%lu\n",
		       name, i, t / i, ns / i, LEN, ns ? (uint64_t)LEN * i * 1000 / ns : 0);
	}
	if (dev_xlate(1) != 0)
		return 42;
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "dma";
	if (!strcmp(mode, "two"))
		return two(argc > 2 ? argv[2] : "a");
	if (!strcmp(mode, "bench"))
		return bench();
	unsigned bdf = argc > 2 ? (unsigned)atolx(argv[2]) : ASSIGN_EDU;
	int pid = getpid();
	volatile uint8_t *bar;
	if (!strcmp(mode, "release")) {
		if ((bar = assign(bdf)) == MAP_FAILED)
			return 1;
		if (release() != 0 || release() == 0)
			return 2;
		printf("edudma: pid %d assigned and released the edu\n", pid);
		return 0;
	}
	uint64_t *src = mmap(PAGE_SIZE), *dst = mmap(PAGE_SIZE);
	if (src == MAP_FAILED || dst == MAP_FAILED)
		return 3;
	if ((bar = assign(bdf)) == MAP_FAILED)
		return 1;
	if ((rd32(0) & 0xFF) != 0xED)
		return 4;                       /* the BAR is the edu's */
	if (assign(bdf) != MAP_FAILED)
		return 5;                       /* one owner */
	if (!strcmp(mode, "hold")) {
		printf("edudma: pid %d owns the edu, exits without release\n", pid);
		return 0;
	}
	uint64_t *late = mmap(PAGE_SIZE);      /* mapped after assign: mirrored too */
	if (late == MAP_FAILED)
		return 6;
	for (int i = 0; i < LEN / 8; i++)
		src[i] = 0xED00000000000000ULL | (uint64_t)pid << 32 | i;
	if (dma(bar, iova_of(src), EDU_BUF, LEN, false))
		return 7;
	if (!strcmp(mode, "dma")) {
		if (dma(bar, EDU_BUF, iova_of(dst), LEN, true) || dma(bar, EDU_BUF, iova_of(late), LEN, true))
			return 8;
		for (int i = 0; i < LEN / 8; i++)
			if (dst[i] != src[i] || late[i] != src[i])
				return 9;
		printf("edudma: pid %d: %d bytes DMAed to IOVA 0x%lx and 0x%lx (%p, %p) from ring 3, data ok\n",
		       pid, LEN, iova_of(dst), iova_of(late), (void *)dst, (void *)late);
		return 0;
	}
	if (!strcmp(mode, "fault")) {
		if (dma(bar, EDU_BUF, FAULT_IOVA, LEN, true))
			return 10;
		printf("edudma: pid %d: DMA to unmapped IOVA 0x%llx done\n", pid, FAULT_IOVA);
		return 0;
	}
	if (!strcmp(mode, "munmap")) {
		if (dma(bar, EDU_BUF, iova_of(dst), LEN, true))
			return 11;
		if (dst[7] != src[7])
			return 12;
		if (munmap(dst, PAGE_SIZE) != 0)
			return 13;
		if (dma(bar, EDU_BUF, iova_of(dst), LEN, true))
			return 14;
		printf("edudma: pid %d: DMA to IOVA 0x%lx (%p) after munmap done\n", pid, iova_of(dst),
		       (void *)dst);
		return 0;
	}
	if (!strcmp(mode, "churn")) {           /* under `iommu noflush`: held-back frames */
		for (int i = 0; i < CHURN_PAGES; i++) {
			uint64_t *p = mmap(PAGE_SIZE);
			if (p == MAP_FAILED)
				return 20;
			p[0] = i;
			if (munmap(p, PAGE_SIZE) != 0)
				return 21;
		}
		printf("edudma: pid %d: %d device-visible pages mapped and unmapped\n", pid, CHURN_PAGES);
		return 0;
	}
	if (!strcmp(mode, "noflush")) {
		if (dma(bar, EDU_BUF, iova_of(dst), LEN, true))
			return 15;
		if (dst[7] != src[7])
			return 16;
		if (munmap(dst, PAGE_SIZE) != 0)
			return 17;
		for (int i = 0; i < LEN / 8; i++)
			src[i] = STALE_DATA | (uint64_t)pid << 32 | i;
		if (dma(bar, iova_of(src), EDU_BUF, LEN, false) ||
		    dma(bar, EDU_BUF, iova_of(dst), LEN, true))
			return 18;
		printf("edudma: pid %d: DMA to IOVA 0x%lx (%p) after munmap without IOTLB flush done\n",
		       pid, iova_of(dst), (void *)dst);
		return 0;
	}
	return 19;
}
