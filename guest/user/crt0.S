/* Process entry: the kernel passes argc in RDI and argv in RSI. */
	.text
	.globl _start
_start:
	xorl %ebp, %ebp
	call main
	movl %eax, %edi
	call exit
	ud2
