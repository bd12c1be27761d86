/*
 * 256 interrupt entry stubs, 16 bytes apart (IDT entry n -> trap_stubs +
 * 16 * n).  Each pushes a dummy error code where the CPU pushes none, then
 * the vector, and joins trap_common, which saves the GPRs as a struct
 * trapframe and calls trap().
 *
 * The linker script puts the stubs at the fixed address TRAP_STUBS_VA, so
 * the IDT below is complete at build time: filling 256 gates at run time
 * costs milliseconds when ring 0 is emulated.
 */
#include "mm.h"
#include "frame.h"

	.section .text.trapstubs, "ax"
	.globl trap_stubs
trap_stubs:
	.set vec, 0
	.rept 256
	.balign 16
	.if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushq $0
	.endif
	pushq $vec
	jmp trap_common
	.set vec, vec + 1
	.endr

	.text
/*
 * From ring 3 (CS.RPL = 3 in the frame) SWAPGS before and after, so the
 * kernel always has its per-core %gs and the user its own GS base.
 */
trap_common:
	testb $3, 24(%rsp)              /* CS, above vector and error code */
	jz 1f
	swapgs
1:	PUSH_GPRS
	movq %rsp, %rdi
	call trap
	.globl trap_return
trap_return:                            /* RSP = a struct trapframe */
	POP_GPRS
	addq $16, %rsp                  /* vector, error code */
	testb $3, 8(%rsp)
	jz 2f
	swapgs
2:	iretq

/* void user_enter(struct trapframe *tf): into ring 3 with tf's registers. */
	.globl user_enter
user_enter:
	movq %rdi, %rsp
	jmp trap_return

	.data
	.balign 16
	.globl idt
idt:
	.set vec, 0
	.rept 256
	.set stub, (TRAP_STUBS_VA & 0xFFFFFFFF) + 16 * vec
	.word stub & 0xFFFF             /* offset 15:0 */
	.word SEG_KCODE
	.byte 0                         /* no IST */
	.byte 0x8E                      /* present, DPL 0, interrupt gate */
	.word (stub >> 16) & 0xFFFF     /* offset 31:16 */
	.long TRAP_STUBS_VA >> 32       /* offset 63:32 */
	.long 0
	.set vec, vec + 1
	.endr
