/*
 * virtio-blk benchmarks through the polled driver (virtio.c), one request
 * in flight, timed with the TSC:
 *
 *   bench virtio-blk-rand4k   4 KiB reads at random 4 KiB-aligned offsets
 *     BENCH virtio-blk-rand4k iterations=N cycles_per_op=X ns_per_op=Y iops=Z
 *   bench virtio-blk-seq1m    1 MiB reads, one after the other, wrapping at the end
 *     BENCH virtio-blk-seq1m iterations=N cycles_per_op=X ns_per_op=Y bytes_per_op=B MBps=Z
 *
 * The device is the first virtio-blk function on PCI (else the first one
 * found).  Each request is header + one data buffer + status byte; the
 * data lands in a 1 MiB buffer of this file's .bss (physically contiguous,
 * as the kernel is).  Completion is polled on the used ring with no delay
 * between looks, so the figure is the device's latency, not the driver's
 * back-off (virtq_wait).  Without a device: `BENCH name skipped: reason`.
 */
#include "virtio.h"
#include "lib.h"
#include "mm.h"
#include "timer.h"
#include "vm.h"
#include "x86.h"

#define SECTOR          512
#define RAND_BYTES      4096
#define RAND_OPS        2000
#define RAND_WARMUP     50
#define SEQ_BYTES       (1u << 20)
#define SEQ_OPS         256
#define SEQ_WARMUP      4
#define REQ_TIMEOUT_US  10000000

bool bench_virtio_blk_rand4k(void);
bool bench_virtio_blk_seq1m(void);

static uint8_t buf[SEQ_BYTES] __attribute__((aligned(PAGE_SIZE)));

static struct virtio_dev *blk_device(const char **why)
{
	struct virtio_dev *d, *pick = NULL;
	for (int i = 0; (d = virtio_get(VIRTIO_ID_BLOCK, i)); i++)
		if (!pick || (d->transport == VIRTIO_PCI && pick->transport != VIRTIO_PCI))
			pick = d;
	if (!pick) {
		*why = "no virtio-blk device";
		return NULL;
	}
	const char *err = virtio_init(pick, VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_RO |
				      VIRTIO_BLK_F_BLK_SIZE, 1);
	if (err) {
		*why = err;
		return NULL;
	}
	return pick;
}

/* One read of `bytes` at `sector` into buf, polled to completion. */
static const char *blk_read(struct virtio_dev *d, uint64_t sector, uint32_t bytes)
{
	static char why[64];
	volatile uint8_t *hdr = d->scratch;
	*(volatile uint32_t *)hdr = VIRTIO_BLK_T_IN;
	*(volatile uint32_t *)(hdr + 4) = 0;
	*(volatile uint64_t *)(hdr + 8) = sector;
	hdr[16] = 0xFF;
	struct vbuf b[3] = {
		{ virt_to_phys(d->scratch), 16, false },
		{ virt_to_phys(buf), bytes, true },
		{ virt_to_phys(d->scratch) + 16, 1, true },
	};
	const char *err = virtq_add(d, 0, b, 3);
	if (err)
		return err;
	virtq_kick(d, 0);
	uint64_t end = tsc_deadline_us(REQ_TIMEOUT_US);
	uint32_t len = 0;
	for (unsigned i = 0; !virtq_done(d, 0, &len); i++) {
		pause();
		if ((i & 1023) == 1023 && tsc_passed(end))
			return (virtio_status(d) & VIRTIO_STATUS_NEEDS_RESET) ?
				"device set NEEDS_RESET" : "request did not complete in time";
	}
	if (hdr[16] != 0) {
		ksnprintf(why, sizeof(why), "read at sector %lu: status %u", sector, hdr[16]);
		return why;
	}
	if (len != bytes + 1) {
		ksnprintf(why, sizeof(why), "read at sector %lu: %u bytes back, not %u", sector,
			  len, bytes + 1);
		return why;
	}
	return NULL;
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void report(const char *name, unsigned n, uint64_t cycles, uint32_t bytes)
{
	uint64_t ns = tsc_to_ns(cycles);
	kprintf("BENCH %s iterations=%u cycles_per_op=%lu ns_per_op=%lu", name, n, cycles / n,
		ns / n);
	if (bytes == RAND_BYTES)
		kprintf(" iops=%lu\n", ns ? (uint64_t)n * 1000000000UL / ns : 0);
	else
		kprintf(" bytes_per_op=%u MBps=%lu\n", bytes,
			ns ? (uint64_t)bytes * n * 1000 / ns : 0);
}

/* n reads of `bytes` (warm-up reads first, untimed): random or sequential offsets. */
static bool run(const char *name, uint32_t bytes, unsigned warmup, unsigned n, bool random)
{
	const char *err = NULL;
	struct virtio_dev *d = blk_device(&err);
	if (!d) {
		kprintf("BENCH %s skipped: %s\n", name, err);
		return true;
	}
	uint64_t per = bytes / SECTOR, blocks = virtio_cfg64(d, 0) / per;
	if (!blocks) {
		kprintf("BENCH %s skipped: %s: %lu sectors, less than one %u-byte read\n", name,
			d->where, virtio_cfg64(d, 0), bytes);
		return true;
	}
	uint64_t seed = 0x9E3779B97F4A7C15ULL, next = 0, t0 = 0;
	for (unsigned i = 0; i < warmup + n && !err; i++) {
		if (i == warmup)
			t0 = rdtsc();
		uint64_t block = random ? xorshift(&seed) % blocks : next++ % blocks;
		err = blk_read(d, block * per, bytes);
	}
	uint64_t t1 = rdtsc();
	if (err) {
		kprintf("BENCH %s: %s: %s\n", name, d->where, err);
		return false;
	}
	report(name, n, t1 - t0, bytes);
	return true;
}

bool bench_virtio_blk_rand4k(void)
{
	return run("virtio-blk-rand4k", RAND_BYTES, RAND_WARMUP, RAND_OPS, true);
}

bool bench_virtio_blk_seq1m(void)
{
	return run("virtio-blk-seq1m", SEQ_BYTES, SEQ_WARMUP, SEQ_OPS, false);
}
