/*
 * AP start-up code.  smp.c copies tramp_start..tramp_end to TRAMPOLINE_PA
 * and fills in tramp_cr3/tramp_stack/tramp_cpu; the SIPI starts the AP in
 * real mode at TRAMPOLINE_PA.  It goes to protected mode with a private
 * copy of the kernel GDT (same selectors), then to long mode on the
 * kernel's page tables, and jumps to ap_entry at its high-half address.
 * Addresses inside are absolute: TRAMPOLINE_PA + offset.
 */
#include "mm.h"

#define TADDR(x) (TRAMPOLINE_PA + (x) - tramp_start)

	.section .rodata
	.balign 16
	.globl tramp_start, tramp_end, tramp_cr3, tramp_stack, tramp_cpu
	.code16
tramp_start:
	cli
	cld
	movw %cs, %ax
	movw %ax, %ds
	lgdtl (tramp_gdt_desc - tramp_start)
	movl %cr0, %eax
	orl $CR0_PE, %eax
	movl %eax, %cr0
	ljmpl $SEG_KCODE32, $TADDR(tramp32)

	.code32
tramp32:
	movw $SEG_KDATA, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movl %cr4, %eax
	orl $(CR4_PAE | CR4_PGE), %eax
	movl %eax, %cr4
	movl TADDR(tramp_cr3), %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax                 /* INIT left CD/NW set */
	orl $(CR0_PG | CR0_WP | CR0_NE | CR0_MP | CR0_PE), %eax
	andl $~(CR0_EM | CR0_TS | CR0_CD | CR0_NW), %eax
	movl %eax, %cr0
	ljmp $SEG_KCODE, $TADDR(tramp64)

	.code64
tramp64:
	movq TADDR(tramp_stack), %rsp
	movq TADDR(tramp_cpu), %rdi
	movabsq $ap_main, %rax
	jmp *%rax

	.balign 8
tramp_gdt:
	.quad 0
	.quad 0x00AF9A000000FFFF
	.quad 0x00CF92000000FFFF
	.quad 0x00CF9A000000FFFF
tramp_gdt_desc:
	.word 4 * 8 - 1
	.long TADDR(tramp_gdt)
	.balign 8
tramp_cr3:
	.quad 0
tramp_stack:
	.quad 0
tramp_cpu:
	.quad 0
tramp_end:
