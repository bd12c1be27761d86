/*
 * Kernel context switch (ctx_save/ctx_restore), the SYSCALL entry and the
 * way into ring 3 (user_enter).  The frame built by syscall_entry is a
 * struct trapframe, so system calls and traps share one layout.
 */
#include "mm.h"
#include "frame.h"

#define CPU_KSTACK      56      /* struct cpu (cpu.h) */
#define CPU_USER_RSP    64

	.text
/* int ctx_save(struct kctx *c): 0 now, val when ctx_restore(c, val) comes back. */
	.globl ctx_save
ctx_save:
	movq %rbx, 0(%rdi)
	movq %rbp, 8(%rdi)
	movq %r12, 16(%rdi)
	movq %r13, 24(%rdi)
	movq %r14, 32(%rdi)
	movq %r15, 40(%rdi)
	leaq 8(%rsp), %rax
	movq %rax, 48(%rdi)
	movq (%rsp), %rax
	movq %rax, 56(%rdi)
	xorl %eax, %eax
	ret

	.globl ctx_restore
ctx_restore:
	movl %esi, %eax
	movq 0(%rdi), %rbx
	movq 8(%rdi), %rbp
	movq 16(%rdi), %r12
	movq 24(%rdi), %r13
	movq 32(%rdi), %r14
	movq 40(%rdi), %r15
	movq 48(%rdi), %rsp
	jmp *56(%rdi)

/*
 * SYSCALL entry (LSTAR).  Interrupts are off (FMASK), RCX = user RIP,
 * R11 = user RFLAGS.  Builds a struct trapframe (vector VEC_SYSCALL) on
 * this core's process kernel stack and returns with SYSRETQ.
 *
 * On kvm_pvm hosts SYSCALL from ring 3 loads RIP = LSTAR, RCX, R11 and
 * masks RFLAGS, but leaves CPL at 3: fetching this supervisor page faults.
 * trap.c recognises that #PF (user CS, RIP = syscall_entry) and runs the
 * system call from the trap frame instead; see user.c.
 */
	.globl syscall_entry
syscall_entry:
	swapgs
	movq %rsp, %gs:CPU_USER_RSP
	movq %gs:CPU_KSTACK, %rsp
	pushq $SEG_UDATA                /* ss */
	pushq %gs:CPU_USER_RSP          /* rsp */
	pushq %r11                      /* rflags */
	pushq $SEG_UCODE                /* cs */
	pushq %rcx                      /* rip */
	pushq $0                        /* error code */
	pushq $0x100                    /* VEC_SYSCALL */
	PUSH_GPRS
	movq %rsp, %rdi
	call syscall_dispatch
	POP_GPRS
	addq $16, %rsp                  /* vector, error code */
	popq %rcx                       /* rip */
	addq $8, %rsp                   /* cs */
	popq %r11                       /* rflags */
	popq %rsp                       /* user rsp (ss is fixed) */
	swapgs
	sysretq
