/* CPU identification (CPUID) and per-core %gs setup. */
#include "cpu.h"
#include "lib.h"
#include "x86.h"

struct cpu cpus[MAX_CPUS];
int ncpus;
struct cpuinfo cpuinfo;

void cpu_setup_percpu(struct cpu *c)
{
	c->self = c;
	wrmsr(MSR_GS_BASE, (uint64_t)(uintptr_t)c);
}

static void regs_to_str(char *dst, const uint32_t *regs, int n)
{
	memcpy(dst, regs, 4 * n);
	dst[4 * n] = 0;
}

void cpu_identify(void)
{
	uint32_t r[4];

	cpuid(0, 0, r);
	cpuinfo.max_leaf = r[0];
	uint32_t v[3] = { r[1], r[3], r[2] };   /* EBX EDX ECX */
	regs_to_str(cpuinfo.vendor, v, 3);

	cpuid(1, 0, r);
	uint32_t fam = (r[0] >> 8) & 0xF, model = (r[0] >> 4) & 0xF;
	if (fam == 0xF)
		fam += (r[0] >> 20) & 0xFF;
	if (fam == 0x6 || fam >= 0xF)
		model |= ((r[0] >> 16) & 0xF) << 4;
	cpuinfo.family = fam;
	cpuinfo.model = model;
	cpuinfo.stepping = r[0] & 0xF;
	cpuinfo.x2apic = r[2] & (1u << 21);
	cpuinfo.xsave = r[2] & (1u << 26);
	if (r[2] & (1u << 31)) {
		uint32_t h[4];
		cpuid(0x40000000, 0, h);
		regs_to_str(cpuinfo.hypervisor, &h[1], 3);
	}

	cpuid(0x80000000, 0, r);
	cpuinfo.max_ext_leaf = r[0];
	if (cpuinfo.max_ext_leaf >= 0x80000001) {
		cpuid(0x80000001, 0, r);
		cpuinfo.nx = r[3] & (1u << 20);
		cpuinfo.pdpe1gb = r[3] & (1u << 26);
	}
	if (cpuinfo.max_ext_leaf >= 0x80000004) {
		for (int i = 0; i < 3; i++) {
			cpuid(0x80000002 + i, 0, r);
			memcpy(cpuinfo.brand + 16 * i, r, 16);
		}
		cpuinfo.brand[48] = 0;
	}
	if (cpuinfo.max_ext_leaf >= 0x80000007) {
		cpuid(0x80000007, 0, r);
		cpuinfo.tsc_invariant = r[3] & (1u << 8);
	}
}
