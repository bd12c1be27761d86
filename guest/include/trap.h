/* IDT, interrupt vectors and the saved register frame. */
#ifndef TRAP_H
#define TRAP_H
#include "types.h"

/* Vector assignment.  0x20-0x2F: the masked 8259 after remapping. */
#define VEC_PIC_BASE    0x20
#define VEC_IRQ_BASE    0x30    /* ISA IRQ n via the IOAPIC -> 0x30 + n */
#define VEC_IOMMU_FAULT 0xD0    /* VT-d fault event (FEDATA) */
#define VEC_IOMMU_INV   0xD1    /* VT-d invalidation completion (IEDATA) */
#define VEC_EDU_MSI     0xD2
#define VEC_EDU_INTX    0xD3
#define VEC_IOAT_MSIX   0xD4
#define VEC_IOAT_INTX   0xD5
#define VEC_E1000_INTX  0xD6
#define VEC_SOFT_TEST   0x80    /* int $0x80 self-test */
#define VEC_TIMER       0xE0
#define VEC_IPI_TEST    0xF0
#define VEC_SHOOTDOWN   0xF1
#define VEC_PROC_STOP   0xF2    /* a process's other cores leave it (user.c) */
#define VEC_APIC_ERROR  0xFE
#define VEC_SPURIOUS    0xFF

struct trapframe {
	uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp;
	uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
	uint64_t vector, err;
	uint64_t rip, cs, rflags, rsp, ss;      /* pushed by the CPU */
};

typedef void (*irq_handler_t)(struct trapframe *tf);

#define VEC_SYSCALL     0x100   /* trapframe.vector of a SYSCALL entry (not an IDT vector) */

const char *exc_name(unsigned vector);         /* "#PF page fault", ... */
void trap_init(void);           /* build the IDT (BSP) */
void idt_load(void);            /* every core */
void gdt_load(void);            /* every core: high-half GDT base */
void irq_register(int vector, irq_handler_t h);
/* A handler for an exception or a software interrupt (INT n): no EOI.
 * For vectors < 32 it runs instead of the fatal exception dump. */
void trap_register_soft(int vector, irq_handler_t h);

#endif
