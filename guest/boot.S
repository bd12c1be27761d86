/*
 * Multiboot 1 entry.  The loader enters _start in 32-bit protected mode,
 * paging off, EAX = 0x2BADB002, EBX = multiboot info.  We load a GDT,
 * turn on long mode with static page tables and jump to the kernel's
 * high-half address.  Everything here runs at physical addresses, so
 * symbols are used as PHYS(sym).
 */
#include "mm.h"

#define MB_MAGIC  0x1BADB002
#define MB_FLAGS  0x00000003    /* page-align modules, want memory info */
#define PHYS(x)   ((x) - KERNBASE)

	.section .multiboot, "a"
	.balign 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.section .text.boot, "ax"
	.code32
	.globl _start
_start:
	cli
	cld
	movl %eax, %edi                 /* magic -> kmain arg 1 */
	movl %ebx, %esi                 /* info  -> kmain arg 2 */

	lgdt PHYS(gdt_desc32)
	ljmp $SEG_KCODE32, $PHYS(1f)
1:	movl $SEG_KDATA, %eax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	xorl %eax, %eax
	movw %ax, %fs
	movw %ax, %gs

	movl %cr4, %eax
	orl $(CR4_PAE | CR4_PGE), %eax
	movl %eax, %cr4
	movl $PHYS(boot_pml4), %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	orl $(CR0_PG | CR0_WP | CR0_NE | CR0_MP | CR0_PE), %eax
	andl $~(CR0_EM | CR0_TS | CR0_CD | CR0_NW), %eax
	movl %eax, %cr0
	ljmp $SEG_KCODE, $PHYS(start64_low)

	.code64
start64_low:
	movabsq $start64, %rax          /* leave the identity mapping */
	jmp *%rax

	.text
start64:
	lgdt gdt_desc64(%rip)           /* same GDT, high-half base */
	leaq boot_stack_top(%rip), %rsp
	xorl %ebp, %ebp
	movl %edi, %edi                 /* upper halves are undefined */
	movl %esi, %esi
	call kmain
2:	cli
	hlt
	jmp 2b

/* Shared by the BSP and (after the trampoline) the APs. */
	.globl gdt_load
gdt_load:
	lgdt gdt_desc64(%rip)
	ret

/*
 * The GDT, in .data: each core writes its TSS descriptor (and LTR sets its
 * busy bit).  The order of 0x18-0x28 is what SYSRET wants: STAR[63:48] =
 * 0x18 gives SS = 0x20 | 3 and CS = 0x28 | 3 (user.c).
 */
	.data
	.balign 16
	.globl gdt
gdt:
	.quad 0
	.quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code, DPL 0 */
	.quad 0x00CF92000000FFFF        /* 0x10: data */
	.quad 0x00CF9A000000FFFF        /* 0x18: 32-bit code */
	.quad 0x00CFF2000000FFFF        /* 0x20: user data, DPL 3 */
	.quad 0x00AFFA000000FFFF        /* 0x28: user 64-bit code, DPL 3 */
	.globl gdt_tss
gdt_tss:                                /* 0x30 + 16 * core: 64-bit TSS descriptors */
	.fill 2 * GDT_NTSS, 8, 0
gdt_end:
gdt_desc32:
	.word gdt_end - gdt - 1
	.long PHYS(gdt)
	.balign 8
gdt_desc64:
	.word gdt_end - gdt - 1
	.quad gdt

/*
 * Boot page tables, fully initialised at build time (no run-time loops:
 * ring 0 may be emulated instruction by instruction).  2 MiB pages:
 * 0-4 GiB identity (3-4 GiB uncached: LAPIC, IOAPIC, PCI MMIO), and
 * KERNBASE -> 0-1 GiB for the kernel image.
 */
	.data
	.balign PAGE_SIZE
	.globl boot_pml4, boot_pdpt_high
boot_pml4:
	.quad PHYS(boot_pdpt_low) + (PTE_P | PTE_W)
	.fill 510, 8, 0
	.quad PHYS(boot_pdpt_high) + (PTE_P | PTE_W)
boot_pdpt_low:
	.quad PHYS(boot_pd) + 0 * PAGE_SIZE + (PTE_P | PTE_W)
	.quad PHYS(boot_pd) + 1 * PAGE_SIZE + (PTE_P | PTE_W)
	.quad PHYS(boot_pd) + 2 * PAGE_SIZE + (PTE_P | PTE_W)
	.quad PHYS(boot_pd) + 3 * PAGE_SIZE + (PTE_P | PTE_W)
	.fill 508, 8, 0
boot_pdpt_high:                         /* [0]: test window (selftest.c) */
	.fill 510, 8, 0
	.quad PHYS(boot_pd) + (PTE_P | PTE_W)   /* KERNBASE = -2 GiB */
	.quad 0
boot_pd:
	.set i, 0
	.rept 2048
	.if i >= 1536
	.quad (i << 21) | (PTE_P | PTE_W | PTE_PS | PTE_PWT | PTE_PCD)
	.else
	.quad (i << 21) | (PTE_P | PTE_W | PTE_PS)
	.endif
	.set i, i + 1
	.endr

	.bss
	.balign 16
boot_stack:
	.skip 16384
	.globl boot_stack_top
boot_stack_top:
