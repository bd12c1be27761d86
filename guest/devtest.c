/*
 * Self-tests and benchmarks for the VT-d driver and the edu DMA device.
 *
 * The edu device is the DMA engine: "load" copies a source page into its
 * buffer (RAM -> device), "store" copies the buffer to a bus address
 * (device -> RAM).  Which physical page a store lands in shows what the
 * IOMMU translated it to.  Each test sets the edu device's context entry
 * itself and puts it back to pass-through at the end.
 *
 * IOVAs stay below 2^28 (edu's default DMA mask).  Pages come from the
 * pool once and are reused; only their first 64 bytes are touched.
 */
#include "selftest.h"
#include "edu.h"
#include "iommu.h"
#include "lib.h"
#include "mm.h"
#include "multiboot.h"
#include "smp.h"
#include "timer.h"
#include "vm.h"
#include "x86.h"

#define IOVA_BASE       0x0A000000UL
#define IOVA_SRC        (IOVA_BASE + 0x0000)
#define IOVA_P          (IOVA_BASE + 0x1000)
#define IOVA_Q          (IOVA_BASE + 0x2000)
#define IOVA_Q2         (IOVA_BASE + 0x3000)
#define IOVA_RO         (IOVA_BASE + 0x4000)
#define IOVA_BATCH      (IOVA_BASE + 0x100000)

#define DID_PT          1       /* pass-through / identity (iommu.c) */
#define DID_XLATE       2
#define DID_3LEVEL      3
#define DID_EPT         4       /* the Akaros-style process domain */
#define DID_OTHER       9       /* exists only to be invalidated */

#define HEAD_WORDS      8       /* bytes compared per check: 64 */
#define HEAD_BYTES      (HEAD_WORDS * 8)

enum { PG_SRC, PG_A, PG_B, PG_C, PG_D, PG_RO, PG_BIG, NPAGES };
static uint64_t *pg[NPAGES];
static uint64_t token;

static struct iodomain dom_x, dom_3, dom_ept;

static const char *setup_pages(void)
{
	for (int i = 0; i < NPAGES; i++)
		if (!pg[i] && !(pg[i] = page_alloc()))
			return "out of pool pages";
	return NULL;
}

static uint64_t pa_of(int i)
{
	return virt_to_phys(pg[i]);
}

/* A fresh token in the source page (so an old run's data never matches). */
static void new_token(void)
{
	token = rdtsc() | 1;
	for (int i = 0; i < HEAD_WORDS; i++)
		pg[PG_SRC][i] = token ^ (0x9E3779B97F4A7C15ULL * (i + 1));
}

static bool has_token(int page)
{
	return mem_eq64(pg[page], pg[PG_SRC], HEAD_WORDS);
}

static void clear_heads(void)
{
	for (int p = PG_A; p <= PG_RO; p++)
		mem_fill64(pg[p], 0, HEAD_WORDS);
}

static const char *which_page(void)
{
	static const char *const names[] = { "src", "A", "B", "C", "D", "RO" };
	static char buf[32];
	int n = 0;
	buf[0] = 0;
	for (int p = PG_A; p <= PG_RO; p++)
		if (has_token(p))
			n += ksnprintf(buf + n, sizeof(buf) - n, "%s%s", n ? "+" : "", names[p]);
	return n ? buf : "none";
}

static const char *load(uint64_t src)
{
	return edu_dma(src, EDU_BUF_ADDR, HEAD_BYTES, EDU_DMA_TO_DEV, EDU_POLL);
}

static const char *store(uint64_t dst)
{
	return edu_dma(EDU_BUF_ADDR, dst, HEAD_BYTES, EDU_DMA_TO_RAM, EDU_POLL);
}

/* ---- preconditions ------------------------------------------------------ */

static const char *need_iommu(void)
{
	const char *err = iommu_probe();
	if (err)
		return SKIP("no IOMMU: %s", err);
	if ((err = iommu_enable()))
		return FAIL("enabling translation: %s", err);
	if ((err = setup_pages()))
		return FAIL("%s", err);
	return NULL;
}

static const char *need_edu(void)
{
	const char *err = edu_probe();
	if (err)
		return SKIP("%s", err);
	if ((err = setup_pages()))
		return FAIL("%s", err);
	return NULL;
}

static const char *need_iommu_edu(void)
{
	const char *err = edu_probe();
	if (err)
		return SKIP("%s", err);
	if ((err = need_iommu()))
		return err;
	struct pci_dev *d = edu.pci;
	if (!iommu_covers(d->bus, d->dev, d->fn))
		return SKIP("edu %02x:%02x.%x is not in the DRHD's device scope", d->bus, d->dev, d->fn);
	return NULL;
}

static uint8_t edu_devfn(void)
{
	return edu.pci->dev << 3 | edu.pci->fn;
}

static const char *edu_ctx(int tt, struct iodomain *d)
{
	if (tt == TT_PASSTHROUGH)
		return iommu_set_passthrough(edu.pci->bus, edu_devfn());
	return iommu_set_context(edu.pci->bus, edu_devfn(), tt, d, d->did);
}

/* Tests leave the edu device passing through and the queue as they found it. */
static const char *restore(const char *err)
{
	bool was = st_skipped;
	if (iommu.enabled && edu.present) {
		const char *e2 = edu_ctx(TT_PASSTHROUGH, NULL);
		if (e2 && !err)
			err = FAIL("restoring pass-through: %s", e2);
	}
	st_skipped = was;
	return err;
}

static const char *use_qi(bool on)
{
	const char *err = iommu_qi_set(on);
	if (err && on && !ECAP_QI(iommu.ecap))
		return SKIP("%s", err);
	return err ? FAIL("%s", err) : NULL;
}

/* Domain 2 (4-level or the default), with SRC readable and P/Q/Q2 mapped. */
static const char *xlate_domain(struct iodomain *d, uint16_t did, int levels)
{
	const char *err;
	if ((err = iodomain_init(d, did, levels)) ||
	    (err = iodomain_map(d, IOVA_SRC, pa_of(PG_SRC), SL_R)) ||
	    (err = iodomain_map(d, IOVA_P, pa_of(PG_A), SL_R | SL_W)) ||
	    (err = iodomain_map(d, IOVA_Q, pa_of(PG_C), SL_R | SL_W)) ||
	    (err = iodomain_map(d, IOVA_Q2, pa_of(PG_D), SL_R | SL_W)) ||
	    (err = iodomain_map(d, IOVA_RO, pa_of(PG_RO), SL_R)))
		return err;
	return iommu_inv_iotlb(INV_DOMAIN, did, 0, 0);
}

/* The reason may already live in st_why: copy it before formatting. */
#define TRY(expr) do { const char *e_ = (expr); if (e_) { char t_[160]; strlcpy(t_, e_, sizeof(t_)); \
	return restore(FAIL("%s: %s", #expr, t_)); } } while (0)
#define EXPECT(cond, ...) do { if (!(cond)) return restore(FAIL(__VA_ARGS__)); } while (0)

/* ---- edu ------------------------------------------------------------------ */

static const char *test_edu_id(void)
{
	const char *err = need_edu();
	if (err)
		return err;
	uint32_t x = (uint32_t)rdtsc();
	edu_write32(0x04, x);
	uint32_t l = edu_read32(0x04);
	if (l != ~x)
		return FAIL("liveness register: wrote 0x%x, read 0x%x (want 0x%x)", x, l, ~x);
	edu_write32(0x08, 6);
	uint64_t end = tsc_deadline_us(500000);
	while ((edu_read32(0x20) & 1) && !tsc_passed(end))
		udelay(50);
	uint32_t f = edu_read32(0x08);
	if (f != 720)
		return FAIL("factorial of 6 reads %u", f);
	kprintf("edu %02x:%02x.%x id 0x%08x (version %u.%u), BAR0 at 0x%lx\n", edu.pci->bus,
		edu.pci->dev, edu.pci->fn, edu.id, edu.id >> 24, (edu.id >> 16) & 0xFF,
		(uint64_t)edu.mmio);
	return NULL;
}

/* Full-buffer round trip through RAM at physical (or pass-through) addresses. */
static const char *test_edu_dma(void)
{
	const char *err = need_edu();
	if (err)
		return err;
	if (iommu.enabled && iommu_covers(edu.pci->bus, edu.pci->dev, edu.pci->fn))
		TRY(edu_ctx(TT_PASSTHROUGH, NULL));
	new_token();
	mem_fill64(pg[PG_BIG], token, 512);
	pg[PG_BIG][0] = token ^ 1;
	pg[PG_BIG][511] = token ^ 2;
	pg[PG_BIG][200] = ~token;
	mem_fill64(pg[PG_A], 0, 512);
	pg[PG_BIG][EDU_DMA_MAX / 8 - 1] = token ^ 2;
	TRY(edu_dma(pa_of(PG_BIG), EDU_BUF_ADDR, EDU_DMA_MAX, EDU_DMA_TO_DEV, EDU_POLL));
	TRY(edu_dma(EDU_BUF_ADDR, pa_of(PG_A), EDU_DMA_MAX, EDU_DMA_TO_RAM, EDU_POLL));
	EXPECT(mem_eq64(pg[PG_A], pg[PG_BIG], EDU_DMA_MAX / 8), "%d bytes came back different",
	       EDU_DMA_MAX);
	EXPECT(pg[PG_A][511] == 0, "the DMA wrote past its %d bytes", EDU_DMA_MAX);
	/* A partial transfer at an offset inside the buffer. */
	mem_fill64(pg[PG_B], 0, HEAD_WORDS);
	TRY(edu_dma(EDU_BUF_ADDR + 200 * 8, pa_of(PG_B), 8, EDU_DMA_TO_RAM, EDU_POLL));
	EXPECT(pg[PG_B][0] == ~token && pg[PG_B][1] == 0, "8-byte DMA from buffer offset 1600 wrong");
	return NULL;
}

static const char *irq_test(int mode)
{
	const char *err = need_edu();
	if (err)
		return err;
	if ((err = edu_set_irq(mode))) {
		edu_set_irq(0);
		return SKIP("%s", err);
	}
	if (iommu.enabled && iommu_covers(edu.pci->bus, edu.pci->dev, edu.pci->fn))
		TRY(edu_ctx(TT_PASSTHROUGH, NULL));
	/* A raised interrupt with a distinctive status... */
	unsigned before = edu.irqs;
	edu.irq_status = 0;
	edu_write32(0x60, 0x00A50000);
	uint64_t end = tsc_deadline_us(500000);
	while (edu.irqs == before && !tsc_passed(end))
		udelay(20);
	if (edu.irqs == before) {
		edu_write32(0x64, 0x00A50000);
		edu_set_irq(0);
		return FAIL("no interrupt after writing the raise register");
	}
	if (!(edu.irq_status & 0x00A50000)) {
		edu_set_irq(0);
		return FAIL("interrupt status 0x%x, raised 0x00a50000", edu.irq_status);
	}
	if (edu_read32(0x24)) {
		edu_set_irq(0);
		return FAIL("status 0x%x still set after the acknowledge", edu_read32(0x24));
	}
	/* ...then DMA completion by interrupt. */
	new_token();
	clear_heads();
	edu.irq_status = 0;
	err = edu_dma(pa_of(PG_SRC), EDU_BUF_ADDR, HEAD_BYTES, EDU_DMA_TO_DEV, EDU_IRQ);
	if (!err)
		err = edu_dma(EDU_BUF_ADDR, pa_of(PG_A), HEAD_BYTES, EDU_DMA_TO_RAM, EDU_IRQ);
	edu_set_irq(0);
	if (err)
		return FAIL("%s", err);
	if (!has_token(PG_A))
		return FAIL("DMA data did not arrive");
	return NULL;
}

static const char *test_edu_msi(void) { return irq_test(1); }
static const char *test_edu_intx(void) { return irq_test(2); }

/* ---- IOMMU: registers and invalidation ------------------------------------ */

static const char *test_iommu_enable(void)
{
	const char *err = need_iommu();
	if (err)
		return err;
	uint32_t g = iommu_read32(DMAR_GSTS);
	if (!(g & GCMD_TE) || !(g & GCMD_SRTP))
		return FAIL("GSTS 0x%x: TES/RTPS not set", g);
	if ((iommu_read64(DMAR_RTADDR) & ~0xFFFULL) != virt_to_phys(iommu.root))
		return FAIL("RTADDR reads 0x%lx", iommu_read64(DMAR_RTADDR));
	if (iommu.fro + 16 * iommu.nfr > 4096 || iommu.iro + 16 > 4096)
		return FAIL("FRO 0x%x / IRO 0x%x outside the register page", iommu.fro, iommu.iro);
	if (CAP_MGAW(iommu.cap) > acpi.dmar_haw)
		kprintf("iommu: MGAW %lu above the DMAR host address width %u\n",
			CAP_MGAW(iommu.cap), acpi.dmar_haw);
	kprintf("iommu: VER 0x%x CAP 0x%016lx ECAP 0x%016lx, %d-level, %s\n", iommu.ver,
		iommu.cap, iommu.ecap, iommu.levels,
		iommu.drhd->flags & 1 ? "INCLUDE_PCI_ALL" : "explicit scopes");
	return NULL;
}

static const char *test_iommu_reg_inv(void)
{
	const char *err = need_iommu();
	if (err)
		return err;
	if ((err = use_qi(false)))
		return err;
	int a[6] = { 0 };
	uint16_t sid = edu.present ? edu_sid() : 0;
	TRY(iommu_reg_ccmd(INV_GLOBAL, 0, 0, &a[0]));
	TRY(iommu_reg_ccmd(INV_DOMAIN, DID_XLATE, 0, &a[1]));
	TRY(iommu_reg_ccmd(INV_DEVICE, DID_PT, sid, &a[2]));
	TRY(iommu_reg_iotlb(INV_GLOBAL, 0, 0, 0, &a[3]));
	TRY(iommu_reg_iotlb(INV_DOMAIN, DID_XLATE, 0, 0, &a[4]));
	TRY(iommu_reg_iotlb(INV_PAGE, DID_XLATE, IOVA_P, 0, &a[5]));
	int am2;
	TRY(iommu_reg_iotlb(INV_PAGE, DID_XLATE, IOVA_BASE, 2, &am2));
	kprintf("iommu-reg-inv: CAIG global %d domain %d device %d; IAIG global %d domain %d "
		"page %d page(am=2) %d\n", a[0], a[1], a[2], a[3], a[4], a[5], am2);
	return NULL;
}

static const char *test_iommu_qi(void)
{
	const char *err = need_iommu();
	if (err)
		return err;
	if ((err = use_qi(true)))
		return err;
	uint16_t sid = edu.present ? edu_sid() : 0;
	iommu_qi_push_context(INV_GLOBAL, 0, 0);
	iommu_qi_push_context(INV_DOMAIN, DID_XLATE, 0);
	iommu_qi_push_context(INV_DEVICE, DID_PT, sid);
	iommu_qi_push_iotlb(INV_GLOBAL, 0, 0, 0);
	iommu_qi_push_iotlb(INV_DOMAIN, DID_XLATE, 0, 0);
	iommu_qi_push_iotlb(INV_PAGE, DID_XLATE, IOVA_P, 0);
	iommu_qi_push_iotlb(INV_PAGE, DID_XLATE, IOVA_BASE, 2);
	TRY(iommu_qi_wait(false));
	unsigned head = (iommu_read64(DMAR_IQH) >> 4) & 0x7FFF;
	EXPECT(head == iommu.iq_tail, "IQH %u, IQT %u after the wait", head, iommu.iq_tail);
	EXPECT(!(iommu_read32(DMAR_FSTS) & FSTS_IQE), "FSTS.IQE set");
	/* The generic helpers go through the queue now. */
	TRY(iommu_inv_context(INV_GLOBAL, 0, 0));
	TRY(iommu_inv_iotlb(INV_DOMAIN, DID_XLATE, 0, 0));
	if (iommu_reg_ccmd(INV_GLOBAL, 0, 0, NULL) == NULL)
		return FAIL("driver issued a register command with the queue on");
	return NULL;
}

/*
 * A descriptor the unit refuses (a reserved type) stops the queue with
 * FSTS.IQE: the wait reports it and drops the queue from the bad
 * descriptor, the fault handler leaves the error to it (clearing it there
 * would refetch the descriptor: an interrupt storm), and the queue works
 * again afterwards.
 */
static const char *test_iommu_qi_error(void)
{
	const char *err = need_iommu();
	if (err)
		return err;
	if ((err = use_qi(true)))
		return err;
	bool quiet = iommu.quiet;
	iommu.quiet = true;
	unsigned irqs = iommu.fault_irqs;
	iommu_qi_push(0xF, 0);                          /* type 15: reserved */
	iommu_qi_push_iotlb(INV_GLOBAL, 0, 0, 0);
	err = iommu_qi_wait(false);
	udelay(20000);
	iommu.quiet = quiet;
	unsigned storm = iommu.fault_irqs - irqs;
	if (!err)
		return FAIL("the wait after a reserved descriptor succeeded");
	kprintf("iommu-qi-error: %s; %u fault interrupt(s)\n", err, storm);
	unsigned head = (iommu_read64(DMAR_IQH) >> 4) & 0x7FFF;
	EXPECT(head == iommu.iq_tail, "IQH %u, IQT %u after the error", head, iommu.iq_tail);
	EXPECT(storm <= 1, "%u fault interrupts for one queue error", storm);
	uint32_t fsts = iommu_read32(DMAR_FSTS);
	EXPECT(!(fsts & (FSTS_IQE | FSTS_ICE | FSTS_ITE)), "FSTS 0x%x after recovery", fsts);
	TRY(iommu_qi_wait(false));
	TRY(iommu_inv_iotlb(INV_DOMAIN, DID_XLATE, 0, 0));
	return NULL;
}

static const char *test_iommu_qi_intr(void)
{
	const char *err = need_iommu();
	if (err)
		return err;
	if ((err = use_qi(true)))
		return err;
	unsigned before = iommu.inv_irqs;
	TRY(iommu_qi_wait(true));
	uint64_t end = tsc_deadline_us(200000);
	while (iommu.inv_irqs == before && !tsc_passed(end))
		udelay(10);
	EXPECT(iommu.inv_irqs == before + 1, "%u invalidation-event interrupts, want 1",
	       iommu.inv_irqs - before);
	EXPECT(iommu.last_ics & 1, "ICS 0x%x in the handler: IWC not set", iommu.last_ics);
	EXPECT(!(iommu_read32(DMAR_ICS) & 1), "ICS.IWC not cleared by the handler");

	/* Masked: IWC and IECTL.IP latch; unmasking delivers it. */
	iommu_write32(DMAR_IECTL, 1u << 31);
	before = iommu.inv_irqs;
	err = iommu_qi_wait(true);
	udelay(1000);
	uint32_t ics = iommu_read32(DMAR_ICS), iectl = iommu_read32(DMAR_IECTL);
	unsigned masked_irqs = iommu.inv_irqs - before;
	iommu_write32(DMAR_IECTL, 0);
	end = tsc_deadline_us(200000);
	while (iommu.inv_irqs == before && !tsc_passed(end))
		udelay(10);
	if (err)
		return FAIL("masked wait: %s", err);
	EXPECT(!masked_irqs, "interrupt delivered while IECTL.IM was set");
	EXPECT((ics & 1) && (iectl & (1u << 30)), "masked: ICS 0x%x IECTL 0x%x (want IWC, IP)", ics,
	       iectl);
	EXPECT(iommu.inv_irqs == before + 1, "unmasking IECTL did not deliver the pending event");
	return NULL;
}

/* Many IOTLB descriptors, one wait; with edu, check the invalidation took. */
static const char *test_iommu_qi_batch(void)
{
	const char *err = need_iommu();
	if (err)
		return err;
	if ((err = use_qi(true)))
		return err;
	bool dma = edu_probe() == NULL && iommu_covers(edu.pci->bus, edu.pci->dev, edu.pci->fn);
	const unsigned n = 128;
	if (dma) {
		TRY(xlate_domain(&dom_x, DID_XLATE, 0));
		TRY(edu_ctx(TT_UNTRANSLATED, &dom_x));
		new_token();
		clear_heads();
		TRY(load(IOVA_SRC));
		TRY(store(IOVA_P));                     /* P -> A, now cached */
		EXPECT(has_token(PG_A), "first store landed in %s, not A", which_page());
		TRY(iodomain_map(&dom_x, IOVA_P, pa_of(PG_B), SL_R | SL_W));
	}
	uint64_t t0 = rdtsc();
	iommu_qi_push_pages(DID_XLATE, IOVA_BATCH, PAGE_SIZE, n / 2);
	iommu_qi_push_iotlb(INV_PAGE, DID_XLATE, IOVA_P, 0);
	iommu_qi_push_pages(DID_XLATE, IOVA_BATCH + (n / 2) * PAGE_SIZE, PAGE_SIZE, n / 2 - 1);
	err = iommu_qi_wait(false);
	uint64_t t1 = rdtsc();
	if (err)
		return restore(FAIL("%s", err));
	kprintf("iommu-qi-batch: %u page invalidations + 1 wait: %lu us\n", n,
		tsc_to_ns(t1 - t0) / 1000);
	if (dma) {
		clear_heads();
		TRY(store(IOVA_P));
		EXPECT(has_token(PG_B), "after the batch the store landed in %s, not B", which_page());
		TRY(iodomain_map(&dom_x, IOVA_P, pa_of(PG_A), SL_R | SL_W));
		TRY(iommu_inv_iotlb(INV_PAGE, DID_XLATE, IOVA_P, 0));
	}
	return restore(NULL);
}

/* ---- IOMMU: DMA ---------------------------------------------------------- */

static const char *test_iommu_passthrough(void)
{
	const char *err = need_iommu_edu();
	if (err)
		return err;
	TRY(edu_ctx(TT_PASSTHROUGH, NULL));
	new_token();
	clear_heads();
	TRY(load(pa_of(PG_SRC)));
	TRY(store(pa_of(PG_A)));
	EXPECT(has_token(PG_A), "pass-through store landed in %s, not A", which_page());
	if (!ECAP_PT(iommu.ecap))
		kprintf("iommu-passthrough: ECAP.PT = 0, used an identity domain\n");
	return restore(NULL);
}

static const char *translate_test(struct iodomain *d, uint16_t did, int levels)
{
	const char *err = need_iommu_edu();
	if (err)
		return err;
	if (levels == 3 && !(CAP_SAGAW(iommu.cap) & 2))
		return SKIP("SAGAW 0x%lx has no 3-level tables", CAP_SAGAW(iommu.cap));
	if (levels == 4 && !(CAP_SAGAW(iommu.cap) & 4))
		return SKIP("SAGAW 0x%lx has no 4-level tables", CAP_SAGAW(iommu.cap));
	TRY(xlate_domain(d, did, levels));
	TRY(edu_ctx(TT_UNTRANSLATED, d));
	new_token();
	clear_heads();
	TRY(load(IOVA_SRC));
	TRY(store(IOVA_Q));
	EXPECT(has_token(PG_C), "store to IOVA 0x%lx landed in %s, not C", IOVA_Q, which_page());
	/* Remap (with the invalidation) and store again: the new page. */
	TRY(iodomain_map(d, IOVA_Q, pa_of(PG_D), SL_R | SL_W));
	TRY(iommu_inv_iotlb(INV_PAGE, did, IOVA_Q, 0));
	clear_heads();
	TRY(store(IOVA_Q));
	EXPECT(has_token(PG_D), "after remapping, the store landed in %s, not D", which_page());
	TRY(iodomain_map(d, IOVA_Q, pa_of(PG_C), SL_R | SL_W));
	TRY(iommu_inv_iotlb(INV_PAGE, did, IOVA_Q, 0));
	return restore(NULL);
}

static const char *test_iommu_translate(void)
{
	return translate_test(&dom_x, DID_XLATE, 4);
}

static const char *test_iommu_3level(void)
{
	return translate_test(&dom_3, DID_3LEVEL, 3);
}

static const char *test_iommu_fault(void)
{
	const char *err = need_iommu_edu();
	if (err)
		return err;
	TRY(xlate_domain(&dom_x, DID_XLATE, 0));
	TRY(edu_ctx(TT_UNTRANSLATED, &dom_x));
	new_token();
	clear_heads();
	TRY(load(IOVA_SRC));
	unsigned nf = iommu.nfaults, irqs = iommu.fault_irqs;
	iommu.quiet = true;
	err = store(IOVA_RO);                   /* write to a read-only page */
	uint64_t end = tsc_deadline_us(500000);
	while (iommu.nfaults == nf && !tsc_passed(end))
		udelay(20);
	iommu.quiet = false;
	if (err)
		return restore(FAIL("%s", err));
	EXPECT(iommu.nfaults > nf, "no fault recorded (%u fault interrupts, FSTS 0x%x)",
	       iommu.fault_irqs - irqs, iommu_read32(DMAR_FSTS));
	const struct iommu_fault *f = &iommu.faults[nf % IOMMU_FAULT_LOG];
	kprintf("iommu-fault: ");
	iommu_print_faults();
	EXPECT(f->reason == 5, "fault reason %u, want 5 (write not permitted)", f->reason);
	EXPECT(f->sid == edu_sid(), "source id 0x%04x, want 0x%04x", f->sid, edu_sid());
	EXPECT(f->addr == IOVA_RO, "fault address 0x%lx, want 0x%lx", f->addr, IOVA_RO);
	EXPECT(!f->read, "recorded as a read request");
	EXPECT(iommu.fault_irqs > irqs, "fault recorded but no fault-event interrupt");
	EXPECT(!has_token(PG_RO), "the read-only page was written");
	EXPECT(!(iommu_read32(DMAR_FSTS) & (FSTS_PPF | FSTS_PFO)), "FSTS 0x%x not cleared",
	       iommu_read32(DMAR_FSTS));
	return restore(NULL);
}

/* P -> A and Q -> C cached by a store each; then both remapped (B, D). */
static const char *warm_then_remap(struct iodomain *d)
{
	const char *err;
	new_token();
	clear_heads();
	if ((err = load(IOVA_SRC)) || (err = store(IOVA_P)) || (err = store(IOVA_Q)))
		return err;
	if (!has_token(PG_A) || !has_token(PG_C))
		return FAIL("warm-up stores landed in %s", which_page());
	if ((err = iodomain_map(d, IOVA_P, pa_of(PG_B), SL_R | SL_W)) ||
	    (err = iodomain_map(d, IOVA_Q, pa_of(PG_D), SL_R | SL_W)))
		return err;
	clear_heads();
	return NULL;
}

static const char *unmap_back(struct iodomain *d)
{
	const char *err;
	if ((err = iodomain_map(d, IOVA_P, pa_of(PG_A), SL_R | SL_W)) ||
	    (err = iodomain_map(d, IOVA_Q, pa_of(PG_C), SL_R | SL_W)) ||
	    (err = iodomain_map(d, IOVA_Q2, pa_of(PG_D), SL_R | SL_W)))
		return err;
	return iommu_inv_iotlb(INV_DOMAIN, d->did, 0, 0);
}

static const char *test_iommu_psi(void)
{
	const char *err = need_iommu_edu();
	if (err)
		return err;
	if (!CAP_PSI(iommu.cap))
		return SKIP("CAP.PSI = 0");
	TRY(xlate_domain(&dom_x, DID_XLATE, 0));
	TRY(edu_ctx(TT_UNTRANSLATED, &dom_x));
	TRY(warm_then_remap(&dom_x));
	TRY(iommu_inv_iotlb(INV_PAGE, DID_XLATE, IOVA_P, 0));
	TRY(store(IOVA_P));
	EXPECT(has_token(PG_B), "after invalidating page P the store landed in %s, not B",
	       which_page());
	clear_heads();
	TRY(store(IOVA_Q));
	const char *q = has_token(PG_C) ? "C (stale: untouched by P's invalidation)"
		      : has_token(PG_D) ? "D (the IOTLB did not cache Q)" : which_page();
	kprintf("iommu-psi: invalidated P only; Q then went to %s\n", q);
	EXPECT(has_token(PG_C) || has_token(PG_D), "store to Q landed in %s", which_page());
	/* Address mask: AM = 1 covers the naturally aligned pair Q, Q2. */
	if (CAP_MAMV(iommu.cap) >= 1) {
		TRY(iommu_inv_iotlb(INV_PAGE, DID_XLATE, IOVA_Q, 1));
		clear_heads();
		TRY(store(IOVA_Q));
		EXPECT(has_token(PG_D), "after an AM=1 invalidation of Q's pair the store landed in %s",
		       which_page());
	}
	TRY(unmap_back(&dom_x));
	return restore(NULL);
}

static const char *test_iommu_dsi(void)
{
	const char *err = need_iommu_edu();
	if (err)
		return err;
	TRY(xlate_domain(&dom_x, DID_XLATE, 0));
	TRY(edu_ctx(TT_UNTRANSLATED, &dom_x));
	TRY(warm_then_remap(&dom_x));
	TRY(iommu_inv_iotlb(INV_DOMAIN, DID_OTHER, 0, 0));     /* another domain */
	TRY(store(IOVA_P));
	const char *p = has_token(PG_A) ? "A (stale: another domain's flush left it)"
		      : has_token(PG_B) ? "B (the IOTLB did not cache P)" : which_page();
	kprintf("iommu-dsi: after flushing domain %u, P went to %s\n", DID_OTHER, p);
	EXPECT(has_token(PG_A) || has_token(PG_B), "store to P landed in %s", which_page());
	TRY(iommu_inv_iotlb(INV_DOMAIN, DID_XLATE, 0, 0));
	clear_heads();
	TRY(store(IOVA_P));
	TRY(store(IOVA_Q));
	EXPECT(has_token(PG_B) && has_token(PG_D),
	       "after the domain invalidation the stores landed in %s, not B+D", which_page());
	TRY(unmap_back(&dom_x));
	return restore(NULL);
}

/*
 * Akaros hands a process's (EPT-format) page table to the IOMMU as the
 * domain of the device it assigned, and on every TLB shootdown of that
 * process also flushes the domain's IOTLB (register based, domain
 * selective, with drains).  Remap a page the device uses, shoot down,
 * and the next DMA must land in the new page.
 */
static const char *test_iommu_shootdown(void)
{
	const char *err = need_iommu_edu();
	if (err)
		return err;
	bool qi = iommu.qi;
	if ((err = use_qi(false)))
		return err;
	dom_ept.ept_format = true;
	TRY(xlate_domain(&dom_ept, DID_EPT, 0));
	TRY(edu_ctx(TT_UNTRANSLATED, &dom_ept));
	new_token();
	clear_heads();
	TRY(load(IOVA_SRC));
	TRY(store(IOVA_P));
	EXPECT(has_token(PG_A), "first store landed in %s, not A", which_page());
	TRY(iodomain_map(&dom_ept, IOVA_P, pa_of(PG_B), SL_R | SL_W));
	uint64_t t0 = rdtsc();
	int acks = tlb_shootdown((uintptr_t)pg[PG_B], false);
	TRY(iommu_reg_iotlb(INV_DOMAIN, DID_EPT, 0, 0, NULL));
	uint64_t t1 = rdtsc();
	clear_heads();
	TRY(store(IOVA_P));
	EXPECT(has_token(PG_B), "after the shootdown the store landed in %s, not B", which_page());
	kprintf("iommu-shootdown: %d cores acknowledged, shootdown + IOTLB flush %lu us\n", acks,
		tsc_to_ns(t1 - t0) / 1000);
	TRY(unmap_back(&dom_ept));
	err = restore(NULL);
	const char *e2 = iommu_qi_set(qi);
	return err ? err : e2 ? FAIL("%s", e2) : NULL;
}

/* The same remap without the invalidation: hardware keeps using the old page. */
static const char *test_iommu_stale(void)
{
	const char *err = need_iommu_edu();
	if (err)
		return err;
	TRY(xlate_domain(&dom_x, DID_XLATE, 0));
	TRY(edu_ctx(TT_UNTRANSLATED, &dom_x));
	new_token();
	clear_heads();
	TRY(load(IOVA_SRC));
	TRY(store(IOVA_P));
	EXPECT(has_token(PG_A), "first store landed in %s, not A", which_page());
	TRY(iodomain_map(&dom_x, IOVA_P, pa_of(PG_B), SL_R | SL_W));
	clear_heads();
	TRY(store(IOVA_P));                     /* no invalidation */
	bool stale = has_token(PG_A), fresh = has_token(PG_B);
	const char *where = which_page();
	TRY(iommu_inv_iotlb(INV_PAGE, DID_XLATE, IOVA_P, 0));
	clear_heads();
	TRY(store(IOVA_P));
	bool after = has_token(PG_B);
	TRY(unmap_back(&dom_x));
	err = restore(NULL);
	if (err)
		return err;
	if (!after)
		return FAIL("even after the invalidation the store landed in %s", which_page());
	if (stale) {
		kprintf("iommu-stale: without an invalidation the DMA used the stale translation "
			"(old page A); after it, the new page B\n");
		return NULL;
	}
	if (fresh)
		return SKIP("this IOMMU's IOTLB did not cache: the DMA already used the new page");
	return FAIL("store without invalidation landed in %s", where);
}

/* map_mmio() above 4 GiB, tried on RAM there (boot with -m 5G or more). */
static const char *test_vm_high(void)
{
	uint64_t pa = 0;
	for (int i = 0; i < bootinfo.nmmap && !pa; i++) {
		const struct mmap_region *r = &bootinfo.mmap[i];
		uint64_t a = MAX(r->addr, PHYS_LIMIT + (2ULL << 20));
		if (r->type == 1 && a + 4096 <= r->addr + r->len)
			pa = (a + 0x1FFFFF) & ~0x1FFFFFULL;
		if (pa && pa + 4096 > r->addr + r->len)
			pa = 0;
	}
	if (!pa)
		return SKIP("no RAM above 4 GiB to map");
	volatile uint64_t *p = (volatile uint64_t *)map_mmio(pa + 0x1238, 8);
	if (!p)
		return FAIL("map_mmio(0x%lx) failed", pa);
	uint64_t v = rdtsc();
	*p = v;
	if (*p != v)
		return FAIL("read back 0x%lx, wrote 0x%lx at 0x%lx", *p, v, pa);
	kprintf("vm-high: wrote and read RAM at 0x%lx through a new mapping\n", pa + 0x1238);
	return NULL;
}

const struct selftest dev_tests[] = {
	{ "vm-high", test_vm_high, false },
	{ "edu-id", test_edu_id, true },
	{ "edu-dma", test_edu_dma, true },
	{ "edu-msi", test_edu_msi, true },
	{ "edu-intx", test_edu_intx, true },
	{ "iommu-enable", test_iommu_enable, true },
	{ "iommu-reg-inv", test_iommu_reg_inv, true },
	{ "iommu-qi", test_iommu_qi, true },
	{ "iommu-qi-intr", test_iommu_qi_intr, true },
	{ "iommu-qi-error", test_iommu_qi_error, true },
	{ "iommu-qi-batch", test_iommu_qi_batch, true },
	{ "iommu-passthrough", test_iommu_passthrough, true },
	{ "iommu-translate", test_iommu_translate, true },
	{ "iommu-3level", test_iommu_3level, true },
	{ "iommu-fault", test_iommu_fault, true },
	{ "iommu-psi", test_iommu_psi, true },
	{ "iommu-dsi", test_iommu_dsi, true },
	{ "iommu-shootdown", test_iommu_shootdown, true },
	{ "iommu-stale", test_iommu_stale, true },
};
const size_t dev_ntests = ARRAY_SIZE(dev_tests);

/* ---- benchmarks ------------------------------------------------------------ */

bool bench_iommu(void)
{
	const char *err = iommu_probe();
	if (!err)
		err = iommu_enable();
	if (!err)
		err = setup_pages();
	if (err) {
		kprintf("BENCH iommu skipped: %s\n", err);
		return true;
	}
	bool qi = iommu.qi;
	const uint64_t n = 200;
	uint64_t t0, t1;

	if (!(err = iommu_qi_set(false))) {
		t0 = rdtsc();
		for (uint64_t i = 0; i < n && !err; i++)
			err = iommu_reg_iotlb(INV_DOMAIN, DID_XLATE, 0, 0, NULL);
		t1 = rdtsc();
		if (!err)
			bench_report("iommu-inv-reg-domain", n, t1 - t0);
		t0 = rdtsc();
		for (uint64_t i = 0; i < n && !err; i++)
			err = iommu_reg_iotlb(INV_PAGE, DID_XLATE, IOVA_BATCH + (i << 12), 0, NULL);
		t1 = rdtsc();
		if (!err)
			bench_report("iommu-inv-reg-page", n, t1 - t0);
		t0 = rdtsc();
		for (uint64_t i = 0; i < n && !err; i++)
			err = iommu_reg_ccmd(INV_GLOBAL, 0, 0, NULL);
		t1 = rdtsc();
		if (!err)
			bench_report("iommu-inv-reg-context", n, t1 - t0);
	}
	if (!err && ECAP_QI(iommu.ecap) && !(err = iommu_qi_set(true))) {
		t0 = rdtsc();
		for (uint64_t i = 0; i < n && !err; i++) {
			iommu_qi_push_iotlb(INV_PAGE, DID_XLATE, IOVA_BATCH + (i << 12), 0);
			err = iommu_qi_wait(false);
		}
		t1 = rdtsc();
		if (!err)
			bench_report("iommu-inv-qi-1", n, t1 - t0);
		static const unsigned batches[] = { 8, 32, 128, 254 };
		for (size_t b = 0; b < ARRAY_SIZE(batches) && !err; b++) {
			unsigned per = batches[b], rounds = 10;
			t0 = rdtsc();
			for (unsigned r = 0; r < rounds && !err; r++) {
				iommu_qi_push_pages(DID_XLATE, IOVA_BATCH, PAGE_SIZE, per);
				err = iommu_qi_wait(false);
			}
			t1 = rdtsc();
			char name[40];
			ksnprintf(name, sizeof(name), "iommu-inv-qi-batch%u", per);
			if (!err)
				bench_report(name, (uint64_t)per * rounds, t1 - t0);
		}
	}
	const char *e2 = iommu_qi_set(qi);
	if (err || e2) {
		kprintf("BENCH iommu: %s\n", err ? err : e2);
		return false;
	}
	return true;
}

static bool dma_bench(const char *name, uint64_t ram, int n)
{
	uint64_t t0 = rdtsc();
	for (int i = 0; i < n; i++) {
		const char *err = edu_dma(EDU_BUF_ADDR, ram, EDU_DMA_MAX, EDU_DMA_TO_RAM, EDU_POLL);
		if (err) {
			kprintf("BENCH %s: %s\n", name, err);
			return false;
		}
	}
	uint64_t t1 = rdtsc();
	uint64_t ns = tsc_to_ns(t1 - t0);
	kprintf("BENCH %s iterations=%d cycles_per_op=%lu ns_per_op=%lu bytes_per_op=%d MBps=%lu\n",
		name, n, (t1 - t0) / n, ns / n, EDU_DMA_MAX,
		ns ? (uint64_t)EDU_DMA_MAX * n * 1000 / ns : 0);
	return true;
}

bool bench_edu(void)
{
	const char *err = edu_probe();
	if (!err)
		err = setup_pages();
	if (err) {
		kprintf("BENCH edu skipped: %s\n", err);
		return true;
	}
	const int n = 8;
	bool behind = !iommu_probe() && iommu_covers(edu.pci->bus, edu.pci->dev, edu.pci->fn);
	if (behind && (err = iommu_enable())) {
		kprintf("BENCH edu: %s\n", err);
		return false;
	}
	if (behind && (err = edu_ctx(TT_PASSTHROUGH, NULL)))
		goto bad;
	if (!dma_bench(behind ? "edu-dma-passthrough" : "edu-dma", pa_of(PG_A), n))
		return false;
	if (!behind) {
		kprintf("BENCH edu-dma-translated skipped: no IOMMU in front of edu\n");
		return true;
	}
	if ((err = xlate_domain(&dom_x, DID_XLATE, 0)) || (err = edu_ctx(TT_UNTRANSLATED, &dom_x)))
		goto bad;
	bool ok = dma_bench("edu-dma-translated", IOVA_P, n);
	if ((err = edu_ctx(TT_PASSTHROUGH, NULL)))
		goto bad;
	return ok;
bad:
	kprintf("BENCH edu: %s\n", err);
	return false;
}
