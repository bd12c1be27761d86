/* Self-tests of user processes (user.c): user-hello, -syscalls, -smp, -fault. */
#include "selftest.h"
#include "cpu.h"
#include "lib.h"
#include "proc.h"
#include "edu.h"
#include "ioat.h"
#include "iommu.h"
#include "timer.h"
#include "vm.h"

#define ST_KILLED(vec) (128 + (vec))

/* Create and run PROG on this core; the status, or -1000 (reason in st_why). */
static int run_here(struct proc **out, int argc, char **argv)
{
	const char *err;
	struct proc *p = proc_create(argv[0], argc, argv, &err);
	if (!p) {
		FAIL("%s: %s", argv[0], err);
		return -1000;
	}
	int st = proc_run(p);
	proc_report(p, st);
	if (out)
		*out = p;
	else
		proc_free(p);
	return st;
}

static const char *test_user_hello(void)
{
	long before = frames_available();
	char *a0[] = { "hello" }, *a1[] = { "hello", "7" };
	int st = run_here(NULL, 1, a0);
	if (st == -1000)
		return st_why;
	if (st != 0)
		return FAIL("hello exited with %d, want 0", st);
	if ((st = run_here(NULL, 2, a1)) != 7)
		return FAIL("hello 7 exited with %d, want 7", st);
	return frames_returned(before);
}

static const char *test_user_syscalls(void)
{
	struct proc *p;
	char *argv[] = { "syscalls" };
	int st = run_here(&p, 1, argv);
	if (st == -1000)
		return st_why;
	const char *err = NULL;
	if (p->kill_vector < 0)
		err = st < 100 && st > 0 ? FAIL("check %d in user/syscalls.c failed", st) :
		      FAIL("exited with %d instead of faulting after munmap", st);
	else if (p->kill_vector != 14 || st != ST_KILLED(14))
		err = FAIL("killed by vector %d (status %d), want #PF", p->kill_vector, st);
	else if (p->kill_addr < p->last_unmap || p->kill_addr >= p->last_unmap + 3 * 4096)
		err = FAIL("#PF at 0x%lx, the unmapped range starts at 0x%lx", p->kill_addr, p->last_unmap);
	proc_free(p);
	return err;
}

static const char *test_user_smp(void)
{
	int other = -1;
	for (int i = 0; i < MAX_CPUS; i++)
		if (cpus[i].online && i != this_cpu()->id) {
			other = i;
			break;
		}
	if (other < 0)
		return SKIP("needs 2 cores");
	const char *err;
	char *argv[] = { "smp", "2" };
	struct proc *a = proc_create("smp", 2, argv, &err);
	if (!a)
		return FAIL("smp: %s", err);
	struct proc *b = proc_create("smp", 2, argv, &err);
	if (!b) {
		proc_free(a);
		return FAIL("smp: %s", err);
	}
	if (!proc_start_on(a, other)) {
		proc_free(a);
		proc_free(b);
		return FAIL("core %d is busy", other);
	}
	int sb = proc_run(b);
	int sa = proc_wait(a, 10000000);
	err = NULL;
	if (sa == -1)
		err = FAIL("pid %d on core %d did not finish", a->pid, other);
	else if (sa != 0 || sb != 0)
		err = FAIL("exit status %d (core %d) and %d (core %d), want 0: they did not run at once",
			   sa, a->core, sb, b->core);
	else if (a->core == b->core)
		err = FAIL("both ran on core %d", a->core);
	if (sa != -1)
		proc_free(a);
	proc_free(b);
	return err;
}

static const char *test_user_fault(void)
{
	static const struct { const char *arg; int vec; uint64_t addr; } cases[] = {
		{ "pf", 14, 0x0000009000000000ULL },
		{ "kernel", 14, 0xFFFFFFFF80100000ULL },
		{ "wx", 14, 0 },
		{ "gp", 13, 0 },
		{ "ud", 6, 0 },
	};
	long before = frames_available();
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct proc *p;
		char *argv[] = { "fault", (char *)cases[i].arg };
		int st = run_here(&p, 2, argv);
		if (st == -1000)
			return st_why;
		int vec = p->kill_vector;
		uint64_t addr = p->kill_addr;
		proc_free(p);
		if (vec != cases[i].vec || st != ST_KILLED(cases[i].vec))
			return FAIL("fault %s: status %d, vector %d; want vector %d", cases[i].arg, st,
				    vec, cases[i].vec);
		if (cases[i].addr && addr != cases[i].addr)
			return FAIL("fault %s: address 0x%lx, want 0x%lx", cases[i].arg, addr, cases[i].addr);
		char *h[] = { "hello" };
		if ((st = run_here(NULL, 1, h)) != 0)
			return FAIL("hello after fault %s: status %d", cases[i].arg, st);
	}
	return frames_returned(before);
}

/* ---- processes on several cores (user/mcp.c) ---- */

static int other_core(void)
{
	for (int i = 0; i < MAX_CPUS; i++)
		if (cpus[i].online && i != this_cpu()->id)
			return i;
	return -1;
}

/* After a process ended: its cores are out of it and idle again. */
static const char *cores_idle(struct proc *p)
{
	if (p->cores)
		return FAIL("pid %d ended with cores 0x%lx still in it", p->pid, p->cores);
	uint64_t end = tsc_deadline_us(1000000);
	for (int i = 0; i < MAX_CPUS; i++)
		while (cpus[i].job == p)
			if (tsc_passed(end))
				return FAIL("core %d did not go back to idle", i);
	return NULL;
}

static int run_mcp(struct proc **out, const char *mode, const char *n)
{
	char *argv[] = { "mcp", (char *)mode, (char *)n };
	return run_here(out, n ? 3 : 2, argv);
}

static const char *test_user_cores(void)
{
	int other = other_core();
	if (other < 0)
		return SKIP("needs 2 cores");
	long before = frames_available();
	struct proc *p;
	const char *err = NULL;
	/* hello: the extra core runs our function in ring 3 and yields back. */
	int st = run_mcp(&p, "hello", "2");
	if (st == -1000)
		return st_why;
	if (st)
		err = FAIL("mcp hello 2: exit status %d (a check in user/mcp.c)", st);
	else if (p->ncores_started != 1)
		err = FAIL("mcp hello 2: %u cores started, want 1", p->ncores_started);
	else
		err = cores_idle(p);
	proc_free(p);
	if (err)
		return err;
	/* exit: the first core exits while the other spins in ring 3. */
	if ((st = run_mcp(&p, "exit", "2")) == -1000)
		return st_why;
	if (st)
		err = FAIL("mcp exit 2: exit status %d", st);
	else
		err = cores_idle(p);
	proc_free(p);
	if (err)
		return err;
	/* That core takes a new process. */
	const char *why;
	char *h[] = { "hello" };
	struct proc *q = proc_create("hello", 1, h, &why);
	if (!q)
		return FAIL("hello: %s", why);
	if (!proc_start_on(q, other)) {
		proc_free(q);
		return FAIL("core %d is still busy after mcp exit", other);
	}
	st = proc_wait(q, 10000000);
	if (st == -1)
		return FAIL("hello on core %d did not finish", other);
	proc_free(q);
	if (st)
		return FAIL("hello on core %d: exit status %d", other, st);
	/* fault: an exception on the extra core kills the whole process. */
	if ((st = run_mcp(&p, "fault", NULL)) == -1000)
		return st_why;
	if (st != ST_KILLED(14) || p->kill_vector != 14)
		err = FAIL("mcp fault: status %d, vector %d; want #PF", st, p->kill_vector);
	else if (p->kill_core == p->core || p->kill_addr != 0x0000009000000000ULL)
		err = FAIL("mcp fault: #PF on core %d at 0x%lx; want core != %d at 0x9000000000",
			   p->kill_core, p->kill_addr, p->core);
	else
		err = cores_idle(p);
	proc_free(p);
	if (err)
		return err;
	return frames_returned(before);
}

/*
 * mcp shootdown: core B reads a page in a loop, core A munmaps it.  The
 * munmap must IPI B and wait for its acknowledgement (B's shootdown count
 * goes up, the process's acks match its shootdowns), and B's next read
 * must fault at that page.  On hardware with a real TLB B would go on
 * reading the old frame without the IPI; on kvm_pvm the host's shadow
 * paging drops B's translation when the PTE is written, so there only the
 * IPI and acknowledgement counts catch a missing shootdown.
 */
static const char *test_user_shootdown(void)
{
	if (other_core() < 0)
		return SKIP("needs 2 cores");
	long before = frames_available();
	uint64_t shots[MAX_CPUS];
	for (int i = 0; i < MAX_CPUS; i++)
		shots[i] = cpus[i].shoot_count;
	struct proc *p;
	int st = run_mcp(&p, "shootdown", NULL);
	if (st == -1000)
		return st_why;
	int b = p->kill_core;
	const char *err = NULL;
	if (p->kill_vector < 0)
		err = st == 4 ? FAIL("the reader still read the page 2 s after munmap: its TLB was not shot down")
		    : FAIL("mcp shootdown: exit status %d (a check in user/mcp.c)", st);
	else if (p->kill_vector != 14 || st != ST_KILLED(14))
		err = FAIL("killed by vector %d (status %d), want #PF", p->kill_vector, st);
	else if (b == p->core || b < 0)
		err = FAIL("the #PF was on core %d, the unmapping core; want the reader's", b);
	else if (p->kill_addr != p->last_unmap)
		err = FAIL("#PF at 0x%lx, the page unmapped is 0x%lx", p->kill_addr, p->last_unmap);
	else if (!p->shootdowns || p->shoot_acks < p->shootdowns)
		err = FAIL("munmap sent %u shootdowns, %u acknowledged", p->shootdowns, p->shoot_acks);
	else if (cpus[b].shoot_count == shots[b])
		err = FAIL("core %d never ran the shootdown handler", b);
	else
		err = cores_idle(p);
	if (!err)
		kprintf("user-shootdown: core %d unmapped 0x%lx; core %d acknowledged %u shootdown IPI(s), "
			"then faulted there\n", p->core, p->last_unmap, b, p->shoot_acks);
	proc_free(p);
	return err ? err : frames_returned(before);
}

/* ---- device assignment (user/edudma.c): need --device edu --iommu vtd ---- */

#define FAULT_IOVA      0x0F000000ULL   /* user/edudma.c has the same */

/* Translation on, and d (what: its name) behind the IOMMU. */
static const char *iommu_covering(const struct pci_dev *d, const char *what)
{
	const char *err;
	if ((err = iommu_probe()))
		return SKIP("no IOMMU: %s", err);
	if ((err = iommu_enable()))
		return FAIL("enabling translation: %s", err);
	if (!iommu_covers(d->bus, d->dev, d->fn))
		return SKIP("%s is not in the DRHD's device scope", what);
	return NULL;
}

static const char *need_edu_iommu(void)
{
	const char *err = edu_probe();
	if (err)
		return SKIP("%s", err);
	return iommu_covering(edu.pci, "edu");
}

/* d's context entry is the kernel's pass-through (or identity) one. */
static const char *ctx_passthrough(const struct pci_dev *d)
{
	uint64_t *e = iommu.ctx[d->bus] + 2 * (d->dev << 3 | d->fn);
	unsigned tt = (e[0] >> 2) & 3, did = (e[1] >> 8) & 0xFFFF;
	if (!(e[0] & 1))
		return FAIL("edu context entry not present");
	if (did != 1)
		return FAIL("edu context entry has domain %u, want 1 (pass-through)", did);
	if (ECAP_PT(iommu.ecap) ? tt != TT_PASSTHROUGH
	    : tt != TT_UNTRANSLATED || (e[0] & ~0xFFFULL) != virt_to_phys(iommu.identity.top))
		return FAIL("edu context entry 0x%lx:%lx is not pass-through", e[1], e[0]);
	return NULL;
}

static const char *edu_ctx_passthrough(void)
{
	return ctx_passthrough(edu.pci);
}

/* What assign wrote: TT=0, domain = pid. */
static const char *check_assigned(struct proc *p)
{
	unsigned tt = (p->assigned_ctx[0] >> 2) & 3, did = (p->assigned_ctx[1] >> 8) & 0xFFFF;
	if (!(p->assigned_ctx[0] & 1) || tt != TT_UNTRANSLATED || did != (unsigned)p->pid)
		return FAIL("context entry at assign 0x%lx:%lx: TT %u domain %u, want TT 0 domain %d",
			    p->assigned_ctx[1], p->assigned_ctx[0], tt, did, p->pid);
	return NULL;
}

static int run_edudma(struct proc **out, const char *mode)
{
	char *argv[] = { "edudma", (char *)mode };
	return run_here(out, 2, argv);
}

/* edudma MODE with `iommu noflush` on for the run (munmap skips the IOTLB). */
static int run_edudma_noflush(struct proc **out, const char *mode)
{
	bool saved = iommu_noflush;
	iommu_noflush = true;
	int st = run_edudma(out, mode);
	iommu_noflush = saved;
	return st;
}

static const char *test_user_edu_dma(void)
{
	const char *err = need_edu_iommu();
	if (err)
		return err;
	long before = frames_available();
	struct proc *p;
	int st = run_edudma(&p, "dma");
	if (st == -1000)
		return st_why;
	if (st)
		err = FAIL("edudma dma: exit status %d (a check in user/edudma.c)", st);
	else
		err = check_assigned(p);
	proc_free(p);
	if (!err)
		err = edu_ctx_passthrough();
	return err ? err : frames_returned(before);
}

/* Runs edudma MODE with faults recorded quietly; a fault by the edu at the
 * IOVA (fault_at(p)) must appear within 500 ms. */
static const char *expect_fault(const char *mode, uint64_t (*fault_at)(struct proc *))
{
	const char *err = need_edu_iommu();
	if (err)
		return err;
	bool nf_saved = iommu_noflush;
	iommu_noflush = false;
	unsigned nf = iommu.nfaults;
	iommu.quiet = true;
	struct proc *p;
	int st = run_edudma(&p, mode);
	iommu_noflush = nf_saved;
	if (st == -1000) {
		iommu.quiet = false;
		return st_why;
	}
	uint64_t want = fault_at(p);
	uint64_t end = tsc_deadline_us(500000);
	while (iommu.nfaults == nf && !tsc_passed(end))
		udelay(20);
	iommu.quiet = false;
	if (st)
		err = FAIL("edudma %s: exit status %d", mode, st);
	else if (!(err = check_assigned(p)) && !strcmp(mode, "munmap") && !p->iotlb_page_invs)
		err = FAIL("munmap did not invalidate the IOTLB");
	proc_free(p);
	if (err)
		return err;
	if (iommu.nfaults == nf)
		return FAIL("no DMAR fault recorded for the DMA to 0x%lx", want);
	kprintf("user-edu-%s: ", mode);
	iommu_print_faults();
	for (unsigned i = nf; i < iommu.nfaults; i++) {
		const struct iommu_fault *f = &iommu.faults[i % IOMMU_FAULT_LOG];
		if (f->sid == edu_sid() && f->addr == want && !f->read)
			return edu_ctx_passthrough();
	}
	return FAIL("no write fault by the edu at 0x%lx among the %u recorded", want, iommu.nfaults - nf);
}

static uint64_t fault_iova(struct proc *p) { return FAULT_IOVA; }
static uint64_t unmapped_iova(struct proc *p) { return p->last_unmap - USER_DMA_BASE; }

static const char *test_user_edu_fault(void)
{
	return expect_fault("fault", fault_iova);
}

static const char *test_user_edu_munmap(void)
{
	return expect_fault("munmap", unmapped_iova);
}

/*
 * edudma churn with `iommu noflush`: 100 device-visible pages mapped and
 * unmapped, more than a process holds back; once PROC_QUARANTINE frames are
 * held, one domain flush frees them: none is lost, none leaks.
 */
static const char *test_user_edu_noflush_many(void)
{
	const char *err = need_edu_iommu();
	if (err)
		return err;
	long before = frames_available();
	struct proc *p;
	int st = run_edudma_noflush(&p, "churn");
	if (st == -1000)
		return st_why;
	if (st)
		err = FAIL("edudma churn: exit status %d", st);
	else if (p->quarantine_lost)
		err = FAIL("%u held-back frames lost", p->quarantine_lost);
	else if (p->iotlb_page_invs)
		err = FAIL("munmap invalidated pages under noflush");
	proc_free(p);
	if (!err)
		err = edu_ctx_passthrough();
	return err ? err : frames_returned(before);
}

/*
 * edudma noflush with `iommu noflush`: munmap clears the second-level entry
 * but leaves the IOTLB, so the device's next DMA uses the stale entry: no
 * fault, and the data lands in the old frame, which the kernel held back
 * (quarantine) until the domain's IOTLB was flushed at exit.  akvm's
 * coherence checker (--iommu vtd,check=on) reports that use.
 */
#define STALE_DATA      0x5A1E000000000000ULL   /* user/edudma.c has the same */

static const char *test_user_edu_noflush(void)
{
	const char *err = need_edu_iommu();
	if (err)
		return err;
	long before = frames_available();
	unsigned nf = iommu.nfaults;
	iommu.quiet = true;
	struct proc *p;
	int st = run_edudma_noflush(&p, "noflush");
	if (st == -1000) {
		iommu.quiet = false;
		return st_why;
	}
	udelay(100000);                 /* a fault event would be in by now */
	iommu.quiet = false;
	uint64_t want = STALE_DATA | (uint64_t)p->pid << 32 | 7;
	if (st)
		err = FAIL("edudma noflush: exit status %d", st);
	else if (!(err = check_assigned(p)) && p->iotlb_page_invs)
		err = FAIL("munmap invalidated the IOTLB under noflush");
	uint64_t stale = p->stale_word, iova = p->last_unmap - USER_DMA_BASE;
	proc_free(p);
	if (err)
		return err;
	if (iommu.nfaults != nf) {
		iommu_print_faults();
		if (stale != want)
			return SKIP("the IOTLB did not keep the translation: the DMA to 0x%lx faulted", iova);
		return FAIL("a DMAR fault was recorded, yet the data reached the old frame");
	}
	if (stale != want)
		return FAIL("no fault, but the old frame holds 0x%lx, not 0x%lx", stale, want);
	kprintf("user-edu-noflush: the DMA to IOVA 0x%lx after munmap used the stale IOTLB entry: "
		"it wrote the old frame (held back until the domain was flushed)\n", iova);
	if ((err = edu_ctx_passthrough()))
		return err;
	return frames_returned(before);
}

/*
 * Two processes, each owning an edu of its own (--device edu --device edu),
 * at once on two cores: `edudma two b` on the other core, `edudma two a`
 * here.  Both DMA into their buffers at the same IOVAs (each lands in its
 * own frames); a DMAs to an IOVA that only b maps: the IOMMU faults it (a's
 * edu, that IOVA) and b finds its page untouched after a has exited.
 */
static const char *test_user_edu_two(void)
{
	const char *err = need_edu_iommu();
	if (err)
		return err;
	int other = other_core(), nedu = 0;
	if (other < 0)
		return SKIP("needs 2 cores");
	const struct pci_dev *edus[2];
	for (int i = 0; i < pci_ndevs; i++)
		if (pci_devs[i].vendor == 0x1234 && pci_devs[i].device == 0x11e8 && nedu < 2 &&
		    iommu_covers(pci_devs[i].bus, pci_devs[i].dev, pci_devs[i].fn))
			edus[nedu++] = &pci_devs[i];
	if (nedu < 2)
		return SKIP("needs two edu devices behind the IOMMU");
	long before = frames_available();
	char *aa[] = { "edudma", "two", "a" }, *ba[] = { "edudma", "two", "b" };
	const char *why;
	struct proc *a = proc_create("edudma", 3, aa, &why), *b = NULL;
	if (a)
		b = proc_create("edudma", 3, ba, &why);
	if (!a || !b) {
		if (a)
			proc_free(a);
		return FAIL("edudma: %s", why);
	}
	if (!proc_start_on(b, other)) {
		proc_free(a);
		proc_free(b);
		return FAIL("core %d is busy", other);
	}
	unsigned nf = iommu.nfaults;
	iommu.quiet = true;
	int sa = proc_run(a);
	proc_report(a, sa);
	int sb = proc_wait(b, 30000000);
	if (sb != -1)
		proc_report(b, sb);
	udelay(100000);
	iommu.quiet = false;
	uint64_t want = a->last_unmap - USER_DMA_BASE;
	if (sb == -1)
		err = FAIL("pid %d on core %d did not finish", b->pid, other);
	else if (sa || sb)
		err = FAIL("exit status %d (a) and %d (b): a check in user/edudma.c", sa, sb);
	else if (!(err = check_assigned(a)) && !(err = check_assigned(b)) && a->dev_sid == b->dev_sid)
		err = FAIL("both owned the edu at %02x:%02x.%x", a->dev_sid >> 8, (a->dev_sid >> 3) & 31,
			   a->dev_sid & 7);
	uint16_t sid_a = a->dev_sid;
	proc_free(a);
	if (sb != -1)
		proc_free(b);
	if (err)
		return err;
	kprintf("user-edu-two: ");
	iommu_print_faults();
	bool seen = false;
	for (unsigned i = nf; i < iommu.nfaults; i++) {
		const struct iommu_fault *f = &iommu.faults[i % IOMMU_FAULT_LOG];
		if (f->sid == sid_a && f->addr == want && !f->read)
			seen = true;
		else
			return FAIL("an unexpected DMAR fault (by %02x:%02x.%x at 0x%lx)", f->sid >> 8,
				    (f->sid >> 3) & 31, f->sid & 7, f->addr);
	}
	if (!seen)
		return FAIL("no write fault by a's edu at 0x%lx", want);
	for (int i = 0; i < 2; i++)
		if ((err = ctx_passthrough(edus[i])))
			return err;
	return frames_returned(before);
}

static const char *test_user_edu_release(void)
{
	const char *err = need_edu_iommu();
	if (err)
		return err;
	long before = frames_available();
	static const char *const modes[] = { "hold", "release" };
	for (int i = 0; i < 2; i++) {
		struct proc *p;
		int st = run_edudma(&p, modes[i]);
		if (st == -1000)
			return st_why;
		if (st)
			err = FAIL("edudma %s: exit status %d", modes[i], st);
		else
			err = check_assigned(p);
		bool owned = p->dev_owned;
		proc_free(p);
		if (err)
			return err;
		if (owned)
			return FAIL("edudma %s: still owns the device after exit", modes[i]);
		if ((err = edu_ctx_passthrough()))
			return err;
	}
	return frames_returned(before);
}

/* ---- an I/OAT channel owned by a process (user/ioatdma.c): --device ioat --iommu vtd ---- */

#define STALE_IOAT      0x5A1E000000000000ULL   /* user/ioatdma.c has the same */

/* The last I/OAT function (the kernel's self-tests use the first). */
static const char *need_ioat_iommu(struct pci_dev **out)
{
	const char *err = ioat_probe();
	if (err)
		return SKIP("%s", err);
	struct pci_dev *d = ioat_chans[ioat_nchans - 1].pci;
	if ((err = iommu_covering(d, "the I/OAT function")))
		return err;
	*out = d;
	return NULL;
}

static int run_ioatdma(struct proc **out, const char *mode, struct pci_dev *d)
{
	char bdf[8];
	ksnprintf(bdf, sizeof(bdf), "%x", pci_sid(d));
	char *argv[] = { "ioatdma", (char *)mode, bdf };
	return run_here(out, 3, argv);
}

/* ioatdma MODE on the last function; a write fault by it at the IOVA it
 * unmapped must be recorded (fault), or none and the data in the old frame
 * (noflush). */
static const char *ioat_user(const char *mode, bool fault, bool noflush)
{
	struct pci_dev *d;
	const char *err = need_ioat_iommu(&d);
	if (err)
		return err;
	long before = frames_available();
	bool nf_saved = iommu_noflush;
	iommu_noflush = noflush;
	unsigned nf = iommu.nfaults;
	iommu.quiet = true;
	struct proc *p;
	int st = run_ioatdma(&p, mode, d);
	iommu_noflush = nf_saved;
	if (st == -1000) {
		iommu.quiet = false;
		return st_why;
	}
	uint64_t end = tsc_deadline_us(fault ? 500000 : 100000);
	while (iommu.nfaults == nf && !tsc_passed(end))
		udelay(20);
	iommu.quiet = false;
	uint64_t iova = p->last_unmap - USER_DMA_BASE, stale = p->stale_word;
	uint64_t want = STALE_IOAT | (uint64_t)p->pid << 32 | 7;
	if (st)
		err = FAIL("ioatdma %s: exit status %d (a check in user/ioatdma.c)", mode, st);
	else if (!(err = check_assigned(p)) && p->dev_sid != pci_sid(d))
		err = FAIL("ioatdma %s owned %x, not %x", mode, p->dev_sid, pci_sid(d));
	else if (!err && fault && !p->iotlb_page_invs)
		err = FAIL("munmap did not invalidate the IOTLB");
	else if (!err && noflush && p->iotlb_page_invs)
		err = FAIL("munmap invalidated the IOTLB under noflush");
	proc_free(p);
	if (!err && (err = ctx_passthrough(d)))
		return err;
	if (err)
		return err;
	if (fault) {
		for (unsigned i = nf; i < iommu.nfaults; i++) {
			const struct iommu_fault *f = &iommu.faults[i % IOMMU_FAULT_LOG];
			if (f->sid == pci_sid(d) && f->addr == iova && !f->read) {
				kprintf("user-ioat-%s: DMAR fault: write of 0x%lx by %02x:%02x.%x\n", mode,
					iova, d->bus, d->dev, d->fn);
				return frames_returned(before);
			}
		}
		return FAIL("no write fault by %02x:%02x.%x at 0x%lx among the %u recorded", d->bus,
			    d->dev, d->fn, iova, iommu.nfaults - nf);
	}
	if (noflush) {
		if (iommu.nfaults != nf)
			return FAIL("a DMAR fault was recorded under noflush");
		if (stale != want)
			return FAIL("the old frame holds 0x%lx, not 0x%lx", stale, want);
		kprintf("user-ioat-noflush: the copy to IOVA 0x%lx after munmap used the stale IOTLB "
			"entry: it wrote the old frame (held back until the domain was flushed)\n", iova);
	}
	return frames_returned(before);
}

static const char *test_user_ioat_copy(void) { return ioat_user("copy", false, false); }
static const char *test_user_ioat_munmap(void) { return ioat_user("munmap", true, false); }
static const char *test_user_ioat_noflush(void) { return ioat_user("noflush", false, true); }

const struct selftest user_tests[] = {
	{ "user-hello", test_user_hello, true },
	{ "user-syscalls", test_user_syscalls, true },
	{ "user-smp", test_user_smp, true },
	{ "user-fault", test_user_fault, true },
	{ "user-cores", test_user_cores, true },
	{ "user-shootdown", test_user_shootdown, true },
	{ "user-edu-dma", test_user_edu_dma, false },
	{ "user-edu-fault", test_user_edu_fault, false },
	{ "user-edu-munmap", test_user_edu_munmap, false },
	{ "user-edu-release", test_user_edu_release, false },
	{ "user-edu-noflush", test_user_edu_noflush, false },
	{ "user-edu-noflush-many", test_user_edu_noflush_many, false },
	{ "user-edu-two", test_user_edu_two, false },
	{ "user-ioat-copy", test_user_ioat_copy, false },
	{ "user-ioat-munmap", test_user_ioat_munmap, false },
	{ "user-ioat-noflush", test_user_ioat_noflush, false },
};
const size_t user_ntests = ARRAY_SIZE(user_tests);
