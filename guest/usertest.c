/* Self-tests of user processes (user.c): user-hello, -syscalls, -smp, -fault. */
#include "selftest.h"
#include "cpu.h"
#include "lib.h"
#include "proc.h"
#include "edu.h"
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
	long after = frames_available();
	if (before >= 0 && after != before)
		return FAIL("%ld frames free before, %ld after", before, after);
	return NULL;
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
	long after = frames_available();
	if (before >= 0 && after != before)
		return FAIL("%ld frames free before, %ld after", before, after);
	return NULL;
}

/* ---- device assignment (user/edudma.c): need --device edu --iommu vtd ---- */

#define FAULT_IOVA      0x0F000000ULL   /* user/edudma.c has the same */

static const char *need_edu_iommu(void)
{
	const char *err = edu_probe();
	if (err)
		return SKIP("%s", err);
	if ((err = iommu_probe()))
		return SKIP("no IOMMU: %s", err);
	if ((err = iommu_enable()))
		return FAIL("enabling translation: %s", err);
	if (!iommu_covers(edu.pci->bus, edu.pci->dev, edu.pci->fn))
		return SKIP("edu is not in the DRHD's device scope");
	return NULL;
}

static uint64_t *edu_ctx_entry(void)
{
	return iommu.ctx[edu.pci->bus] + 2 * (edu.pci->dev << 3 | edu.pci->fn);
}

/* The edu's context entry is the kernel's pass-through (or identity) one. */
static const char *edu_ctx_passthrough(void)
{
	uint64_t *e = edu_ctx_entry();
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
	long after = frames_available();
	if (!err && before >= 0 && after != before)
		err = FAIL("%ld frames free before, %ld after", before, after);
	return err;
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
	long after = frames_available();
	if (before >= 0 && after != before)
		return FAIL("%ld frames free before, %ld after", before, after);
	return NULL;
}

const struct selftest user_tests[] = {
	{ "user-hello", test_user_hello, true },
	{ "user-syscalls", test_user_syscalls, true },
	{ "user-smp", test_user_smp, true },
	{ "user-fault", test_user_fault, true },
	{ "user-edu-dma", test_user_edu_dma, false },
	{ "user-edu-fault", test_user_edu_fault, false },
	{ "user-edu-munmap", test_user_edu_munmap, false },
	{ "user-edu-release", test_user_edu_release, false },
};
const size_t user_ntests = ARRAY_SIZE(user_tests);
