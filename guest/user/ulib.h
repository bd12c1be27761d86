/* The user programs' libc: system call wrappers, strings, printf. */
#ifndef ULIB_H
#define ULIB_H
#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdarg.h>

#include "../include/uapi.h"     /* system call numbers, user addresses */

#define PAGE_SIZE 4096
#define MAP_FAILED ((void *)-1)

static inline long __syscall(long n, long a, long b, long c)
{
	long ret;
	asm volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}

void exit(int status) __attribute__((noreturn));
long write(int fd, const void *buf, size_t len);
void *mmap(size_t len);                 /* anonymous, read/write */
int munmap(void *addr, size_t len);
int getpid(void);
void yield(void);
int getcore(void);
int nrunning(void);
int ioperm(unsigned port, unsigned n, int on);
uint64_t tsc_khz(void);
/* The PCI device bdf (ASSIGN_EDU: the edu) to this process: its BAR0, mapped
 * uncached, or MAP_FAILED; DMA addresses are then this process's virtual
 * addresses minus USER_DMA_BASE (VT-d domain = pid). */
volatile void *assign(unsigned bdf);
static inline uint64_t iova_of(const void *p) { return (uint64_t)p - USER_DMA_BASE; }
/* Any device the kernel gives: sel is a bdf or ASSIGN_* (ASSIGN_VIRTIO_BLK);
 * a virtio-pci device fills *info (where its structures are in the mapping
 * returned). */
volatile void *assign_dev(uint64_t sel, struct assign_virtio *info);
int release(void);
/* Another core for this process: it runs entry(arg, core) in ring 3 on the
 * stack below stack_top (uapi.h).  The core's id, or -1. */
int core_request(void (*entry)(void *arg, int core), void *stack_top, void *arg);
void core_yield(void) __attribute__((noreturn));   /* this core leaves the process */
int ncores(void);
/* The owned device without translation (0: physical addresses, for
 * benchmarks) or through this process's domain (1); dma_addr() converts. */
int dev_xlate(int on);
int64_t dma_addr(const volatile void *va);
/* Benchmark only: the VT-d unit to this process (uapi.h: IOMMU_LEND_QI or
 * IOMMU_LEND_REG, filling *info; IOMMU_LEND_RETURN gives it back).  The
 * register page's address, or a negative IOMMU_LEND_E* / -1. */
long iommu_lend(int mode, struct iommu_lend *info);

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	asm volatile("rdtsc" : "=a"(lo), "=d"(hi) :: "memory");
	return ((uint64_t)hi << 32) | lo;
}
static inline void outb(uint16_t port, uint8_t v) { asm volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void cpu_pause(void) { asm volatile("pause" ::: "memory"); }

void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
long atol(const char *s);
long atolx(const char *s);             /* hexadecimal digits, no prefix */

/* Device registers mapped into the process (assign()): volatile accesses. */
#define R8(a)           (*(volatile uint8_t *)(a))
#define R16(a)          (*(volatile uint16_t *)(a))
#define R32(a)          (*(volatile uint32_t *)(a))
#define W8(a, v)        (*(volatile uint8_t *)(a) = (v))
#define W16(a, v)       (*(volatile uint16_t *)(a) = (v))
#define R64(a)          (*(volatile uint64_t *)(a))
#define W32(a, v)       (*(volatile uint32_t *)(a) = (v))

int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap);
int snprintf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
