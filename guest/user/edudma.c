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
 *   hold    assign and exit without release (exit must release)
 *   release assign, release, exit
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

static long hex(const char *s)
{
	long v = 0;
	for (; *s; s++)
		v = v * 16 + (*s <= '9' ? *s - '0' : (*s | 0x20) - 'a' + 10);
	return v;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "dma";
	unsigned bdf = argc > 2 ? (unsigned)hex(argv[2]) : ASSIGN_EDU;
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
	return 19;
}
