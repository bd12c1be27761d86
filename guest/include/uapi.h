/* The interface between the kernel and its user programs: the one list of
 * system call numbers and user addresses both sides compile against
 * (include/proc.h in the kernel, user/ulib.h in user programs). Plain
 * #defines only: it is built freestanding on both sides. */
#ifndef UAPI_H
#define UAPI_H

/* User address space: PML4 slot 1 (512 GiB - 1 TiB).  Slot 0 keeps the
 * kernel's identity map (supervisor only), slots 256-511 the kernel. */
#define USER_BASE       0x0000008000000000ULL   /* programs are linked here */
#define USER_MMAP_BASE  0x0000008040000000ULL   /* anonymous mmap grows up from here */
#define USER_TOP        0x0000010000000000ULL
#define USER_STACK_TOP  (USER_TOP - 0x1000)     /* a guard page above */
#define USER_STACK_PAGES 8

/* System call numbers. */
#define SYS_EXIT        0
#define SYS_WRITE       1
#define SYS_MMAP        2
#define SYS_MUNMAP      3
#define SYS_GETPID      4
#define SYS_YIELD       5
#define SYS_GETCORE     6
#define SYS_NRUNNING    7
#define SYS_IOPERM      8
#define SYS_TSC_KHZ     9
#define SYS_ASSIGN      10      /* assign(bdf): the device to this process; BAR0's user VA */
#define SYS_RELEASE     11      /* release(): the device back to pass-through */
#define NSYSCALLS       12

#define ASSIGN_EDU      0xFFFF  /* assign()'s bdf for "the edu device, wherever it is" */

/* A device assigned to a process sees the process's mmap area: IOVA = user
 * virtual address - USER_DMA_BASE, for the first USER_DMA_SIZE bytes (the
 * edu's DMA mask is 28 bits, in QEMU and akvm alike, and user addresses
 * start at 512 GiB). */
#define USER_DMA_BASE   USER_MMAP_BASE
#define USER_DMA_SIZE   (1ULL << 28)

#endif
