/*
 * Self-tests of the I/OAT DMA engine (ioat.c), on the first function found.
 *
 * Buffers: 4 MiB + 2 pages of contiguous frames taken once (frames_contig):
 * SRC at the start, DST 2 MiB + 1 page later; sizes up to 2 MiB.  Filling
 * and comparing use REP STOSQ / REPE CMPSQ (one emulated instruction each)
 * plus a distinct word every 512 bytes, so a copy from the wrong offset
 * shows.
 */
#include "selftest.h"
#include "ioat.h"
#include "iommu.h"
#include "lib.h"
#include "mm.h"
#include "proc.h"
#include "timer.h"
#include "vm.h"
#include "x86.h"

#define MiB             (1ULL << 20)
#define BUF_PAGES       (2 * (2 * MiB / PAGE_SIZE + 1))
#define WAIT_US         2000000
#define OUTSIDE         0x7F0000000000ULL       /* no RAM (and inside 48 bits) */
#define DID_IOAT        6
#define IOVA_DST        0x0B000000ULL           /* translated test: mapped elsewhere */
#define IOVA_HOLE       0x0B100000ULL           /* never mapped */

static uint64_t src_pa, dst_pa;
static uint8_t *src, *dst;
static struct ioat_chan *c;
static uint64_t token;

static const char *need_ioat(void)
{
	const char *err = ioat_probe();
	if (err)
		return SKIP("%s", err);
	c = &ioat_chans[0];
	if (c->owner_pid)
		return SKIP("%02x:%02x.%x is owned by pid %d", c->pci->bus, c->pci->dev, c->pci->fn,
			    c->owner_pid);
	if (!src_pa) {
		uint64_t pa = frames_contig(BUF_PAGES);
		if (!pa)
			return FAIL("no %llu contiguous frames for the buffers", BUF_PAGES);
		src_pa = pa;
		dst_pa = pa + BUF_PAGES / 2 * PAGE_SIZE;
		src = PHYS_TO_VIRT(src_pa);
		dst = PHYS_TO_VIRT(dst_pa);
	}
	return NULL;
}

/* n bytes of a new pattern at SRC, and a different one over DST (n + 64 bytes). */
static void pattern(uint64_t n)
{
	token = rdtsc() | 1;
	uint64_t words = (n + 7) / 8 + 8;
	mem_fill64(src, token, words);
	mem_fill64(dst, ~token, words);
	for (uint64_t i = 0; i < words; i += 64)
		((uint64_t *)src)[i] = token ^ i;
}

/* DST holds SRC's first n bytes and nothing was written past them. */
static bool copied(uint64_t off, uint64_t n)
{
	uint64_t words = n / 8;
	if (!mem_eq64(dst + off, src + off, words))
		return false;
	for (uint64_t i = words * 8; i < n; i++)
		if (dst[off + i] != src[off + i])
			return false;
	return dst[off + n] == (uint8_t)(~token >> 8 * ((off + n) % 8));
}

#define TRY(expr) do { const char *e_ = (expr); if (e_) { char t_[160]; strlcpy(t_, e_, sizeof(t_)); \
	return FAIL("%s: %s", #expr, t_); } } while (0)

static const char *run(uint64_t last, int want_state)
{
	ioat_issue(c);
	int st = ioat_wait(c, WAIT_US);
	if (st != want_state)
		return FAIL("CHANSTS state %d (CHANERR 0x%x), want %d", st, ioat_r32(c, IOAT_CHANERR),
			    want_state);
	if (want_state == CHANSTS_IDLE && *c->compl != (last | CHANSTS_IDLE))
		return FAIL("completion writeback 0x%lx, want 0x%lx", *c->compl, last | CHANSTS_IDLE);
	return NULL;
}

/* ---- identity ------------------------------------------------------------ */

static const char *test_ioat_id(void)
{
	const char *err = need_ioat();
	if (err)
		return err;
	for (int i = 0; i < ioat_nchans; i++) {
		struct ioat_chan *k = &ioat_chans[i];
		struct pci_dev *d = k->pci;
		if (pci_cfg_read32(d, 0x08) >> 8 != 0x088000)
			return FAIL("%02x.%x: class 0x%06x", d->dev, d->fn, pci_cfg_read32(d, 0x08) >> 8);
		if ((pci_cfg_read32(d, PCI_BAR0) & 0x7) != 0x4)
			return FAIL("%02x.%x: BAR0 is not 64-bit memory", d->dev, d->fn);
		if (!pci_find_cap(d, PCI_CAP_MSIX, 0) || !pci_find_cap(d, 0x10, 0))
			return FAIL("%02x.%x: no MSI-X or PCI Express capability", d->dev, d->fn);
		if (ioat_r8(k, IOAT_CHANCNT) != 1 || ioat_r8(k, IOAT_CBVER) != 0x33 || k->xfercap < 12)
			return FAIL("%02x.%x: CHANCNT %u CBVER 0x%x XFERCAP %u", d->dev, d->fn,
				    ioat_r8(k, IOAT_CHANCNT), ioat_r8(k, IOAT_CBVER), k->xfercap);
		if (d->fn == 0 && !(pci_cfg_read8(d, 0x0E) & 0x80) && ioat_nchans > 1)
			return FAIL("function 0 is not marked multi-function");
		if (!k->owner_pid)
			TRY(ioat_start(k, 0));
	}
	kprintf("ioat: %d functions at %02x:%02x, CBVER 0x%x, XFERCAP 2^%u, DMACAPABILITY 0x%x\n",
		ioat_nchans, c->pci->bus, c->pci->dev, ioat_r8(c, IOAT_CBVER), c->xfercap,
		ioat_r32(c, IOAT_DMACAPABILITY));
	return NULL;
}

/* ---- copies ---------------------------------------------------------------- */

static const char *test_ioat_copy(void)
{
	const char *err = need_ioat();
	if (err)
		return err;
	static const uint64_t sizes[] = { 1, 63, 4096, 65537, MiB, 2 * MiB };
	for (unsigned i = 0; i < ARRAY_SIZE(sizes); i++) {
		uint64_t n = sizes[i];
		TRY(ioat_start(c, CHANCTRL_RUN));
		pattern(n);
		uint64_t last = ioat_memcpy(c, src_pa, dst_pa, n, DESC_COMPL_WRITE);
		TRY(run(last, CHANSTS_IDLE));
		if (!copied(0, n))
			return FAIL("a %lu-byte copy (%u descriptors) is not right", n, c->head);
	}
	/* One chain of 17 descriptors of different sizes, one doorbell. */
	TRY(ioat_start(c, CHANCTRL_RUN));
	pattern(2 * MiB);
	uint64_t off = 0, last = 0;
	for (int k = 0; k < 17; k++) {
		uint64_t n = 1 + (k * 7919ULL) % 65536;
		last = ioat_put(c, n, k == 16 ? DESC_COMPL_WRITE : 0, src_pa + off, dst_pa + off);
		off += n;
	}
	TRY(run(last, CHANSTS_IDLE));
	if (!copied(0, off))
		return FAIL("a chain of 17 descriptors (%lu bytes) is not right", off);
	return NULL;
}

/* DMACOUNT moves while the channel works on what it had: appends are taken.
 * A chain of its own (not the ring): LONG copies of 1 MiB first, a second or
 * so of work even when the host runs the engine flat out, so the channel is
 * surely ACTIVE when the appends (4 KiB copies, linked after them) come. */
#define LONG            1000
#define APPENDS         8
static struct ioat_desc *chain;
static uint64_t chain_pa;

/* The chain from CHAINADDR (the channel just started); its last descriptor's address. */
static const char *long_chain(uint64_t *last)
{
	unsigned n = LONG + APPENDS;
	if (!chain_pa && !(chain_pa = frames_contig((n * sizeof(*chain) + PAGE_SIZE - 1) / PAGE_SIZE)))
		return FAIL("no contiguous frames for a chain of %u descriptors", n);
	chain = PHYS_TO_VIRT(chain_pa);
	for (unsigned k = 0; k < n; k++) {
		struct ioat_desc *d = &chain[k];
		bool append = k >= LONG;
		d->size = append ? 4096 : MiB;
		d->ctl = k == n - 1 ? DESC_COMPL_WRITE : 0;
		d->src = src_pa + (append ? (k - LONG) * 4096 : 0);
		d->dst = dst_pa + (append ? (k - LONG) * 4096 : MiB);
		d->next = chain_pa + (k + 1) * sizeof(*d);
	}
	ioat_w32(c, IOAT_CHAINADDR, (uint32_t)chain_pa);
	ioat_w32(c, IOAT_CHAINADDR + 4, chain_pa >> 32);
	*last = chain_pa + (n - 1) * sizeof(*chain);
	return NULL;
}

/* The channel started on 2 MiB of pattern, the long chain at CHAINADDR and not
 * counted in yet: where the append and suspend tests begin. */
static const char *start_long_chain(uint64_t *last)
{
	const char *err = need_ioat();
	if (err)
		return err;
	TRY(ioat_start(c, CHANCTRL_RUN));
	pattern(2 * MiB);
	TRY(long_chain(last));
	return NULL;
}

static const char *chain_done(uint64_t last)
{
	if (ioat_wait(c, 20 * WAIT_US) != CHANSTS_IDLE)
		return FAIL("not IDLE at the end (CHANERR 0x%x)", ioat_r32(c, IOAT_CHANERR));
	if (*c->compl != (last | CHANSTS_IDLE))
		return FAIL("completion writeback 0x%lx, want 0x%lx", *c->compl, last | CHANSTS_IDLE);
	if (!mem_eq64(dst, src, APPENDS * 4096 / 8) || !mem_eq64(dst + MiB, src, MiB / 8))
		return FAIL("the copies are not right");
	return NULL;
}

static const char *test_ioat_append(void)
{
	uint64_t last;
	const char *err = start_long_chain(&last);
	if (err)
		return err;
	ioat_w16(c, IOAT_DMACOUNT, LONG);
	unsigned active = 0;
	for (unsigned k = 1; k <= APPENDS; k++) {
		if (CHANSTS_STATE(ioat_r64(c, IOAT_CHANSTS)) == CHANSTS_ACTIVE)
			active++;
		ioat_w16(c, IOAT_DMACOUNT, LONG + k);
	}
	TRY(chain_done(last));
	if (!active)
		return FAIL("the channel was not ACTIVE when DMACOUNT moved");
	kprintf("ioat-append: %u of %u DMACOUNT writes while ACTIVE\n", active, APPENDS);
	return NULL;
}

/* ---- interrupts ---------------------------------------------------------------- */

static const char *irq_test(int mode)
{
	const char *err = need_ioat();
	if (err)
		return err;
	if ((err = ioat_set_irq(mode))) {
		ioat_set_irq(0);
		return SKIP("%s", err);
	}
	TRY(ioat_start(c, CHANCTRL_RUN));
	pattern(4096);
	for (int k = 0; k < 3; k++) {
		unsigned before = c->irqs;
		uint64_t last = k ? ioat_memcpy(c, src_pa, dst_pa, 4096, DESC_INT_EN | DESC_COMPL_WRITE)
				  : ioat_put(c, 1, DESC_NULL | DESC_INT_EN | DESC_COMPL_WRITE, 0, 0);
		err = run(last, CHANSTS_IDLE);
		uint64_t end = tsc_deadline_us(500000);
		while (!err && c->irqs == before && !tsc_passed(end))
			udelay(20);
		if (!err && c->irqs == before)
			err = FAIL("descriptor %d completed without an interrupt", k);
		if (err)
			break;
	}
	bool intx_low = mode != 2 || !(ioat_r8(c, IOAT_INTRCTRL) & INTRCTRL_INT);
	ioat_set_irq(0);
	if (err)
		return err;
	if (!copied(0, 4096))
		return FAIL("data not copied");
	if (!intx_low)
		return FAIL("INTRCTRL.INT still set after the handler re-armed");
	return NULL;
}

static const char *test_ioat_msix(void) { return irq_test(1); }
static const char *test_ioat_intx(void) { return irq_test(2); }

/* ---- suspend, resume, reset ---------------------------------------------------------- */

static const char *test_ioat_suspend(void)
{
	uint64_t last;
	const char *err = start_long_chain(&last);
	if (err)
		return err;
	ioat_w16(c, IOAT_DMACOUNT, LONG + APPENDS);
	ioat_w8(c, IOAT_CHANCMD, CHANCMD_SUSPEND);
	uint64_t sts = ioat_r64(c, IOAT_CHANSTS);
	if (CHANSTS_STATE(sts) != CHANSTS_SUSPENDED)
		return FAIL("CHANSTS 0x%lx after SUSPEND", sts);
	uint64_t w = *c->compl;
	udelay(10000);
	if (*c->compl != w || ioat_r64(c, IOAT_CHANSTS) != sts)
		return FAIL("the channel moved while suspended");
	ioat_w8(c, IOAT_CHANCMD, CHANCMD_RESUME);
	TRY(chain_done(last));
	/* A reset while it copies: HALTED at once, and nothing written afterwards. */
	TRY(ioat_start(c, CHANCTRL_RUN));
	TRY(long_chain(&last));
	ioat_w16(c, IOAT_DMACOUNT, LONG);
	ioat_w8(c, IOAT_CHANCMD, CHANCMD_RESET);
	sts = ioat_r64(c, IOAT_CHANSTS);
	if (sts != CHANSTS_HALTED)
		return FAIL("CHANSTS 0x%lx after RESET, want 0x3", sts);
	for (uint64_t off = 0; off < MiB; off += 4096)
		*(volatile uint64_t *)(dst + MiB + off) = ~token;
	*c->compl = 0;
	udelay(10000);
	for (uint64_t off = 0; off < MiB; off += 4096)
		if (*(volatile uint64_t *)(dst + MiB + off) != ~token)
			return FAIL("written at +0x%lx after the reset", off);
	if (*c->compl)
		return FAIL("completion written after the reset");
	return NULL;
}

/* ---- errors -------------------------------------------------------------------------- */

enum { E_SRC, E_DST, E_LENGTH, E_OP, E_NEXT_ALIGN, E_NEXT_OUT, E_CHAIN, E_COMPLETION };
static const struct { const char *what; uint32_t chanerr; } errs[] = {
	[E_SRC] = { "source outside RAM", CHANERR_READ_DATA_ERR },
	[E_DST] = { "destination outside RAM", CHANERR_WRITE_DATA_ERR },
	[E_LENGTH] = { "size over 2^XFERCAP", CHANERR_LENGTH_ERR },
	[E_OP] = { "an XOR descriptor", CHANERR_CONTROL_ERR },
	[E_NEXT_ALIGN] = { "a misaligned next", CHANERR_NEXT_DESC_ALIGN_ERR },
	[E_NEXT_OUT] = { "next outside RAM", CHANERR_NEXT_ADDR_ERR },
	[E_CHAIN] = { "a misaligned CHAINADDR", CHANERR_CHAIN_ADDR_VALUE_ERR },
	[E_COMPLETION] = { "CHANCMP outside RAM", CHANERR_COMPLETION_ADDR_ERR },
};

static const char *test_ioat_errors(void)
{
	const char *err = need_ioat();
	if (err)
		return err;
	pattern(4096);
	for (unsigned e = 0; e < ARRAY_SIZE(errs); e++) {
		TRY(ioat_start(c, CHANCTRL_RUN));
		uint64_t ok = ioat_put(c, 64, DESC_COMPL_WRITE, src_pa, dst_pa);
		uint64_t s = src_pa, d = dst_pa + 64, n = 64;
		uint32_t ctl = DESC_COMPL_WRITE;
		struct ioat_desc *first = &c->ring[0];
		if (e == E_SRC)
			s = OUTSIDE;
		else if (e == E_DST)
			d = OUTSIDE;
		else if (e == E_LENGTH)
			n = (1ULL << c->xfercap) + 1;
		else if (e == E_OP)
			ctl |= 0x87u << DESC_OP_SHIFT;
		else if (e == E_NEXT_ALIGN)
			first->next += 8;
		else if (e == E_NEXT_OUT)
			first->next = OUTSIDE;
		else if (e == E_CHAIN)
			ioat_w32(c, IOAT_CHAINADDR, (uint32_t)c->ring_pa + 8);
		else if (e == E_COMPLETION)
			ioat_w32(c, IOAT_CHANCMP + 4, OUTSIDE >> 32);
		ioat_put(c, n, ctl, s, d);
		ioat_issue(c);
		int st = ioat_wait(c, WAIT_US);
		uint32_t chanerr = ioat_r32(c, IOAT_CHANERR);
		uint64_t done = e == E_CHAIN || e == E_COMPLETION ? 0 : ok;
		first->next = c->ring_pa + sizeof(struct ioat_desc);
		if (st != CHANSTS_HALTED || chanerr != errs[e].chanerr)
			return FAIL("%s: state %d CHANERR 0x%x, want HALTED and 0x%x", errs[e].what, st,
				    chanerr, errs[e].chanerr);
		if (ioat_r64(c, IOAT_CHANSTS) != (done | CHANSTS_HALTED) ||
		    (e != E_COMPLETION && *c->compl != (done | CHANSTS_HALTED)))
			return FAIL("%s: CHANSTS 0x%lx writeback 0x%lx, want 0x%lx", errs[e].what,
				    ioat_r64(c, IOAT_CHANSTS), *c->compl, done | CHANSTS_HALTED);
		if ((pci_cfg_read32(c->pci, IOAT_CHANERR_INT) & errs[e].chanerr) != errs[e].chanerr)
			return FAIL("%s: CHANERR_INT 0x%x", errs[e].what,
				    pci_cfg_read32(c->pci, IOAT_CHANERR_INT));
		ioat_w16(c, IOAT_DMACOUNT, c->head + 1);        /* no restart while CHANERR is set */
		if (CHANSTS_STATE(ioat_r64(c, IOAT_CHANSTS)) != CHANSTS_HALTED)
			return FAIL("%s: DMACOUNT restarted a channel in error", errs[e].what);
	}
	TRY(ioat_start(c, CHANCTRL_RUN));                      /* clears CHANERR: usable again */
	TRY(run(ioat_memcpy(c, src_pa, dst_pa, 4096, DESC_COMPL_WRITE), CHANSTS_IDLE));
	return copied(0, 4096) ? NULL : FAIL("no copy after the errors");
}

/* ---- behind VT-d ------------------------------------------------------------------------ */

static struct iodomain dom;

static const char *vtd_test(void)
{
	uint8_t devfn = c->pci->dev << 3 | c->pci->fn;
	uint64_t frame = dst_pa + MiB;
	TRY(iodomain_init(&dom, DID_IOAT, 0));
	TRY(iodomain_map(&dom, c->ring_pa, c->ring_pa, SL_R | SL_W));
	TRY(iodomain_map(&dom, c->compl_pa & ~0xFFFULL, c->compl_pa & ~0xFFFULL, SL_R | SL_W));
	TRY(iodomain_map(&dom, src_pa, src_pa, SL_R));
	TRY(iodomain_map(&dom, IOVA_DST, frame, SL_R | SL_W));
	TRY(iommu_set_context(c->pci->bus, devfn, TT_UNTRANSLATED, &dom, DID_IOAT));
	TRY(iommu_inv_iotlb(INV_DOMAIN, DID_IOAT, 0, 0));
	TRY(ioat_start(c, CHANCTRL_RUN));
	pattern(4096);
	TRY(run(ioat_memcpy(c, src_pa, IOVA_DST, 4096, DESC_COMPL_WRITE), CHANSTS_IDLE));
	if (!mem_eq64(dst + MiB, src, 4096 / 8))
		return FAIL("the copy to IOVA 0x%llx did not land in frame 0x%lx", IOVA_DST, frame);
	unsigned nf = iommu.nfaults;
	ioat_memcpy(c, src_pa, IOVA_HOLE, 64, DESC_COMPL_WRITE);
	ioat_issue(c);
	int st = ioat_wait(c, WAIT_US);
	if (st != CHANSTS_HALTED || ioat_r32(c, IOAT_CHANERR) != CHANERR_WRITE_DATA_ERR)
		return FAIL("DMA to unmapped IOVA 0x%llx: state %d CHANERR 0x%x", IOVA_HOLE, st,
			    ioat_r32(c, IOAT_CHANERR));
	uint64_t end = tsc_deadline_us(500000);
	while (iommu.nfaults == nf && !tsc_passed(end))
		udelay(20);
	for (unsigned i = nf; i < iommu.nfaults; i++) {
		const struct iommu_fault *f = &iommu.faults[i % IOMMU_FAULT_LOG];
		if (f->sid == pci_sid(c->pci) && f->addr == IOVA_HOLE && !f->read)
			return NULL;
	}
	return FAIL("no write fault by %02x:%02x.%x at 0x%llx among %u recorded", c->pci->bus,
		    c->pci->dev, c->pci->fn, IOVA_HOLE, iommu.nfaults - nf);
}

static const char *test_ioat_vtd(void)
{
	const char *err = need_ioat();
	if (err)
		return err;
	if ((err = iommu_probe()))
		return SKIP("no IOMMU: %s", err);
	if ((err = iommu_enable()))
		return FAIL("enabling translation: %s", err);
	if (!iommu_covers(c->pci->bus, c->pci->dev, c->pci->fn))
		return SKIP("not in the DRHD's device scope");
	bool quiet = iommu.quiet;
	iommu.quiet = true;
	err = vtd_test();
	iommu.quiet = quiet;
	const char *e2 = iommu_set_passthrough(c->pci->bus, c->pci->dev << 3 | c->pci->fn);
	if (!err && e2)
		err = FAIL("restoring pass-through: %s", e2);
	ioat_start(c, 0);
	return err;
}

const struct selftest ioat_tests[] = {
	{ "ioat-id", test_ioat_id, true },
	{ "ioat-copy", test_ioat_copy, true },
	{ "ioat-append", test_ioat_append, true },
	{ "ioat-msix", test_ioat_msix, true },
	{ "ioat-intx", test_ioat_intx, true },
	{ "ioat-suspend", test_ioat_suspend, true },
	{ "ioat-errors", test_ioat_errors, true },
	{ "ioat-vtd", test_ioat_vtd, true },
};
const size_t ioat_ntests = ARRAY_SIZE(ioat_tests);
