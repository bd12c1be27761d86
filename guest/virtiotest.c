/*
 * Self-tests of the virtio drivers, on every device of each kind found
 * (PCI and MMIO alike).  Skipped when there is none.  user-vblk: a process
 * owns a virtio-blk PCI device through the IOMMU (user/vblk.c).
 */
#include "selftest.h"
#include "virtio.h"
#include "iommu.h"
#include "proc.h"
#include "lib.h"
#include "mm.h"
#include "timer.h"
#include "vm.h"
#include "x86.h"

/* ---- block --------------------------------------------------------------- */

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
		b[n++] = (struct vbuf){ virt_to_phys(pages[i]), len, type != VIRTIO_BLK_T_OUT };
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

	if ((err = blk_req(d, VIRTIO_BLK_T_IN, first, blk_save, BLK_PAGES, BLK_SECTORS * 512)))
		return FAIL("%s: reading the original sectors: %s", d->where, err);
	if (d->features & VIRTIO_BLK_F_RO)
		return SKIP("%s: read-only device (read of %d sectors worked)", d->where, BLK_SECTORS);

	uint64_t seed = rdtsc();
	fill_pattern(seed, first);
	uint64_t sum_w = checksum(blk_w);
	if ((err = blk_req(d, VIRTIO_BLK_T_OUT, first, blk_w, BLK_PAGES, BLK_SECTORS * 512)))
		return FAIL("%s: write: %s", d->where, err);
	if (flush && (err = blk_req(d, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0)))
		return FAIL("%s: flush: %s", d->where, err);
	for (int i = 0; i < BLK_PAGES; i++)
		blk_r[i][0] = blk_r[i][511] = 0;
	if ((err = blk_req(d, VIRTIO_BLK_T_IN, first, blk_r, BLK_PAGES, BLK_SECTORS * 512)))
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
	if ((err = blk_req(d, VIRTIO_BLK_T_OUT, first, blk_save, BLK_PAGES, BLK_SECTORS * 512)) ||
	    (flush && (err = blk_req(d, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0))))
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

/* ---- a process owns the device (user/vblk.c): needs --iommu vtd ------------------ */

#define FAULT_IOVA      0x0F000000ULL   /* user/vblk.c has the same */

/* vblk MODE on this core: its exit status (-1000: it did not start); the
 * process is left for the caller to look at and free. */
static int run_vblk(const char *mode, struct proc **out)
{
	const char *err;
	char *argv[] = { "vblk", (char *)mode };
	struct proc *p = proc_create("vblk", 2, argv, &err);
	if (!p) {
		FAIL("vblk: %s", err);
		return -1000;
	}
	int st = proc_run(p);
	proc_report(p, st);
	*out = p;
	return st;
}

/* After a run: the device reset (status 0), the kernel's again, its context
 * entry the pass-through one (domain 1); at assign it was TT=0, domain pid. */
static const char *vblk_after(struct virtio_dev *d, struct proc *p, const char *mode)
{
	struct pci_dev *pd = d->pci;
	uint64_t *e = iommu.ctx[pd->bus] + 2 * (pd->dev << 3 | pd->fn);
	unsigned tt = (p->assigned_ctx[0] >> 2) & 3, did = (p->assigned_ctx[1] >> 8) & 0xFFFF;
	if (!(p->assigned_ctx[0] & 1) || tt != TT_UNTRANSLATED || did != (unsigned)p->pid)
		return FAIL("vblk %s: context entry at assign 0x%lx:%lx: TT %u domain %u, want TT 0 "
			    "domain %d", mode, p->assigned_ctx[1], p->assigned_ctx[0], tt, did, p->pid);
	if (p->dev_owned || d->owner_pid)
		return FAIL("vblk %s: the device is still owned after exit", mode);
	if (virtio_status(d))
		return FAIL("vblk %s: device status 0x%x after exit, want 0 (reset)", mode,
			    virtio_status(d));
	tt = (e[0] >> 2) & 3;
	did = (e[1] >> 8) & 0xFFFF;
	if (!(e[0] & 1) || did != 1 || (ECAP_PT(iommu.ecap) ? tt != TT_PASSTHROUGH : tt != TT_UNTRANSLATED))
		return FAIL("vblk %s: context entry 0x%lx:%lx after exit is not pass-through", mode,
			    e[1], e[0]);
	return NULL;
}

static const char *test_user_vblk(void)
{
	struct virtio_dev *d = NULL;
	for (int i = 0; (d = virtio_get(VIRTIO_ID_BLOCK, i)); i++)
		if (d->transport == VIRTIO_PCI && d->pci->device == 0x1042 && !d->err)
			break;
	if (!d)
		return SKIP("no modern virtio-blk PCI device (1af4:1042)");
	const char *err = iommu_probe();
	if (err)
		return SKIP("no IOMMU: %s", err);
	if ((err = iommu_enable()))
		return FAIL("enabling translation: %s", err);
	if (!iommu_covers(d->pci->bus, d->pci->dev, d->pci->fn))
		return SKIP("%s is not in the DRHD's device scope", d->where);
	long before = frames_available();

	/* Write, flush, read back, restore, from ring 3; release. */
	struct proc *p;
	int st = run_vblk("rw", &p);
	if (st == -1000)
		return st_why;
	err = st ? FAIL("vblk rw: exit status %d (a check in user/vblk.c)", st) : vblk_after(d, p, "rw");
	proc_free(p);
	if (err)
		return err;

	/* A read into an IOVA it never mapped: fails, and the IOMMU records it. */
	unsigned nf = iommu.nfaults;
	iommu.quiet = true;
	st = run_vblk("fault", &p);
	if (st == -1000) {
		iommu.quiet = false;
		return st_why;
	}
	uint64_t end = tsc_deadline_us(500000);
	while (iommu.nfaults == nf && !tsc_passed(end))
		udelay(20);
	iommu.quiet = false;
	err = st ? FAIL("vblk fault: exit status %d (a check in user/vblk.c)", st) :
	      vblk_after(d, p, "fault");
	proc_free(p);
	if (err)
		return err;
	if (iommu.nfaults == nf)
		return FAIL("no DMAR fault recorded for the device's DMA to 0x%llx", FAULT_IOVA);
	kprintf("user-vblk: ");
	iommu_print_faults();
	bool seen = false;
	for (unsigned i = nf; i < iommu.nfaults; i++) {
		const struct iommu_fault *f = &iommu.faults[i % IOMMU_FAULT_LOG];
		seen |= f->sid == pci_sid(d->pci) && f->addr == FAULT_IOVA;
	}
	if (!seen)
		return FAIL("no fault by %s at 0x%llx among the %u recorded", d->where, FAULT_IOVA,
			    iommu.nfaults - nf);
	if ((err = frames_returned(before)))
		return err;

	/* The kernel's driver has the device again: it sets it up anew. */
	if ((err = blk_test_one(d))) {
		char why[sizeof(st_why)];
		strlcpy(why, err, sizeof(why));
		return FAIL("the kernel's driver after the process: %s", why);
	}
	return NULL;
}

const struct selftest virtio_tests[] = {
	{ "virtio-blk", test_virtio_blk, true },
	{ "virtio-console", test_virtio_console, true },
	{ "virtio-rng", test_virtio_rng, true },
	{ "user-vblk", test_user_vblk, false },
};
const size_t virtio_ntests = ARRAY_SIZE(virtio_tests);
