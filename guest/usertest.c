/* Self-tests of user processes (user.c): user-hello, -syscalls, -smp, -fault. */
#include "selftest.h"
#include "cpu.h"
#include "lib.h"
#include "proc.h"

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

const struct selftest user_tests[] = {
	{ "user-hello", test_user_hello, true },
	{ "user-syscalls", test_user_syscalls, true },
	{ "user-smp", test_user_smp, true },
	{ "user-fault", test_user_fault, true },
};
const size_t user_ntests = ARRAY_SIZE(user_tests);
