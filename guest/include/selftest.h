/* Shared by the self-test files: reasons, skips, and the test lists. */
#ifndef SELFTEST_H
#define SELFTEST_H
#include "types.h"
#include "lib.h"

extern char st_why[160];
extern bool st_skipped;

/* return FAIL("fmt", ...): the reason printed after "FAIL name: ". */
#define FAIL(...) ({ ksnprintf(st_why, sizeof(st_why), __VA_ARGS__); (const char *)st_why; })
/* return SKIP("fmt", ...): "SKIP name: reason", counted apart. */
#define SKIP(...) ({ st_skipped = true; ksnprintf(st_why, sizeof(st_why), __VA_ARGS__); \
		     (const char *)st_why; })

struct selftest {
	const char *name;
	const char *(*fn)(void);
	bool dflt;
};

/* devtest.c: IOMMU and edu; virtiotest.c: virtio; swint.c: software interrupts */
extern const struct selftest dev_tests[], virtio_tests[], swint_tests[], user_tests[], probe_tests[],
	ioat_tests[];
extern const size_t dev_ntests, virtio_ntests, swint_ntests, user_ntests, probe_ntests, ioat_ntests;
extern const struct selftest e1000_tests[];    /* e1000test.c */
extern const size_t e1000_ntests;

/* NULL if the frames free now are the `before` of frames_available() (selftest.c). */
const char *frames_returned(long before);

/* bench hooks (devtest.c) */
bool bench_iommu(void);
bool bench_edu(void);
void bench_report(const char *name, uint64_t n, uint64_t cycles);

#endif
