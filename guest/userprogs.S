/*
 * The user programs (user/, linked ELF64 at USER_BASE) embedded in the
 * kernel image, and a table { name, start, end } ending with zeros.
 * USER_PROGS comes from the Makefile.
 */
	.section .rodata
	.balign 8
	.globl user_progs
user_progs:
	.irp name, USER_PROGS
	.quad 1f, 2f, 3f
	.pushsection .rodata.str.user, "a"
1:	.asciz "\name"
	.popsection
	.pushsection .rodata.user, "a"
	.balign 16
2:	.incbin "\name\().elf"		/* found in $(BUILD)/user: the Makefile passes -I */
3:
	.popsection
	.endr
	.quad 0, 0, 0
