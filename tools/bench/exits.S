/* exits: a Multiboot kernel that makes N userspace exits, for the exit benchmark.
 * Command line: "p N" does N port writes to 0x80, "m N" N MMIO writes to an
 * address nothing claims; then it powers off (akvm's and the bare loop's
 * SLP_TYP 5, then QEMU q35's SLP_TYP 0, both on PM1a_CNT 0x604).
 */
	.set MB_MAGIC, 0x1BADB002
	.set MB_FLAGS, 0x3
	.set UNCLAIMED_MMIO, 0xFEBFF000

	.text
	.code32
	.align 4
	.long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

	.globl _start
_start:
	mov $0x200000, %esp
	mov 16(%ebx), %esi		/* cmdline; QEMU puts the kernel's path first */
	xor %ecx, %ecx
token:					/* find the token "p" or "m" followed by a blank */
	movzbl (%esi), %eax
	test %al, %al
	jz off
	cmp $' ', %al
	je next
	cmpb $' ', 1(%esi)
	jne word
	cmp $'p', %al
	je found
	cmp $'m', %al
	je found
word:	inc %esi			/* skip the rest of this token */
	movzbl (%esi), %eax
	test %al, %al
	jz off
	cmp $' ', %al
	jne word
next:	inc %esi
	jmp token
found:	mov %al, %bl			/* mode */
	add $2, %esi
1:	movzbl (%esi), %eax		/* N: decimal after the mode and blanks */
	inc %esi
	cmp $' ', %al
	je 1b
2:	sub $'0', %eax
	cmp $9, %eax
	ja 3f
	imul $10, %ecx
	add %eax, %ecx
	movzbl (%esi), %eax
	inc %esi
	jmp 2b
3:	test %ecx, %ecx
	jz off
	cmp $'m', %bl
	je mmio
pio:	out %al, $0x80
	loop pio
	jmp off
mmio:	movl %ecx, UNCLAIMED_MMIO
	loop mmio
off:	mov $0x604, %dx
	mov $0x3400, %ax		/* SLP_TYP 5 | SLP_EN */
	out %ax, %dx
	mov $0x2000, %ax		/* SLP_TYP 0 | SLP_EN */
	out %ax, %dx
1:	hlt
	jmp 1b
