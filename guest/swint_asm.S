/*
 * Software-interrupt probes for `selftest int3 intn` and `reboot int`.
 * On kvm_pvm hosts INT3 and INT n end KVM_RUN with an emulation failure
 * unless the VMM completes them, so none of this is on a default path;
 * `make check` allows these instructions only in swint_* functions.
 */
	.text

/* int3 is a trap: the handler must see the address after it. */
	.globl swint_int3, swint_int3_ret
swint_int3:
	int3
swint_int3_ret:
	ret

/*
 * Loads a distinct value into every general register but RSP, executes
 * int $0x80, and stores them all (trapframe order) to swint_after.
 * The handler compares what it saw with the same values.
 */
#define SWINT_VAL(n) (0x5A5A000000000000 + (n) * 0x0101010101 + 0x1000)

	.globl swint_int80, swint_int80_ret
swint_int80:
	pushq %rbx
	pushq %rbp
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movabsq $SWINT_VAL(0), %rax
	movabsq $SWINT_VAL(1), %rbx
	movabsq $SWINT_VAL(2), %rcx
	movabsq $SWINT_VAL(3), %rdx
	movabsq $SWINT_VAL(4), %rsi
	movabsq $SWINT_VAL(5), %rdi
	movabsq $SWINT_VAL(6), %rbp
	movabsq $SWINT_VAL(7), %r8
	movabsq $SWINT_VAL(8), %r9
	movabsq $SWINT_VAL(9), %r10
	movabsq $SWINT_VAL(10), %r11
	movabsq $SWINT_VAL(11), %r12
	movabsq $SWINT_VAL(12), %r13
	movabsq $SWINT_VAL(13), %r14
	movabsq $SWINT_VAL(14), %r15
	int $0x80
swint_int80_ret:
	movq %rax, swint_after + 0(%rip)
	movq %rbx, swint_after + 8(%rip)
	movq %rcx, swint_after + 16(%rip)
	movq %rdx, swint_after + 24(%rip)
	movq %rsi, swint_after + 32(%rip)
	movq %rdi, swint_after + 40(%rip)
	movq %rbp, swint_after + 48(%rip)
	movq %r8, swint_after + 56(%rip)
	movq %r9, swint_after + 64(%rip)
	movq %r10, swint_after + 72(%rip)
	movq %r11, swint_after + 80(%rip)
	movq %r12, swint_after + 88(%rip)
	movq %r13, swint_after + 96(%rip)
	movq %r14, swint_after + 104(%rip)
	movq %r15, swint_after + 112(%rip)
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbp
	popq %rbx
	ret

/*
 * Akaros ends its reboot path with int $0 on a zero stack: delivering
 * the interrupt faults (#PF pushing at 2^64 - 8), so does the #DF, and the
 * CPU shuts down: the VMM sees a reset/triple fault even when the reset
 * port did nothing.  Interrupts must be off.  Never returns.
 */
	.globl swint_int0_zero_stack
swint_int0_zero_stack:
	xorl %esp, %esp
	int $0
1:	hlt
	jmp 1b

	.bss
	.balign 8
	.globl swint_after
swint_after:
	.skip 15 * 8
