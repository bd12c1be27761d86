/* tiny: a Multiboot 1 kernel for akvm's integration tests.
 * 32-bit code, paging off. The first byte of the command line picks
 * what it does after printing its banner:
 *   p  power off through the ACPI PM1a control port
 *   r  reset through port 0xCF9
 *   t  triple fault (empty IDT, then ud2)
 *   s  start the second CPU with INIT-SIPI-SIPI; it prints, then power off
 *   e  echo serial input until 'q', then power off
 *   c  check that PIT channel 0 is already counting (a BIOS leaves it so)
 *   f  flood COM1 forever, 4 KiB per `rep outsb` (one exit each)
 *   F  flood COM1 with 384 KiB, then power off
 */
	.set MB_MAGIC, 0x1BADB002
	.set MB_FLAGS, 0x3
	.set COM1, 0x3F8
	.set PM1A_CNT, 0x604
	.set TRAMPOLINE, 0x8000
	.set AP_FLAG, 0x9F000
	.set FLOOD_BUF, 0x300000
	.set FLOOD_CHUNK, 4096
	.set FLOOD_CHUNKS, 96		/* 'F': 384 KiB */
	.set LAPIC_SVR, 0xFEE000F0
	.set LAPIC_ICR_LO, 0xFEE00300
	.set LAPIC_ICR_HI, 0xFEE00310

	.section .text
	.code32
	.align 4
	.long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

	.globl _start
_start:
	mov $0x200000, %esp
	mov %ebx, %ebp
	mov $banner, %esi
	call puts
	mov 16(%ebp), %esi		/* multiboot info: cmdline */
	call puts
	mov $newline, %esi
	call puts
	mov 16(%ebp), %esi
	movb (%esi), %al
	cmp $'p', %al
	je poweroff
	cmp $'r', %al
	je reset
	cmp $'t', %al
	je triple
	cmp $'s', %al
	je smp
	cmp $'e', %al
	je echo
	cmp $'c', %al
	je pit
	cmp $'f', %al
	je flood
	cmp $'F', %al
	je flood
	jmp poweroff

poweroff:
	mov $PM1A_CNT, %dx
	mov $0x3400, %ax		/* SLP_TYP 5, SLP_EN */
	out %ax, %dx
1:	hlt
	jmp 1b

reset:
	mov $0xCF9, %dx
	mov $0x06, %al
	out %al, %dx
1:	hlt
	jmp 1b

triple:
	lidt null_idt
	ud2

echo:
	mov $COM1 + 5, %dx
1:	in %dx, %al
	test $1, %al
	jz 1b
	mov $COM1, %dx
	in %dx, %al
	cmp $'q', %al
	je poweroff
	call putc
	mov $COM1 + 5, %dx
	jmp 1b

/* flood: fill FLOOD_BUF with lines of '.', then send it with rep outsb,
 * forever ('f') or FLOOD_CHUNKS times ('F', then power off). %al holds the mode. */
flood:
	mov %al, %bl
	mov $FLOOD_BUF, %edi
	mov $FLOOD_CHUNK, %ecx
	mov $'.', %al
	rep stosb
	movb $'\n', FLOOD_BUF + 63
	mov $FLOOD_CHUNKS, %ebp
1:	mov $FLOOD_BUF, %esi
	mov $FLOOD_CHUNK, %ecx
	mov $COM1, %dx
	rep outsb
	cmp $'f', %bl
	je 1b
	dec %ebp
	jnz 1b
	jmp poweroff

pit:
	call pit_read
	mov %ax, %bx
	mov $100000, %ecx
1:	loop 1b
	call pit_read
	mov $pit_stopped, %esi
	cmp %ax, %bx
	je 2f
	mov $pit_counting, %esi
2:	call puts
	jmp poweroff

/* pit_read: latch and read PIT channel 0's count into %ax. */
pit_read:
	mov $0x00, %al
	out %al, $0x43
	in $0x40, %al
	mov %al, %ah
	in $0x40, %al
	xchg %al, %ah
	ret

smp:
	movl $0, AP_FLAG
	mov $ap_start, %esi		/* copy the real-mode trampoline down */
	mov $TRAMPOLINE, %edi
	mov $(ap_end - ap_start), %ecx
	rep movsb
	movl $0x1FF, LAPIC_SVR		/* software-enable the local APIC */
	movl $(1 << 24), LAPIC_ICR_HI
	movl $0x4500, LAPIC_ICR_LO	/* INIT */
	movl $(1 << 24), LAPIC_ICR_HI
	movl $(0x4600 | (TRAMPOLINE >> 12)), LAPIC_ICR_LO	/* SIPI */
	mov $2000000, %ecx
1:	cmpl $0, AP_FLAG
	jne 2f
	pause
	loop 1b
	mov $ap_missing, %esi
	call puts
	jmp poweroff
2:	mov $ap_seen, %esi
	call puts
	jmp poweroff

/* putc: %al to COM1 once the transmitter holding register is empty. */
putc:
	push %edx
	push %eax
	mov $COM1 + 5, %dx
1:	in %dx, %al
	test $0x20, %al
	jz 1b
	pop %eax
	mov $COM1, %dx
	out %al, %dx
	pop %edx
	ret

/* puts: the NUL-terminated string at %esi. */
puts:
	lodsb
	test %al, %al
	jz 1f
	call putc
	jmp puts
1:	ret

	.code16
ap_start:
	mov $COM1, %dx
	mov $'A', %al
	out %al, %dx
	mov $'P', %al
	out %al, %dx
	mov $'\n', %al
	out %al, %dx
	mov $(AP_FLAG >> 4), %ax
	mov %ax, %ds
	movl $1, 0
1:	hlt
	jmp 1b
ap_end:
	.code32

	.section .rodata
banner:	.asciz "tiny: hello, cmdline="
newline: .asciz "\n"
ap_missing: .asciz "tiny: no AP\n"
pit_counting: .asciz "tiny: PIT counting\n"
pit_stopped: .asciz "tiny: PIT stopped\n"
ap_seen: .asciz "tiny: AP online\n"
	.align 8
null_idt: .word 0
	.long 0
