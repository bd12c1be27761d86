/*
 * MSR access that survives a #GP: the faulting instruction's address and
 * its recovery point go in .fixup_table, which trap() consults.
 */
	.text
	.globl rdmsr_safe               /* int rdmsr_safe(u32 msr, u64 *val) */
rdmsr_safe:
	movl %edi, %ecx
1:	rdmsr
	shlq $32, %rdx
	movl %eax, %eax
	orq %rdx, %rax
	movq %rax, (%rsi)
	xorl %eax, %eax
	ret
2:	movl $-1, %eax
	ret
	.pushsection .fixup_table, "a"
	.quad 1b, 2b
	.popsection

	.globl wrmsr_safe               /* int wrmsr_safe(u32 msr, u64 val) */
wrmsr_safe:
	movl %edi, %ecx
	movl %esi, %eax
	movq %rsi, %rdx
	shrq $32, %rdx
3:	wrmsr
	xorl %eax, %eax
	ret
4:	movl $-1, %eax
	ret
	.pushsection .fixup_table, "a"
	.quad 3b, 4b
	.popsection
