/*
 * Intel VT-d DMA remapping in legacy mode, written from the VT-d
 * specification (docs/VTD.md summarises the register and table layouts
 * used here).
 *
 * - Discovery: the ACPI DMAR table's DRHD (INCLUDE_PCI_ALL or explicit
 *   device scopes) gives the register page; CAP/ECAP say what it can do.
 * - Tables: a root table (one entry per bus) pointing to context tables
 *   (one entry per devfn); context entries are pass-through (TT=2), or
 *   translated (TT=0) through 3- or 4-level second-level tables with a
 *   domain id.  Without ECAP.PT, "pass-through" is an identity domain.
 * - Invalidation: register based (CCMD, the IOTLB register at ECAP.IRO)
 *   or queued (IQA/IQH/IQT, 128-bit descriptors, wait descriptors with a
 *   status write and optionally an interrupt through IECTL/IEDATA/IEADDR).
 *   Register commands are refused while the queue is on, as the spec says.
 * - Faults: the fault event (FECTL/FEDATA/FEADDR) is an MSI to core 0;
 *   its handler reads and clears the fault recording registers and FSTS.
 * - Lending (benchmark only, user.c's iommu_lend): a process gets the
 *   register page and the queue; meanwhile every path here that would
 *   invalidate refuses, and iommu_take_back resynchronises the queue.
 *
 * Everything polls with short bounded loops: the status bits of an
 * emulated IOMMU update synchronously, and ring 0 may be emulated.
 */
#include "iommu.h"
#include "acpi.h"
#include "apic.h"
#include "cpu.h"
#include "lib.h"
#include "mm.h"
#include "pci.h"
#include "timer.h"
#include "trap.h"
#include "vm.h"
#include "x86.h"

struct iommu iommu;

const char IOMMU_LENT_ERR[] = "the VT-d unit is lent to a process (benchmark)";

static volatile uint32_t qi_status __attribute__((aligned(64)));

uint32_t iommu_read32(unsigned off) { return *(volatile uint32_t *)(iommu.regs + off); }
uint64_t iommu_read64(unsigned off) { return *(volatile uint64_t *)(iommu.regs + off); }
void iommu_write32(unsigned off, uint32_t v) { *(volatile uint32_t *)(iommu.regs + off) = v; }
void iommu_write64(unsigned off, uint64_t v) { *(volatile uint64_t *)(iommu.regs + off) = v; }

#define rd32 iommu_read32
#define rd64 iommu_read64
#define wr32 iommu_write32
#define wr64 iommu_write64

/* Status bits update synchronously on an emulated unit; real hardware
 * takes microseconds.  Bounded by time, checked after every read. */
static bool poll32(unsigned off, uint32_t mask, uint32_t want)
{
	if ((rd32(off) & mask) == want)
		return true;
	uint64_t end = tsc_deadline_us(100000);
	while (!tsc_passed(end)) {
		if ((rd32(off) & mask) == want)
			return true;
		udelay(10);
	}
	return false;
}

static bool poll64_clear(unsigned off, uint64_t bit, uint64_t *last)
{
	uint64_t v = rd64(off);
	if (!(v & bit)) {                       /* the usual case: done already */
		*last = v;
		return true;
	}
	uint64_t end = tsc_deadline_us(100000);
	while ((v & bit) && !tsc_passed(end)) {
		udelay(10);
		v = rd64(off);
	}
	*last = v;
	return !(v & bit);
}

void iommu_flush_cache(const void *p, size_t len)
{
	if (ECAP_C(iommu.ecap) || !len)
		return;
	uintptr_t a = (uintptr_t)p & ~63UL, end = (uintptr_t)p + len;
	for (; a < end; a += 64)
		asm volatile("clflush (%0)" :: "r"(a) : "memory");
	asm volatile("mfence" ::: "memory");
}

/* One GCMD command, keeping the persistent enables; waits for GSTS. */
static bool gcmd(uint32_t bit, bool on)
{
	uint32_t sts = rd32(DMAR_GSTS) & GSTS_PERSIST;
	uint32_t v = on ? sts | bit : sts & ~bit;
	wr32(DMAR_GCMD, v);
	if (bit == GCMD_SRTP)
		return poll32(DMAR_GSTS, GCMD_SRTP, GCMD_SRTP);
	if (bit == GCMD_WBF)
		return poll32(DMAR_GSTS, GCMD_WBF, 0);
	return poll32(DMAR_GSTS, bit, on ? bit : 0);
}

static void write_buffer_flush(void)
{
	if (CAP_RWBF(iommu.cap))
		gcmd(GCMD_WBF, true);
}

/* ---- discovery ------------------------------------------------------- */

static uint8_t bridge_secondary(uint8_t bus, uint8_t dev, uint8_t fn)
{
	return pci_read32(bus, dev, fn, 0x18) >> 8;
}

/* The function a scope path names (bridges followed hop by hop). */
static void scope_target(const struct dmar_scope *s, uint8_t *bus, uint8_t *dev, uint8_t *fn)
{
	uint8_t b = s->start_bus;
	for (int k = 0; k + 1 < s->npath; k++)
		b = bridge_secondary(b, s->path[k][0], s->path[k][1]);
	*bus = b;
	*dev = s->npath ? s->path[s->npath - 1][0] : 0;
	*fn = s->npath ? s->path[s->npath - 1][1] : 0;
}

static bool drhd_covers(const struct dmar_drhd *d, uint8_t bus, uint8_t dev, uint8_t fn)
{
	if (d->seg != 0)
		return false;
	if (d->flags & 1)
		return true;                    /* INCLUDE_PCI_ALL */
	for (int i = 0; i < d->nkept; i++) {
		const struct dmar_scope *s = &d->scopes[i];
		if (s->type != 1 && s->type != 2)
			continue;
		uint8_t b, dv, f;
		scope_target(s, &b, &dv, &f);
		if (b == bus && dv == dev && f == fn)
			return true;
		if (s->type == 2) {             /* everything below the bridge */
			uint32_t r = pci_read32(b, dv, f, 0x18);
			uint8_t sec = r >> 8, sub = r >> 16;
			if (sec && bus >= sec && bus <= sub)
				return true;
		}
	}
	return false;
}

bool iommu_covers(uint8_t bus, uint8_t dev, uint8_t fn)
{
	return iommu.present && drhd_covers(iommu.drhd, bus, dev, fn);
}

const char *iommu_probe(void)
{
	if (iommu.probed)
		return iommu.present ? NULL : iommu.absent_why;
	iommu.probed = true;
	iommu.absent_why = "no DMAR table";
	if (!acpi.have_dmar)
		return iommu.absent_why;
	iommu.absent_why = "DMAR has no usable DRHD";
	/* The first segment-0 unit; prefer the catch-all one. */
	int pick = -1;
	for (int i = 0; i < acpi.ndrhd; i++) {
		if (acpi.drhd[i].seg != 0 || !acpi.drhd[i].base)
			continue;
		if (pick < 0 || (acpi.drhd[i].flags & 1))
			pick = i;
	}
	if (pick < 0)
		return iommu.absent_why;
	iommu.drhd = &acpi.drhd[pick];
	iommu.drhd_index = pick;
	iommu.regs = map_mmio(iommu.drhd->base, 4096);
	if (!iommu.regs)
		return iommu.absent_why = "DRHD register page cannot be mapped";
	iommu.ver = rd32(DMAR_VER);
	if (iommu.ver == 0xFFFFFFFF || iommu.ver == 0)
		return iommu.absent_why = "nothing answers at the DRHD register base";
	iommu.cap = rd64(DMAR_CAP);
	iommu.ecap = rd64(DMAR_ECAP);
	iommu.fro = CAP_FRO(iommu.cap);
	iommu.nfr = CAP_NFR(iommu.cap);
	iommu.iro = ECAP_IRO(iommu.ecap);
	iommu.iotlb_drain = (CAP_DWD(iommu.cap) ? 1 << 6 : 0) | (CAP_DRD(iommu.cap) ? 1 << 7 : 0);
	uint32_t sagaw = CAP_SAGAW(iommu.cap);
	if (sagaw & 4)
		iommu.levels = 4;
	else if (sagaw & 2)
		iommu.levels = 3;
	else
		return iommu.absent_why = "SAGAW offers neither 3- nor 4-level tables";
	iommu.present = true;
	return NULL;
}

/* ---- tables ---------------------------------------------------------- */

static uint64_t *context_entry(uint8_t bus, uint8_t devfn)
{
	if (!iommu.ctx[bus]) {
		uint64_t *ct = page_alloc();
		if (!ct)
			return NULL;
		iommu.ctx[bus] = ct;
		iommu.root[2 * bus + 1] = 0;
		iommu.root[2 * bus] = virt_to_phys(ct) | 1;
		iommu_flush_cache(&iommu.root[2 * bus], 16);
	}
	return iommu.ctx[bus] + 2 * devfn;
}

static int aw_for(int levels)
{
	return levels == 3 ? 1 : levels == 4 ? 2 : 3;
}

const char *iommu_set_context(uint8_t bus, uint8_t devfn, int tt, const struct iodomain *d,
			      uint16_t did)
{
	if (!iommu.root)
		return "IOMMU tables not set up";
	uint64_t *e = context_entry(bus, devfn);
	if (!e)
		return "out of pages for a context table";
	uint16_t sid = bus << 8 | devfn;
	const char *err;
	int levels = d ? d->levels : iommu.levels;
	uint64_t lo = 1 | (uint64_t)tt << 2;
	if (tt != TT_PASSTHROUGH)
		lo |= virt_to_phys(d->top);
	uint64_t hi = aw_for(levels) | (uint64_t)did << 8;

	if (e[0] == lo && e[1] == hi)
		return NULL;
	if (iommu.lent_to)
		return IOMMU_LENT_ERR;          /* it could not invalidate */
	if (e[0] & 1) {
		/* Take the old entry down and flush what may be cached of it. */
		uint16_t old = (e[1] >> 8) & 0xFFFF;
		e[0] = 0;
		iommu_flush_cache(e, 16);
		write_buffer_flush();
		if (iommu.enabled) {
			if ((err = iommu_inv_context(INV_DEVICE, old, sid)))
				return err;
			if ((err = iommu_inv_iotlb(INV_DOMAIN, old, 0, 0)))
				return err;
		}
	}
	e[1] = hi;
	barrier();
	e[0] = lo;
	iommu_flush_cache(e, 16);
	write_buffer_flush();
	/* Not needed by the spec with CM = 0 (not-present entries are not
	 * cached), but an emulation may decide the device's address space
	 * at context invalidation (QEMU does). */
	if (iommu.enabled)
		return iommu_inv_context(INV_DEVICE, did, sid);
	return NULL;
}

const char *iommu_set_passthrough(uint8_t bus, uint8_t devfn)
{
	if (ECAP_PT(iommu.ecap))
		return iommu_set_context(bus, devfn, TT_PASSTHROUGH, NULL, 1);
	return iommu_set_context(bus, devfn, TT_UNTRANSLATED, &iommu.identity, 1);
}

const char *iodomain_init(struct iodomain *d, uint16_t did, int levels)
{
	if (!levels)
		levels = iommu.levels;
	if (levels != 3 && levels != 4)
		return "levels must be 3 or 4";
	if (!(CAP_SAGAW(iommu.cap) & (levels == 4 ? 4 : 2)))
		return "SAGAW does not offer that many levels";
	if (d->top && d->levels == levels && d->did == did)
		return NULL;
	if (!d->top || d->levels != levels) {
		d->top = page_alloc();
		if (!d->top)
			return "out of pages";
	}
	d->did = did;
	d->levels = levels;
	return NULL;
}

static inline uint64_t *table_va(uint64_t e)
{
	return (uint64_t *)(uintptr_t)((e & 0x000FFFFFFFFFF000ULL) + KERNBASE);
}

/* Entry for iova at `level` (1 = 4 KiB leaf, 2 = 2 MiB, 3 = 1 GiB). */
static uint64_t *walk(struct iodomain *d, uint64_t iova, int level, bool alloc)
{
	uint64_t *t = d->top;
	for (int l = d->levels; l > level; l--) {
		uint64_t *e = &t[(iova >> (12 + 9 * (l - 1))) & 511];
		if (!(*e & (SL_R | SL_W))) {
			if (!alloc)
				return NULL;
			uint64_t *n = page_alloc();
			if (!n)
				return NULL;
			*e = virt_to_phys(n) | SL_R | SL_W;
			iommu_flush_cache(e, 8);
		} else if (*e & SL_PS) {
			return NULL;            /* a large page is in the way */
		}
		t = table_va(*e);
	}
	return &t[(iova >> (12 + 9 * (level - 1))) & 511];
}

uint64_t *iodomain_pte(struct iodomain *d, uint64_t iova)
{
	return walk(d, iova, 1, false);
}

static const char *map_level(struct iodomain *d, uint64_t iova, uint64_t pa, uint64_t flags,
			     int level)
{
	if (iova >> (12 + 9 * d->levels))
		return "IOVA beyond the domain's address width";
	uint64_t *e = walk(d, iova, level, true);
	if (!e)
		return "out of pages (or a large page in the way)";
	uint64_t v = 0;
	if (flags & (SL_R | SL_W)) {
		v = pa | flags | (level > 1 ? SL_PS : 0);
		if (d->ept_format)
			v |= SL_X | SL_EMT_WB;
	}
	*e = v;
	iommu_flush_cache(e, 8);
	return NULL;
}

const char *iodomain_map(struct iodomain *d, uint64_t iova, uint64_t pa, uint64_t flags)
{
	return map_level(d, iova, pa, flags, 1);
}

/* 0-4 GiB identity, with the largest page size SLLPS allows. */
static const char *build_identity(void)
{
	struct iodomain *d = &iommu.identity;
	const char *err = iodomain_init(d, 1, 0);
	if (err)
		return err;
	int level = (CAP_SLLPS(iommu.cap) & 2) ? 3 : (CAP_SLLPS(iommu.cap) & 1) ? 2 : 1;
	if (level == 1)
		return "no pass-through and no large pages: identity domain too big";
	uint64_t step = 1ULL << (12 + 9 * (level - 1));
	for (uint64_t a = 0; a < PHYS_LIMIT; a += step)
		if ((err = map_level(d, a, a, SL_R | SL_W, level)))
			return err;
	return NULL;
}

/* ---- invalidation: registers ---------------------------------------- */

const char *iommu_reg_ccmd(int gran, uint16_t did, uint16_t sid, int *actual)
{
	if (iommu.lent_to)
		return IOMMU_LENT_ERR;
	if (iommu.qi)
		return "register-based invalidation while queued invalidation is on";
	uint64_t last;
	wr64(DMAR_CCMD, 1ULL << 63 | (uint64_t)gran << 61 | (uint64_t)sid << 16 | did);
	if (!poll64_clear(DMAR_CCMD, 1ULL << 63, &last))
		return "CCMD.ICC did not clear";
	iommu.inv_reg++;
	int caig = (last >> 59) & 3;
	if (actual)
		*actual = caig;
	return caig ? NULL : "CCMD: CAIG 0 (not performed)";
}

const char *iommu_reg_iotlb(int gran, uint16_t did, uint64_t addr, unsigned am, int *actual)
{
	if (iommu.lent_to)
		return IOMMU_LENT_ERR;
	if (iommu.qi)
		return "register-based invalidation while queued invalidation is on";
	if (gran == INV_PAGE && !CAP_PSI(iommu.cap))
		gran = INV_DOMAIN;              /* no page-selective support */
	if (gran == INV_PAGE) {
		if (am > CAP_MAMV(iommu.cap))
			return "address mask above CAP.MAMV";
		wr64(iommu.iro, (addr & ~0xFFFULL) | am);
	}
	uint64_t cmd = 1ULL << 63 | (uint64_t)gran << 60 | (uint64_t)did << 32;
	if (CAP_DRD(iommu.cap))
		cmd |= 1ULL << 49;
	if (CAP_DWD(iommu.cap))
		cmd |= 1ULL << 48;
	uint64_t last;
	wr64(iommu.iro + 8, cmd);
	if (!poll64_clear(iommu.iro + 8, 1ULL << 63, &last))
		return "IOTLB.IVT did not clear";
	iommu.inv_reg++;
	int iaig = (last >> 57) & 3;
	if (actual)
		*actual = iaig;
	return iaig ? NULL : "IOTLB: IAIG 0 (not performed)";
}

/* ---- invalidation: queue --------------------------------------------- */

const char *iommu_qi_set(bool on)
{
	if (iommu.lent_to)
		return IOMMU_LENT_ERR;
	if (on == iommu.qi)
		return NULL;
	if (on) {
		if (!ECAP_QI(iommu.ecap))
			return "ECAP.QI = 0: no queued invalidation";
		if (!iommu.iq && !(iommu.iq = page_alloc()))
			return "out of pages";
		wr64(DMAR_IQT, 0);
		wr64(DMAR_IQA, virt_to_phys(iommu.iq));     /* 128-bit descriptors, 1 page */
		if (!gcmd(GCMD_QIE, true))
			return "GSTS.QIES did not set";
		iommu.iq_tail = 0;
		iommu.qi = true;
		return NULL;
	}
	if ((rd64(DMAR_IQH) >> 4 & 0x7FFF) != iommu.iq_tail)
		return "invalidation queue not empty";
	if (!gcmd(GCMD_QIE, false))
		return "GSTS.QIES did not clear";
	iommu.qi = false;
	return NULL;
}

bool iommu_qi_room(unsigned n)
{
	if (iommu.lent_to)
		return false;
	unsigned head = (rd64(DMAR_IQH) >> 4) & 0x7FFF;
	unsigned used = (iommu.iq_tail - head) & (IQ_ENTRIES - 1);
	return used + n < IQ_ENTRIES;
}

/* While the unit is lent the queue is the process's: pushes and kicks do
 * nothing and iommu_qi_wait says why. */
void iommu_qi_push(uint64_t lo, uint64_t hi)
{
	if (iommu.lent_to)
		return;
	uint64_t *slot = &iommu.iq[2 * iommu.iq_tail];
	slot[0] = lo;
	slot[1] = hi;
	iommu.iq_tail = (iommu.iq_tail + 1) & (IQ_ENTRIES - 1);
}

void iommu_qi_push_context(int gran, uint16_t did, uint16_t sid)
{
	iommu_qi_push(1 | (uint64_t)gran << 4 | (uint64_t)did << 16 | (uint64_t)sid << 32, 0);
	iommu.inv_qi_desc++;
}

void iommu_qi_push_iotlb(int gran, uint16_t did, uint64_t addr, unsigned am)
{
	if (gran == INV_PAGE && !CAP_PSI(iommu.cap))
		gran = INV_DOMAIN;
	uint64_t lo = 2 | (uint64_t)gran << 4 | (uint64_t)did << 16 | iommu.iotlb_drain;
	iommu_qi_push(lo, gran == INV_PAGE ? (addr & ~0xFFFULL) | am : 0);
	iommu.inv_qi_desc++;
}

/* n page-selective IOTLB descriptors for addr, addr + stride, ...: the
 * batch path, a handful of instructions per descriptor. */
void iommu_qi_push_pages(uint16_t did, uint64_t addr, uint64_t stride, unsigned n)
{
	if (!CAP_PSI(iommu.cap)) {
		iommu_qi_push_iotlb(INV_DOMAIN, did, 0, 0);
		return;
	}
	if (iommu.lent_to)
		return;
	uint64_t lo = 2 | (uint64_t)INV_PAGE << 4 | (uint64_t)did << 16 | iommu.iotlb_drain;
	uint64_t *q = iommu.iq;
	unsigned t = iommu.iq_tail;
	addr &= ~0xFFFULL;
	for (unsigned i = 0; i < n; i++, addr += stride) {
		q[2 * t] = lo;
		q[2 * t + 1] = addr;
		t = (t + 1) & (IQ_ENTRIES - 1);
	}
	iommu.iq_tail = t;
	iommu.inv_qi_desc += n;
}

void iommu_qi_kick(void)
{
	if (iommu.lent_to)
		return;
	wr64(DMAR_IQT, (uint64_t)iommu.iq_tail << 4);
}

/*
 * A wait descriptor.  Without intr: status write (SW) of a sequence number,
 * polled in memory.  With intr: the interrupt flag only (IF), and we poll
 * for the invalidation-event interrupt or ICS.IWC -- QEMU 7.2 asserts (and
 * dies) on a wait descriptor with both SW and IF, which the spec allows.
 */
const char *iommu_qi_wait(bool intr)
{
	static char why[96];
	if (iommu.lent_to)
		return IOMMU_LENT_ERR;
	uint32_t seq = ++iommu.wait_seq;
	if (!seq)
		seq = ++iommu.wait_seq;
	unsigned irqs = iommu.inv_irqs;
	if (intr) {
		iommu_qi_push(5 | 1 << 4, 0);                   /* IF */
	} else {
		qi_status = 0;
		iommu.wait_status = &qi_status;
		iommu_qi_push(5 | 1 << 5 | (uint64_t)seq << 32, /* SW */
			      virt_to_phys((const void *)&qi_status));
	}
	iommu_qi_kick();
	iommu.inv_qi_waits++;
	uint64_t end = 0;
	for (int i = 0;; i++) {
		if (!intr && qi_status == seq)
			return NULL;
		if (intr && (iommu.inv_irqs != irqs || (rd32(DMAR_ICS) & 1)))
			return NULL;
		uint32_t fsts = rd32(DMAR_FSTS);
		if (fsts & (FSTS_IQE | FSTS_ICE | FSTS_ITE)) {
			/* The unit stopped at the bad descriptor and would fetch
			 * it again once the error is cleared: drop the queue from
			 * there (IQT = IQH), then clear it. */
			unsigned head = (rd64(DMAR_IQH) >> 4) & 0x7FFF;
			ksnprintf(why, sizeof(why), "FSTS 0x%x, IQH %u, IQT %u: queue emptied", fsts,
				  head, iommu.iq_tail);
			wr64(DMAR_IQT, (uint64_t)head << 4);
			iommu.iq_tail = head & (IQ_ENTRIES - 1);
			wr32(DMAR_FSTS, fsts & (FSTS_IQE | FSTS_ICE | FSTS_ITE));
			return why;
		}
		if (i == 0)
			end = tsc_deadline_us(200000);
		else if (tsc_passed(end))
			return intr ? "wait descriptor: no completion interrupt / ICS.IWC"
				    : "wait descriptor: status never written";
		udelay(2);
	}
}

const char *iommu_inv_context(int gran, uint16_t did, uint16_t sid)
{
	if (iommu.lent_to)
		return IOMMU_LENT_ERR;
	if (!iommu.qi)
		return iommu_reg_ccmd(gran, did, sid, NULL);
	if (!iommu_qi_room(2))
		return "invalidation queue full";
	iommu_qi_push_context(gran, did, sid);
	return iommu_qi_wait(false);
}

const char *iommu_inv_iotlb(int gran, uint16_t did, uint64_t addr, unsigned am)
{
	if (iommu.lent_to)
		return IOMMU_LENT_ERR;
	if (!iommu.qi)
		return iommu_reg_iotlb(gran, did, addr, am, NULL);
	if (!iommu_qi_room(2))
		return "invalidation queue full";
	iommu_qi_push_iotlb(gran, did, addr, am);
	return iommu_qi_wait(false);
}

/* ---- lending the unit to a process (benchmark only) ------------------- */

/*
 * user.c maps the register page and the queue into the process; here the
 * driver's side: queued invalidation as the process asked (the spec forbids
 * register commands while it is on), the queue empty, and from then on the
 * kernel keeps its hands off (the guards above) until iommu_take_back.
 */
const char *iommu_lend(int pid, bool qi)
{
	if (iommu.lent_to)
		return IOMMU_LENT_ERR;
	if (!iommu.enabled)
		return "translation is off";
	if (qi && !ECAP_QI(iommu.ecap))
		return "ECAP.QI = 0: no queued invalidation";
	bool was = iommu.qi;
	const char *err = iommu_qi_set(qi);
	if (err)
		return err;
	if (qi && ((rd64(DMAR_IQH) >> 4) & 0x7FFF) != iommu.iq_tail) {
		iommu_qi_set(was);
		return "invalidation queue not empty";
	}
	iommu.lend_qi_was = was;
	__atomic_store_n(&iommu.lent_to, pid, __ATOMIC_SEQ_CST);
	return NULL;
}

const char *iommu_take_back(void)
{
	static char why[96];
	const char *err = NULL;
	if (!iommu.lent_to)
		return NULL;
	bool qi = rd32(DMAR_GSTS) & GCMD_QIE;
	uint64_t end = tsc_deadline_us(100000), last;
	if (qi) {
		/* Let what the process queued finish; a bad descriptor stops the
		 * queue with IQH at it: drop the rest (IQT = IQH), then clear the
		 * error so that the queue runs again. */
		unsigned head, tail;
		for (;;) {
			head = (rd64(DMAR_IQH) >> 4) & 0x7FFF;
			tail = (rd64(DMAR_IQT) >> 4) & 0x7FFF;
			uint32_t fsts = rd32(DMAR_FSTS);
			bool stuck = fsts & (FSTS_IQE | FSTS_ICE | FSTS_ITE);
			if (head == tail && !stuck)
				break;
			if (stuck || tsc_passed(end)) {
				ksnprintf(why, sizeof(why), "queue %s (FSTS 0x%x, IQH %u, IQT %u): emptied",
					  stuck ? "error" : "did not drain", fsts, head, tail);
				err = why;
				wr64(DMAR_IQT, (uint64_t)head << 4);
				wr32(DMAR_FSTS, fsts & (FSTS_IQE | FSTS_ICE | FSTS_ITE));
				tail = head;
				break;
			}
			udelay(10);
		}
		iommu.iq_tail = tail & (IQ_ENTRIES - 1);
	} else {
		/* A register command the process left running. */
		if (!poll64_clear(iommu.iro + 8, 1ULL << 63, &last) ||
		    !poll64_clear(DMAR_CCMD, 1ULL << 63, &last))
			err = "a register invalidation did not complete";
	}
	iommu.qi = qi;
	__atomic_store_n(&iommu.lent_to, 0, __ATOMIC_SEQ_CST);
	const char *e2 = iommu_qi_set(iommu.lend_qi_was);
	return err ? err : e2;
}

/* ---- interrupts -------------------------------------------------------- */

static const char *const reasons[] = {
	"?", "root entry not present", "context entry not present", "invalid context entry",
	"address beyond MGAW", "write not permitted", "read not permitted",
	"paging entry access failed", "root table access failed", "context table access failed",
	"reserved bit in root entry", "reserved bit in context entry",
	"reserved bit in paging entry", "translation type blocked",
};

static const char *reason_name(uint8_t r)
{
	return r < ARRAY_SIZE(reasons) ? reasons[r] : "other";
}

static void print_fault(const struct iommu_fault *f)
{
	kprintf("DMAR fault: %s of 0x%lx by %02x:%02x.%x, reason %u (%s)\n",
		f->read ? "read" : "write", f->addr, f->sid >> 8, (f->sid >> 3) & 31, f->sid & 7,
		f->reason, reason_name(f->reason));
}

static void fault_irq(struct trapframe *tf)
{
	iommu.fault_irqs++;
	uint32_t fsts = rd32(DMAR_FSTS);
	iommu.last_fsts = fsts;
	unsigned i = (fsts >> 8) & 0xFF;
	for (unsigned n = 0; n < iommu.nfr; n++, i = (i + 1) % iommu.nfr) {
		unsigned off = iommu.fro + 16 * i;
		uint64_t hi = rd64(off + 8);
		if (!(hi >> 63))
			continue;
		uint64_t lo = rd64(off);
		struct iommu_fault *f = &iommu.faults[iommu.nfaults % IOMMU_FAULT_LOG];
		f->sid = hi & 0xFFFF;
		f->reason = (hi >> 32) & 0xFF;
		f->read = (hi >> 62) & 1;
		f->addr = lo & ~0xFFFULL;
		f->tsc = rdtsc();
		iommu.nfaults++;
		wr32(off + 12, 0x80000000u);            /* F is write-1-to-clear */
		if (!iommu.quiet)
			print_fault(f);
	}
	/* A queue error stops the queue at the bad descriptor, and clearing it
	 * here would restart it there: the error and this interrupt again, for
	 * ever. The queue's owner clears it once it has dropped the bad
	 * descriptor (iommu_qi_wait, or iommu_take_back for a lent unit). */
	uint32_t clear = fsts & FSTS_W1C & ~(FSTS_IQE | FSTS_ICE | FSTS_ITE);
	if (clear)
		wr32(DMAR_FSTS, clear);
	if ((fsts & (FSTS_IQE | FSTS_ITE | FSTS_ICE)) && !iommu.quiet)
		kprintf("DMAR: invalidation queue error, FSTS 0x%x\n", fsts);
}

static void inv_irq(struct trapframe *tf)
{
	iommu.inv_irqs++;
	uint32_t ics = rd32(DMAR_ICS);
	iommu.last_ics = ics;
	if (ics & 1)
		wr32(DMAR_ICS, 1);                      /* IWC is write-1-to-clear */
}

void iommu_print_faults(void)
{
	unsigned n = iommu.nfaults;
	kprintf("%u faults recorded, %u fault interrupts\n", n, iommu.fault_irqs);
	for (unsigned i = n > IOMMU_FAULT_LOG ? n - IOMMU_FAULT_LOG : 0; i < n; i++)
		print_fault(&iommu.faults[i % IOMMU_FAULT_LOG]);
}

/* ---- enable -------------------------------------------------------------- */

const char *iommu_enable(void)
{
	const char *err = iommu_probe();
	if (err)
		return err;
	if (iommu.enabled)
		return NULL;
	if (!iommu.root && !(iommu.root = page_alloc()))
		return "out of pages";
	if (!ECAP_PT(iommu.ecap) && (err = build_identity()))
		return err;

	/* Every function in scope passes through (domain 1), as in Akaros. */
	pci_scan();
	for (int i = 0; i < pci_ndevs; i++) {
		const struct pci_dev *d = &pci_devs[i];
		if (drhd_covers(iommu.drhd, d->bus, d->dev, d->fn) &&
		    (err = iommu_set_passthrough(d->bus, d->dev << 3 | d->fn)))
			return err;
	}

	wr64(DMAR_RTADDR, virt_to_phys(iommu.root));       /* legacy mode (TTM 0) */
	if (!gcmd(GCMD_SRTP, true))
		return "GSTS.RTPS did not set";

	/* Fault and invalidation events: MSIs to core 0. */
	irq_register(VEC_IOMMU_FAULT, fault_irq);
	irq_register(VEC_IOMMU_INV, inv_irq);
	uint32_t dest = cpus[0].apic_id;
	wr32(DMAR_FEDATA, VEC_IOMMU_FAULT);
	wr32(DMAR_FEADDR, msi_addr(dest));
	wr32(DMAR_FEUADDR, 0);
	wr32(DMAR_IEDATA, VEC_IOMMU_INV);
	wr32(DMAR_IEADDR, msi_addr(dest));
	wr32(DMAR_IEUADDR, 0);
	for (unsigned i = 0; i < iommu.nfr; i++)
		if (rd64(iommu.fro + 16 * i + 8) >> 63)
			wr32(iommu.fro + 16 * i + 12, 0x80000000u);
	wr32(DMAR_FSTS, FSTS_W1C);
	wr32(DMAR_ICS, 1);
	wr32(DMAR_FECTL, 0);
	wr32(DMAR_IECTL, 0);

	if (iommu.qi) {
		iommu_qi_push_context(INV_GLOBAL, 0, 0);
		iommu_qi_push_iotlb(INV_GLOBAL, 0, 0, 0);
		if ((err = iommu_qi_wait(false)))
			return err;
	} else {
		if ((err = iommu_reg_ccmd(INV_GLOBAL, 0, 0, NULL)))
			return err;
		if ((err = iommu_reg_iotlb(INV_GLOBAL, 0, 0, 0, NULL)))
			return err;
	}
	if (!gcmd(GCMD_TE, true))
		return "GSTS.TES did not set";
	iommu.enabled = true;
	return NULL;
}

void iommu_disable(void)
{
	if (!iommu.enabled)
		return;
	gcmd(GCMD_TE, false);
	iommu.enabled = false;
}

/* ---- the `iommu` command ------------------------------------------------ */

void iommu_print(void)
{
	const char *err = iommu_probe();
	if (err) {
		kprintf("iommu: none (%s)\n", err);
		return;
	}
	const struct dmar_drhd *d = iommu.drhd;
	uint64_t c = iommu.cap, e = iommu.ecap;
	kprintf("DRHD %d of %d: registers at 0x%lx, %s, DMAR host address width %u\n",
		iommu.drhd_index, acpi.ndrhd, d->base,
		d->flags & 1 ? "INCLUDE_PCI_ALL" : "explicit device scopes", acpi.dmar_haw);
	kprintf("VER %u.%u\n", (iommu.ver >> 4) & 0xF, iommu.ver & 0xF);
	kprintf("CAP  0x%016lx: ND %lu (%lu domains) AFL %lu RWBF %lu PLMR %lu PHMR %lu CM %lu\n",
		c, CAP_ND(c), 1UL << (4 + 2 * CAP_ND(c)), (c >> 3) & 1, CAP_RWBF(c), (c >> 5) & 1,
		(c >> 6) & 1, CAP_CM(c));
	kprintf("     SAGAW 0x%lx (%s%s%s) MGAW %lu ZLR %lu FRO 0x%lx NFR %lu\n", CAP_SAGAW(c),
		CAP_SAGAW(c) & 2 ? "39-bit/3-level " : "", CAP_SAGAW(c) & 4 ? "48-bit/4-level " : "",
		CAP_SAGAW(c) & 8 ? "57-bit/5-level " : "", CAP_MGAW(c), (c >> 22) & 1,
		(uint64_t)CAP_FRO(c), CAP_NFR(c));
	kprintf("     SLLPS 0x%lx (%s%s) PSI %lu MAMV %lu DWD %lu DRD %lu FL1GP %lu PI %lu FL5LP %lu\n",
		CAP_SLLPS(c), CAP_SLLPS(c) & 1 ? "2M " : "", CAP_SLLPS(c) & 2 ? "1G" : "",
		CAP_PSI(c), CAP_MAMV(c), CAP_DWD(c), CAP_DRD(c), (c >> 56) & 1, (c >> 59) & 1,
		(c >> 60) & 1);
	kprintf("ECAP 0x%016lx: C %lu QI %lu DT %lu IR %lu EIM %lu PT %lu SC %lu IRO 0x%lx MHMV %lu"
		" SMTS %lu PASID %lu\n", e, ECAP_C(e), ECAP_QI(e), ECAP_DT(e), ECAP_IR(e), ECAP_EIM(e),
		ECAP_PT(e), ECAP_SC(e), (uint64_t)ECAP_IRO(e), ECAP_MHMV(e), (e >> 43) & 1,
		(e >> 40) & 1);
	uint32_t g = rd32(DMAR_GSTS);
	kprintf("GSTS 0x%08x:%s%s%s%s%s  FSTS 0x%x  FECTL 0x%x  IECTL 0x%x\n", g,
		g & GCMD_TE ? " TES" : "", g & GCMD_SRTP ? " RTPS" : "", g & GCMD_QIE ? " QIES" : "",
		g & GCMD_IRE ? " IRES" : "", g & GCMD_CFI ? " CFIS" : "", rd32(DMAR_FSTS),
		rd32(DMAR_FECTL), rd32(DMAR_IECTL));
	kprintf("driver: translation %s, %d-level tables, %s invalidation, pass-through by %s\n",
		iommu.enabled ? "on" : "off", iommu.levels, iommu.qi ? "queued" : "register-based",
		ECAP_PT(e) ? "TT=2" : "identity domain");
	kprintf("  %lu register invalidations, %lu queued descriptors, %lu waits; %u faults, "
		"%u fault irqs, %u invalidation irqs\n", iommu.inv_reg, iommu.inv_qi_desc,
		iommu.inv_qi_waits, iommu.nfaults, iommu.fault_irqs, iommu.inv_irqs);
	if (iommu.lent_to)
		kprintf("  lent to pid %d for a benchmark: the kernel issues no invalidations\n",
			iommu.lent_to);
	pci_scan();
	int n = 0;
	for (int i = 0; i < pci_ndevs; i++) {
		const struct pci_dev *p = &pci_devs[i];
		if (!drhd_covers(d, p->bus, p->dev, p->fn))
			continue;
		if (!n++)
			kprintf("  in scope:");
		kprintf(" %02x:%02x.%x", p->bus, p->dev, p->fn);
		if (iommu.ctx[p->bus]) {
			uint64_t *ce = iommu.ctx[p->bus] + 2 * (p->dev << 3 | p->fn);
			if (ce[0] & 1)
				kprintf("(TT%lu,d%lu)", (ce[0] >> 2) & 3, (ce[1] >> 8) & 0xFFFF);
		}
	}
	if (n)
		kprintf("\n");
}
