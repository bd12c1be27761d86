/*
 * Software interrupts (issue 8): INT3 and INT n reach their IDT gates with
 * the right vector, return address and registers; Akaros-style reboot.
 * Not default tests: on kvm_pvm hosts they need a VMM that completes the
 * instructions (akvm's vmm/vcpu/complete.py); QEMU stops with an emulation
 * failure there.  Run them by name: `selftest int3 intn`.
 *
 * A user-mode INT through a DPL-0 gate must raise #GP; this kernel has no
 * user mode yet, so that case is not tested here.
 */
#include "selftest.h"
#include "lib.h"
#include "power.h"
#include "trap.h"
#include "timer.h"
#include "x86.h"

extern char swint_int3_ret[], swint_int80_ret[];
extern uint64_t swint_after[15];
void swint_int3(void);
void swint_int80(void);
void swint_int0_zero_stack(void) NORETURN;

#define SWINT_VAL(n) ((uint64_t)(0x5A5A000000000000UL + (n) * 0x0101010101UL + 0x1000))

static volatile uint64_t seen_vector, seen_rip, seen_cs, seen_count, seen_rflags;
static uint64_t seen_regs[15];

static void record(struct trapframe *tf)
{
	seen_vector = tf->vector;
	seen_rip = tf->rip;
	seen_cs = tf->cs;
	seen_rflags = tf->rflags;
	memcpy(seen_regs, tf, sizeof(seen_regs));      /* rax..r15, trapframe order */
	seen_count++;
}

static const char *test_int3(void)
{
	seen_count = 0;
	seen_vector = seen_rip = 0;
	trap_register_soft(3, record);
	swint_int3();
	trap_register_soft(3, NULL);
	if (seen_count != 1)
		return FAIL("handler ran %lu times", seen_count);
	if (seen_vector != 3)
		return FAIL("vector %lu, want 3", seen_vector);
	if (seen_rip != (uint64_t)(uintptr_t)swint_int3_ret)
		return FAIL("return RIP 0x%lx, want 0x%lx (the instruction after int3)", seen_rip,
			    (uint64_t)(uintptr_t)swint_int3_ret);
	if ((seen_cs & 3) != 0)
		return FAIL("CS 0x%lx: not ring 0", seen_cs);
	return NULL;
}

static const char *test_intn(void)
{
	static const char *const names[15] = { "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
		"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15" };
	seen_count = 0;
	trap_register_soft(VEC_SOFT_TEST, record);
	uint64_t flags = read_rflags();
	swint_int80();
	if (seen_count != 1)
		return FAIL("handler ran %lu times", seen_count);
	if (seen_vector != VEC_SOFT_TEST)
		return FAIL("vector 0x%lx, want 0x80", seen_vector);
	if (seen_rip != (uint64_t)(uintptr_t)swint_int80_ret)
		return FAIL("return RIP 0x%lx, want 0x%lx", seen_rip, (uint64_t)(uintptr_t)swint_int80_ret);
	for (int i = 0; i < 15; i++) {
		if (seen_regs[i] != SWINT_VAL(i))
			return FAIL("handler saw %s = 0x%lx, want 0x%lx", names[i], seen_regs[i], SWINT_VAL(i));
		if (swint_after[i] != SWINT_VAL(i))
			return FAIL("after iretq %s = 0x%lx, want 0x%lx", names[i], swint_after[i], SWINT_VAL(i));
	}
	if ((seen_rflags & 0x200) != (flags & 0x200))
		return FAIL("RFLAGS.IF in the frame differs from the caller's");
	return NULL;
}

/* `reboot int`: Akaros's sequence; `reboot int0`: only the zero-stack int $0. */
void reboot_int(bool reset_port)
{
	kprintf("rebooting: %sint $0 on a zero stack\n", reset_port ? "0xCF9, then " : "");
	cli();
	if (reset_port) {
		uint8_t v = inb(0xCF9) & ~0x06;
		outb(0xCF9, v | 0x02);
		outb(0xCF9, v | 0x06);
		udelay(1000);
	}
	swint_int0_zero_stack();
}

const struct selftest swint_tests[] = {
	{ "int3", test_int3, false },
	{ "intn", test_intn, false },
};
const size_t swint_ntests = ARRAY_SIZE(swint_tests);
