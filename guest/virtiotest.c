/*
 * Self-tests of the virtio drivers, on every device of each kind found
 * (PCI and MMIO alike).  Skipped when there is none.
 */
#include "selftest.h"
#include "virtio.h"
#include "lib.h"
#include "mm.h"
#include "timer.h"
#include "vm.h"
#include "x86.h"

/* ---- block --------------------------------------------------------------- */

#define BLK_T_IN        0
#define BLK_T_OUT       1
#define BLK_T_FLUSH     4
#define BLK_T_GET_ID    8

#define BLK_SECTORS     64
#define BLK_PAGES       (BLK_SECTORS * 512 / PAGE_SIZE)
#define BLK_WORDS       (BLK_SECTORS * 64)

static uint64_t *blk_save[BLK_PAGES], *blk_w[BLK_PAGES], *blk_r[BLK_PAGES];

static const char *blk_pages(void)
{
	for (int i = 0; i < BLK_PAGES; i++)
		if ((!blk_save[i] && !(blk_save[i] = page_alloc())) ||
		    (!blk_w[i] && !(blk_w[i] = page_alloc())) ||
		    (!blk_r[i] && !(blk_r[i] = page_alloc())))
			return "out of pool pages";
	return NULL;
}

/* One request: header, the pages (if any), status byte. */
static const char *blk_req(struct virtio_dev *d, uint32_t type, uint64_t sector, uint64_t **pages,
			   int npages, uint32_t bytes)
{
	static char why[64];
	volatile uint8_t *hdr = d->scratch;
	*(volatile uint32_t *)hdr = type;
	*(volatile uint32_t *)(hdr + 4) = 0;
	*(volatile uint64_t *)(hdr + 8) = sector;
	hdr[16] = 0xFF;
	struct vbuf b[BLK_PAGES + 2];
	int n = 0;
	b[n++] = (struct vbuf){ virt_to_phys(d->scratch), 16, false };
	for (int i = 0; i < npages; i++) {
		uint32_t len = MIN(bytes, PAGE_SIZE);
		b[n++] = (struct vbuf){ virt_to_phys(pages[i]), len, type != BLK_T_OUT };
		bytes -= len;
	}
	b[n++] = (struct vbuf){ virt_to_phys(d->scratch) + 16, 1, true };
	const char *err = virtq_xfer(d, 0, b, n, 5000000, NULL);
	if (err)
		return err;
	if (hdr[16] != 0) {
		ksnprintf(why, sizeof(why), "request type %u: status %u", type, hdr[16]);
		return why;
	}
	return NULL;
}

/* Sector s of the pattern: a per-sector word, with its number at both ends. */
static void fill_pattern(uint64_t seed, uint64_t first)
{
	for (int s = 0; s < BLK_SECTORS; s++) {
		uint64_t *p = blk_w[s / 8] + 64 * (s % 8);
		uint64_t v = (seed + s) * 0x9E3779B97F4A7C15ULL;
		mem_fill64(p, v, 64);
		p[0] = seed ^ (first + s);
		p[63] = ~seed ^ (first + s);
	}
}

static uint64_t checksum(uint64_t **pages)
{
	uint64_t sum = 0;
	for (int i = 0; i < BLK_PAGES; i++)
		for (int w = 0; w < 512; w++)
			sum = ((sum << 7) | (sum >> 57)) ^ pages[i][w];
	return sum;
}

static const char *blk_test_one(struct virtio_dev *d)
{
	const char *err = virtio_init(d, VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_RO | VIRTIO_BLK_F_BLK_SIZE, 1);
	if (err)
		return FAIL("%s: %s", d->where, err);
	uint64_t cap = virtio_cfg64(d, 0);
	if (cap < BLK_SECTORS)
		return SKIP("%s: capacity %lu sectors, need %d", d->where, cap, BLK_SECTORS);
	if ((err = blk_pages()))
		return FAIL("%s", err);
	uint64_t first = (cap / 2) & ~7ULL;
	bool flush = d->features & VIRTIO_BLK_F_FLUSH;

	if ((err = blk_req(d, BLK_T_IN, first, blk_save, BLK_PAGES, BLK_SECTORS * 512)))
		return FAIL("%s: reading the original sectors: %s", d->where, err);
	if (d->features & VIRTIO_BLK_F_RO)
		return SKIP("%s: read-only device (read of %d sectors worked)", d->where, BLK_SECTORS);

	uint64_t seed = rdtsc();
	fill_pattern(seed, first);
	uint64_t sum_w = checksum(blk_w);
	if ((err = blk_req(d, BLK_T_OUT, first, blk_w, BLK_PAGES, BLK_SECTORS * 512)))
		return FAIL("%s: write: %s", d->where, err);
	if (flush && (err = blk_req(d, BLK_T_FLUSH, 0, NULL, 0, 0)))
		return FAIL("%s: flush: %s", d->where, err);
	for (int i = 0; i < BLK_PAGES; i++)
		blk_r[i][0] = blk_r[i][511] = 0;
	if ((err = blk_req(d, BLK_T_IN, first, blk_r, BLK_PAGES, BLK_SECTORS * 512)))
		return FAIL("%s: read back: %s", d->where, err);
	uint64_t sum_r = checksum(blk_r);
	const char *bad = NULL;
	if (sum_r != sum_w) {
		for (int s = 0; s < BLK_SECTORS && !bad; s++)
			if (!mem_eq64(blk_r[s / 8] + 64 * (s % 8), blk_w[s / 8] + 64 * (s % 8), 64))
				bad = FAIL("%s: checksum 0x%lx, wrote 0x%lx; first bad sector %lu", d->where,
					   sum_r, sum_w, first + s);
		if (!bad)
			bad = FAIL("%s: checksum 0x%lx, wrote 0x%lx", d->where, sum_r, sum_w);
	}
	/* Put the original data back. */
	if ((err = blk_req(d, BLK_T_OUT, first, blk_save, BLK_PAGES, BLK_SECTORS * 512)) ||
	    (flush && (err = blk_req(d, BLK_T_FLUSH, 0, NULL, 0, 0))))
		return bad ? bad : FAIL("%s: restoring the original sectors: %s", d->where, err);
	if (bad)
		return bad;
	kprintf("virtio-blk %s: %lu sectors; wrote, %sread back %d sectors at %lu, checksum 0x%016lx\n",
		d->where, cap, flush ? "flushed, " : "(no FLUSH feature) ", BLK_SECTORS, first, sum_r);
	return NULL;
}

static const char *for_each(uint32_t type, const char *(*fn)(struct virtio_dev *))
{
	int ndev = 0, nskip = 0;
	struct virtio_dev *d;
	const char *err = NULL;
	char skip_why[160] = "", fail_why[160] = "";
	while ((d = virtio_get(type, ndev))) {
		ndev++;
		st_skipped = false;
		const char *e = fn(d);
		if (e && st_skipped) {
			if (!nskip++)
				strlcpy(skip_why, e, sizeof(skip_why));
			kprintf("  skipped %s\n", e);
		} else if (e && !err) {
			strlcpy(fail_why, e, sizeof(fail_why));
			err = fail_why;
		}
	}
	st_skipped = false;
	if (!ndev)
		return SKIP("no virtio %s device", virtio_type_name(type));
	if (err)
		return FAIL("%s", err);
	if (nskip == ndev)
		return SKIP("%s", skip_why);
	return NULL;
}

static const char *test_virtio_blk(void)
{
	return for_each(VIRTIO_ID_BLOCK, blk_test_one);
}

/* ---- console ----------------------------------------------------------------- */

#define CON_RX_LEN 256

static const char *con_test_one(struct virtio_dev *d)
{
	const char *err = virtio_init(d, 0, 2);          /* no MULTIPORT: port 0 only */
	if (err)
		return FAIL("%s: %s", d->where, err);
	char *buf = d->scratch;                         /* tx at 0, rx at 2048 */
	char *rx = buf + 2048;
	struct vbuf rxb = { virt_to_phys(rx), CON_RX_LEN, true };
	/* Drop anything that came in before; keep one receive buffer posted. */
	uint32_t len;
	while (virtq_done(d, 0, &len))
		;
	if (d->vq[0].avail_idx == d->vq[0].last_used) {
		if ((err = virtq_add(d, 0, &rxb, 1)))
			return FAIL("%s: posting rx: %s", d->where, err);
		virtq_kick(d, 0);
	}
	int n = ksnprintf(buf, 128, "virtio-console echo %08lx\n", rdtsc() & 0xFFFFFFFF);
	struct vbuf txb = { virt_to_phys(buf), n, false };
	if ((err = virtq_xfer(d, 1, &txb, 1, 2000000, NULL)))
		return FAIL("%s: transmit: %s", d->where, err);

	/* Collect the echo, if the other end loops back. */
	char got[128];
	int have = 0;
	uint64_t end = tsc_deadline_us(1000000);
	while (have < n && !tsc_passed(end)) {
		if (!virtq_done(d, 0, &len)) {
			udelay(200);
			continue;
		}
		len = MIN(len, (uint32_t)CON_RX_LEN);
		int take = MIN((int)len, (int)sizeof(got) - have);
		memcpy(got + have, rx, take);
		have += take;
		if ((err = virtq_add(d, 0, &rxb, 1)))
			return FAIL("%s: reposting rx: %s", d->where, err);
		virtq_kick(d, 0);
	}
	if (!have) {
		kprintf("virtio-console %s: sent %d bytes; no echo within 1 s (nothing looping back)\n",
			d->where, n);
		return NULL;
	}
	if (have < n || memcmp(got, buf, n))
		return FAIL("%s: echo differs: sent %d bytes, got %d", d->where, n, have);
	kprintf("virtio-console %s: sent %d bytes, echo matched\n", d->where, n);
	return NULL;
}

static const char *test_virtio_console(void)
{
	return for_each(VIRTIO_ID_CONSOLE, con_test_one);
}

/* ---- rng ------------------------------------------------------------------------ */

static const char *rng_test_one(struct virtio_dev *d)
{
	const char *err = virtio_init(d, 0, 1);
	if (err)
		return FAIL("%s: %s", d->where, err);
	uint8_t *a = d->scratch, *b = a + 64;
	uint32_t la = 0, lb = 0;
	mem_fill64(a, 0, 16);
	struct vbuf va = { virt_to_phys(a), 64, true }, vb = { virt_to_phys(b), 64, true };
	if ((err = virtq_xfer(d, 0, &va, 1, 2000000, &la)) ||
	    (err = virtq_xfer(d, 0, &vb, 1, 2000000, &lb)))
		return FAIL("%s: %s", d->where, err);
	if (!la || !lb || la > 64 || lb > 64)
		return FAIL("%s: device returned %u and %u bytes", d->where, la, lb);
	bool varied = false;
	for (uint32_t i = 1; i < la; i++)
		varied |= a[i] != a[0];
	if (!varied)
		return FAIL("%s: %u bytes all 0x%02x", d->where, la, a[0]);
	uint32_t m = MIN(la, lb);
	if (m >= 8 && !memcmp(a, b, m))
		return FAIL("%s: two reads returned the same %u bytes", d->where, m);
	kprintf("virtio-rng %s: %u + %u bytes, first %02x%02x%02x%02x...\n", d->where, la, lb, a[0],
		a[1], a[2], a[3]);
	return NULL;
}

static const char *test_virtio_rng(void)
{
	return for_each(VIRTIO_ID_RNG, rng_test_one);
}

const struct selftest virtio_tests[] = {
	{ "virtio-blk", test_virtio_blk, true },
	{ "virtio-console", test_virtio_console, true },
	{ "virtio-rng", test_virtio_rng, true },
};
const size_t virtio_ntests = ARRAY_SIZE(virtio_tests);
