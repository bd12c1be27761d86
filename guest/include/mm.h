/* Memory layout shared by C and assembly. */
#ifndef MM_H
#define MM_H

/* The kernel runs at KERNBASE + its physical address (the top 2 GiB,
 * as -mcmodel=kernel requires); low 4 GiB stay identity-mapped so
 * physical addresses (ACPI, MMIO, multiboot data) can be used directly. */
#define KERNBASE        0xFFFFFFFF80000000
#define KERNEL_PA       0x100000

/* Interrupt entry stubs live here (kernel.ld) so the IDT is static. */
#define TRAP_STUBS_VA   0xFFFFFFFF80101000

/* AP start-up code is copied here; SIPI vector = page number. */
#define TRAMPOLINE_PA   0x8000

/* A 4 KiB-mapped window used by the TLB shootdown test. */
#define TEST_WINDOW_VA  0xFFFFFF8000000000

#define PAGE_SIZE       4096
#define PTE_P           0x001
#define PTE_W           0x002
#define PTE_U           0x004
#define PTE_PWT         0x008
#define PTE_PCD         0x010
#define PTE_PS          0x080

#define SEG_KCODE       0x08    /* 64-bit code */
#define SEG_KDATA       0x10
#define SEG_KCODE32     0x18    /* 32-bit code, used on the way up */
#define SEG_UDATA       0x23    /* user data (0x20 | RPL 3) */
#define SEG_UCODE       0x2B    /* user 64-bit code (0x28 | RPL 3) */
#define SEG_TSS0        0x30    /* core n's TSS at SEG_TSS0 + 16 * n */
#define GDT_NTSS        64      /* = MAX_CPUS */

#define CR0_PE          0x00000001
#define CR0_MP          0x00000002
#define CR0_EM          0x00000004
#define CR0_TS          0x00000008
#define CR0_NE          0x00000020
#define CR0_WP          0x00010000
#define CR0_NW          0x20000000
#define CR0_CD          0x40000000
#define CR0_PG          0x80000000
#define CR4_PAE         0x00000020
#define CR4_PGE         0x00000080
#define CR4_OSXSAVE     0x00040000

#define MSR_EFER        0xC0000080
#define EFER_SCE        0x00000001
#define EFER_LME        0x00000100
#define MSR_STAR        0xC0000081
#define MSR_LSTAR       0xC0000082
#define MSR_FMASK       0xC0000084
#define MSR_KERNEL_GS_BASE 0xC0000102

#ifndef __ASSEMBLER__
#include <stdint.h>
#define PHYS_TO_VIRT(pa) ((void *)(uintptr_t)(pa))   /* identity map, < 4 GiB */
#define KVA_TO_PA(va)    ((uint64_t)(uintptr_t)(va) - KERNBASE)
#define PHYS_LIMIT       0x100000000ULL              /* end of identity map */
#endif

#endif
