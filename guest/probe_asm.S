/*
 * `selftest user-probe` (not default): how this host's KVM treats SWAPGS,
 * IRETQ and SYSRETQ to ring 3, SYSCALL from ring 3, and exceptions and
 * interrupts taken in ring 3.  userprobe.c drives it; results in README.
 */
#include "mm.h"

	.text
/* probe_iret(rip, rsp, rflags): IRETQ to ring 3. */
	.globl probe_iret
probe_iret:
	swapgs                          /* trap_common swaps back on entry */
	pushq $SEG_UDATA
	pushq %rsi
	pushq %rdx
	pushq $SEG_UCODE
	pushq %rdi
	iretq

/* probe_sysret(rip, rsp, rflags): SYSRETQ to ring 3. */
	.globl probe_sysret
probe_sysret:
	movq %rdi, %rcx
	movq %rdx, %r11
	movq %rsi, %rsp
	swapgs
	sysretq

/* LSTAR during the probe: a private stack, probe_syscall(rax), SYSRETQ back. */
	.globl probe_syscall_entry
probe_syscall_entry:
	swapgs
	movq %rsp, probe_user_rsp(%rip)
	movq probe_kstack_top(%rip), %rsp
	pushq %rcx
	pushq %r11
	movq %rax, %rdi
	call probe_syscall
	popq %r11
	popq %rcx
	movq probe_user_rsp(%rip), %rsp
	swapgs
	sysretq

	.globl probe_swapgs
probe_swapgs:
	swapgs
	swapgs
	ret

/* User code, copied to a user page.  Offsets are used by userprobe.c. */
	.section .rodata
	.globl probe_user_start, probe_user_end
	.globl probe_user_pf, probe_user_int, probe_user_spin, probe_user_out, probe_user_gp
probe_user_start:
	movl $1, %eax                   /* syscall 1: kernel SYSRETs back */
	movl $0x1111, %ecx              /* SYSCALL overwrites RCX and R11 */
	movl $0x2222, %r11d
	syscall
	movl $2, %eax                   /* syscall 2: kernel leaves for good */
	syscall
	ud2
probe_user_pf:
	movq 0x10, %rax                 /* supervisor page: #PF, error code 5 */
	ud2
probe_user_int:
	int $0x80                       /* DPL-0 gate: #GP (or #UD on this host) */
	ud2
probe_user_spin:
	pause
	jmp probe_user_spin             /* until a timer interrupt comes */
probe_user_out:
	outb %al, $0x80                 /* IOPL 0, no bitmap: #GP */
	ud2
probe_user_gp:
	cli                             /* CPL 3 > IOPL: #GP */
	ud2
probe_user_end:
