/* vblk: a Multiboot 1 test kernel that writes to a virtio-blk disk and flushes
 * (see vblk.c). 32-bit protected mode, paging off, as the loader leaves it. */
	.set MB_MAGIC, 0x1BADB002
	.set MB_FLAGS, 0x3
	.section .text
	.code32
	.align 4
	.long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)
	.globl _start
_start:
	mov $stack_top, %esp
	push %ebx			/* the multiboot information */
	call main
1:	cli
	hlt
	jmp 1b

	.section .note.GNU-stack, "", @progbits
	.section .bss
	.align 16
	.space 16384
stack_top:
