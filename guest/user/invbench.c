/*
 * invbench [bench|qi|reg|contend|hold MS|bad|kill]: IOTLB invalidation timed from
 * ring 3 with rdtsc.  The kernel lends this process the VT-d unit
 * (iommu_lend, benchmark only: uapi.h): the register page, uncached, and in
 * queued mode the kernel's invalidation queue, mapped here.  On kvm_pvm
 * hosts ring 3 runs natively while ring 0 is emulated, so these figures
 * are the VMM's cost (the exit and the invalidation), not the emulator's.
 *
 *   user-iommu-inv-qi-1        one page-selective IOTLB descriptor and one
 *                              wait descriptor (status write), IQT written,
 *                              status polled: per round trip
 *   user-iommu-inv-qi-batchN   N page-selective descriptors and one wait,
 *                              per invalidation (N = 8, 32, 128 and the
 *                              most the queue holds with the wait)
 *   user-iommu-inv-reg-domain  IOTLB register (domain), poll IVT clear
 *   user-iommu-inv-reg-page    IVA + IOTLB register (page), poll IVT clear
 *
 * Wait descriptors carry SW only (QEMU 7.2 asserts on SW together with IF).
 * The invalidations are in domain = pid at IOVAs nothing maps.
 *
 * contend: whether one vCPU ringing the invalidation queue holds up another
 * vCPU's exits that the VMM completes without its device models (port 0x80):
 *   user-fastexit-alone        one outb to port 0x80, this core alone
 *   user-fastexit-with-qi      the same while a second core of this process
 *                              rings the queue nonstop with the largest
 *                              batch of page descriptors and a wait
 * The two figures should be equal: the VMM must not serialise the exits.
 *
 * hold MS, bad, kill: the loan's end by exit or kill (self-tests of the
 * kernel's take-back): hold keeps the unit MS milliseconds and exits
 * without giving it back; bad queues an invalid descriptor (FSTS.IQE) and
 * exits; kill leaves descriptors queued without IQT and faults.
 */
#include "ulib.h"

#define DESC_IOTLB      2ULL
#define DESC_WAIT       5ULL
#define G_DOMAIN        2ULL
#define G_PAGE          3ULL
#define WAIT_SW         (1ULL << 5)
#define IOTLB_IVT       (1ULL << 63)
#define FSTS_QERR       0x70u           /* IQE, ICE, ITE */
#define CAP_PSI(c)      (((c) >> 39) & 1)
#define IOVA_BASE       0x10000000ULL   /* nothing maps it in domain pid */
#define BOX_MS          200             /* each figure: at least 8 rounds, up to this long */

/* No writable globals: the programs are one RWX-free segment each. */
struct unit {
	struct iommu_lend l;
	volatile uint8_t *regs;
	volatile uint64_t *q;
	volatile uint32_t *status;
	uint32_t tail, seq;
	uint64_t khz, pdesc;
	int pid;
};

static inline uint64_t rd64(struct unit *u, uint32_t off) { return *(volatile uint64_t *)(u->regs + off); }
static inline uint32_t rd32(struct unit *u, uint32_t off) { return *(volatile uint32_t *)(u->regs + off); }
static inline void wr64(struct unit *u, uint32_t off, uint64_t v) { *(volatile uint64_t *)(u->regs + off) = v; }

static void report(struct unit *u, const char *name, uint64_t ops, uint64_t cycles)
{
	printf("BENCH %s iterations=%lu cycles_per_op=%lu ns_per_op=%lu\n", name, ops, cycles / ops,
	       cycles * 1000000 / u->khz / ops);
}

/* Keep going: at least 8 rounds, then until max rounds or BOX_MS. */
static bool more(struct unit *u, uint64_t t0, uint64_t rounds, uint64_t max)
{
	return rounds < 8 || (rounds < max && rdtsc() - t0 < BOX_MS * u->khz);
}

static const char *lend_error(long r)
{
	return r == IOMMU_LEND_ENODEV ? "no VT-d unit" :
	       r == IOMMU_LEND_ENOQI ? "no queued invalidation (ECAP.QI = 0)" :
	       r == IOMMU_LEND_EBUSY ? "the VT-d unit is busy (a process owns a device behind it)" :
	       "refused";
}

static long lend(struct unit *u, int mode)
{
	memset(&u->l, 0, sizeof(u->l));
	u->l.status_va = (uint64_t)(uintptr_t)u->status;
	long r = iommu_lend(mode, &u->l);
	if (r < 0)
		return r;
	u->regs = (volatile uint8_t *)u->l.regs;
	u->q = (volatile uint64_t *)u->l.queue;
	u->tail = u->l.tail;
	u->pdesc = DESC_IOTLB | G_PAGE << 4 | (uint64_t)u->l.did << 16 | u->l.desc_drain;
	if (mode == IOMMU_LEND_QI)
		printf("invbench: pid %d: VT-d unit lent (queued): registers at %p, queue of %u "
		       "descriptors at %p, tail %u, domain %u\n", u->pid, (void *)u->regs,
		       u->l.entries, (void *)u->q, u->tail, u->l.did);
	else
		printf("invbench: pid %d: VT-d unit lent (registers): registers at %p, IVA at 0x%x, "
		       "IOTLB at 0x%x, domain %u\n", u->pid, (void *)u->regs, u->l.iva, u->l.iotlb,
		       u->l.did);
	return r;
}

static void push(struct unit *u, uint64_t lo, uint64_t hi)
{
	volatile uint64_t *d = u->q + 2 * u->tail;
	d[0] = lo;
	d[1] = hi;
	u->tail = (u->tail + 1) & (u->l.entries - 1);
}

/* A wait descriptor (status write of a fresh sequence number), IQT, then
 * poll the status word: 0, or -1 on a queue error, -2 after a second. */
static int wait(struct unit *u)
{
	uint32_t seq = ++u->seq;
	if (!seq)
		seq = ++u->seq;
	push(u, DESC_WAIT | WAIT_SW | (uint64_t)seq << 32, u->l.status_pa);
	wr64(u, u->l.iqt, (uint64_t)u->tail << 4);
	uint64_t end = 0;
	while (*u->status != seq) {
		if (rd32(u, u->l.fsts) & FSTS_QERR)
			return -1;
		if (!end)
			end = rdtsc() + 1000 * u->khz;
		else if (rdtsc() > end)
			return -2;
	}
	return 0;
}

static int wait_failed(struct unit *u, const char *name, int err)
{
	printf("BENCH %s: %s (FSTS 0x%x, IQH %lu, IQT %lu)\n", name,
	       err == -1 ? "invalidation queue error" : "status never written", rd32(u, u->l.fsts),
	       (rd64(u, u->l.iqh) >> 4) & 0x7FFF, (rd64(u, u->l.iqt) >> 4) & 0x7FFF);
	return 1;
}

static int bench_qi(struct unit *u)
{
	long r = lend(u, IOMMU_LEND_QI);
	if (r < 0) {
		printf("BENCH user-iommu-inv-qi skipped: %s\n", lend_error(r));
		return r == IOMMU_LEND_ENOQI ? 0 : 1;
	}
	int bad = 0, err;
	if (!CAP_PSI(u->l.cap)) {
		printf("BENCH user-iommu-inv-qi skipped: no page-selective invalidation (CAP.PSI = 0)\n");
		goto out;
	}
	push(u, u->pdesc, IOVA_BASE);                   /* warm up */
	if ((err = wait(u))) {
		bad = wait_failed(u, "user-iommu-inv-qi-1", err);
		goto out;
	}
	uint64_t n, t0 = rdtsc();
	for (n = 0; more(u, t0, n, 100000); n++) {
		push(u, u->pdesc, IOVA_BASE + ((n & 255) << 12));
		if ((err = wait(u))) {
			bad = wait_failed(u, "user-iommu-inv-qi-1", err);
			goto out;
		}
	}
	report(u, "user-iommu-inv-qi-1", n, rdtsc() - t0);
	/* The largest batch: the queue holds entries - 1 descriptors (IQT
	 * one short of IQH), the wait among them. */
	unsigned sizes[] = { 8, 32, 128, u->l.entries - 2 };
	for (unsigned s = 0; s < 4; s++) {
		unsigned per = sizes[s];
		char name[40];
		snprintf(name, sizeof(name), "user-iommu-inv-qi-batch%u", per);
		if (s == 3 && per <= 128)
			break;
		t0 = rdtsc();
		for (n = 0; more(u, t0, n, 20000); n++) {
			for (unsigned i = 0; i < per; i++)
				push(u, u->pdesc, IOVA_BASE + ((uint64_t)i << 12));
			if ((err = wait(u))) {
				bad = wait_failed(u, name, err);
				goto out;
			}
		}
		report(u, name, n * per, rdtsc() - t0);
	}
out:
	if (iommu_lend(IOMMU_LEND_RETURN, NULL) != 0) {
		printf("invbench: giving the VT-d unit back failed\n");
		bad = 1;
	}
	return bad;
}

/* One register-based IOTLB invalidation: IVA (page granularity), the
 * command, IVT polled until clear.  IAIG (what was done), or -1. */
static int reg_inv(struct unit *u, uint64_t cmd, uint64_t iva)
{
	if ((cmd >> 60 & 3) == G_PAGE)
		wr64(u, u->l.iva, iva);
	wr64(u, u->l.iotlb, cmd);
	uint64_t v, end = 0;
	while ((v = rd64(u, u->l.iotlb)) & IOTLB_IVT) {
		if (!end)
			end = rdtsc() + 1000 * u->khz;
		else if (rdtsc() > end)
			return -1;
	}
	return (v >> 57) & 3;
}

static int bench_reg(struct unit *u)
{
	long r = lend(u, IOMMU_LEND_REG);
	if (r < 0) {
		printf("BENCH user-iommu-inv-reg skipped: %s\n", lend_error(r));
		return 1;
	}
	int bad = 0;
	uint64_t base = IOTLB_IVT | (uint64_t)u->l.did << 32 | u->l.reg_drain;
	for (int page = 0; page < 2 && !bad; page++) {
		const char *name = page ? "user-iommu-inv-reg-page" : "user-iommu-inv-reg-domain";
		uint64_t cmd = base | (page ? G_PAGE : G_DOMAIN) << 60;
		if (page && !CAP_PSI(u->l.cap)) {
			printf("BENCH %s skipped: no page-selective invalidation (CAP.PSI = 0)\n", name);
			break;
		}
		int want = page ? G_PAGE : G_DOMAIN, got = reg_inv(u, cmd, IOVA_BASE);   /* warm up */
		uint64_t n, t0 = rdtsc();
		for (n = 0; got == want && more(u, t0, n, 100000); n++)
			got = reg_inv(u, cmd, IOVA_BASE + ((n & 255) << 12));
		uint64_t t = rdtsc() - t0;
		if (got != want) {
			printf("BENCH %s: %s (IOTLB 0x%lx, GSTS 0x%x)\n", name,
			       got < 0 ? "IVT did not clear" : "IAIG is not the granularity asked for",
			       rd64(u, u->l.iotlb), rd32(u, u->l.gsts));
			bad = 1;
		} else {
			report(u, name, n, t);
		}
	}
	if (iommu_lend(IOMMU_LEND_RETURN, NULL) != 0) {
		printf("invbench: giving the VT-d unit back failed\n");
		bad = 1;
	}
	return bad;
}

/* The second core of `contend`: full batches and a wait until told to stop. */
struct ringer {
	struct unit *u;
	volatile int running, stop, failed;
	volatile uint64_t rings;
};

static void ring_nonstop(void *arg, int core)
{
	struct ringer *r = arg;
	struct unit *u = r->u;
	r->running = 1;
	while (!r->stop) {
		for (unsigned i = 0; i < u->l.entries - 2; i++)
			push(u, u->pdesc, IOVA_BASE + ((uint64_t)i << 12));
		if (wait(u)) {
			r->failed = 1;
			break;
		}
		r->rings++;
	}
	r->running = 0;
	core_yield();
}

static uint64_t time_outb(struct unit *u, const char *name)
{
	uint64_t n, t0 = rdtsc();
	for (n = 0; n < 1000 || rdtsc() - t0 < BOX_MS * u->khz; n++)
		outb(0x80, (uint8_t)n);
	uint64_t t = rdtsc() - t0;
	report(u, name, n, t);
	return t / n;
}

static int bench_contend(struct unit *u)
{
	if (ioperm(0x80, 1, 1) != 0) {
		printf("BENCH user-fastexit skipped: ioperm refused\n");
		return 1;
	}
	long r = lend(u, IOMMU_LEND_QI);
	if (r < 0) {
		printf("BENCH user-fastexit skipped: %s\n", lend_error(r));
		return r == IOMMU_LEND_ENOQI ? 0 : 1;
	}
	struct ringer ring = { .u = u };
	uint8_t *stack = mmap(4 * PAGE_SIZE);
	int bad = 0;
	time_outb(u, "user-fastexit-alone");
	if (stack == MAP_FAILED || core_request(ring_nonstop, stack + 4 * PAGE_SIZE, &ring) < 0) {
		printf("BENCH user-fastexit-with-qi skipped: no second core\n");
		goto out;
	}
	uint64_t end = rdtsc() + 1000 * u->khz;
	while (!ring.running && rdtsc() < end)
		cpu_pause();
	uint64_t before = ring.rings;
	time_outb(u, "user-fastexit-with-qi");
	uint64_t rings = ring.rings - before;
	ring.stop = 1;
	end = rdtsc() + 1000 * u->khz;
	while (ring.running && rdtsc() < end)
		cpu_pause();
	if (ring.failed || !rings) {
		printf("BENCH user-fastexit-with-qi: the second core %s\n",
		       ring.failed ? "got a queue error" : "rang no batch meanwhile");
		bad = 1;
	} else {
		printf("invbench: %lu batches of %u descriptors rung meanwhile\n", rings,
		       u->l.entries - 2);
	}
out:
	if (iommu_lend(IOMMU_LEND_RETURN, NULL) != 0) {
		printf("invbench: giving the VT-d unit back failed\n");
		bad = 1;
	}
	return bad;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "bench";
	struct unit u;
	memset(&u, 0, sizeof(u));
	u.pid = getpid();
	u.khz = tsc_khz();
	if (!u.khz)
		u.khz = 1000000;
	u.status = mmap(PAGE_SIZE);
	if ((void *)u.status == MAP_FAILED)
		return 2;
	if (!strcmp(mode, "contend"))
		return bench_contend(&u);
	if (!strcmp(mode, "bench") || !strcmp(mode, "qi") || !strcmp(mode, "reg")) {
		int bad = 0;
		if (strcmp(mode, "reg"))
			bad |= bench_qi(&u);
		if (strcmp(mode, "qi"))
			bad |= bench_reg(&u);
		return bad;
	}
	long r = lend(&u, IOMMU_LEND_QI);
	if (r == IOMMU_LEND_ENOQI && !strcmp(mode, "hold"))
		r = lend(&u, IOMMU_LEND_REG);
	if (r < 0) {
		printf("invbench: iommu_lend: %s\n", lend_error(r));
		return 3;
	}
	if (!strcmp(mode, "hold")) {
		uint64_t ms = argc > 2 ? (uint64_t)atol(argv[2]) : 1000;
		printf("invbench: pid %d holds the VT-d unit for %lu ms\n", u.pid, ms);
		uint64_t end = rdtsc() + ms * u.khz;
		while (rdtsc() < end)
			cpu_pause();
		return 0;                       /* exit gives it back */
	}
	if (!strcmp(mode, "bad")) {
		unsigned at = u.tail;
		push(&u, 0xF, 0);               /* type 15: no such descriptor */
		if (wait(&u) != -1) {
			printf("invbench: no queue error for an invalid descriptor\n");
			return 4;
		}
		printf("invbench: pid %d: invalid descriptor at %u: FSTS 0x%x, IQH %lu; exiting "
		       "with the unit\n", u.pid, at, rd32(&u, u.l.fsts), (rd64(&u, u.l.iqh) >> 4) & 0x7FFF);
		return 0;
	}
	if (!strcmp(mode, "kill")) {
		for (int i = 0; i < 3; i++)
			push(&u, u.pdesc, IOVA_BASE + ((uint64_t)i << 12));   /* IQT not written */
		printf("invbench: pid %d: 3 descriptors queued, IQT not written; faulting\n", u.pid);
		return *(volatile int *)0x0000009000000000ULL;  /* unmapped: #PF kills us */
	}
	printf("invbench: unknown mode '%s'\n", mode);
	return 6;
}
