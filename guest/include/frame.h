/* The general registers of a struct trapframe (trap.h), saved and restored
 * in its order by the trap entry (trapentry.S) and the SYSCALL entry
 * (userentry.S). */
#ifndef GUEST_FRAME_H
#define GUEST_FRAME_H
#ifdef __ASSEMBLER__
.macro PUSH_GPRS
	pushq %r15
	pushq %r14
	pushq %r13
	pushq %r12
	pushq %r11
	pushq %r10
	pushq %r9
	pushq %r8
	pushq %rbp
	pushq %rdi
	pushq %rsi
	pushq %rdx
	pushq %rcx
	pushq %rbx
	pushq %rax
.endm

.macro POP_GPRS
	popq %rax
	popq %rbx
	popq %rcx
	popq %rdx
	popq %rsi
	popq %rdi
	popq %rbp
	popq %r8
	popq %r9
	popq %r10
	popq %r11
	popq %r12
	popq %r13
	popq %r14
	popq %r15
.endm
#endif
#endif
