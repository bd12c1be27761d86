/* The interface between the kernel and its user programs: the one list of
 * system call numbers and user addresses both sides compile against
 * (include/proc.h in the kernel, user/ulib.h in user programs). #defines
 * and fixed-width structs only (both sides have <stdint.h>): it is built
 * freestanding on both sides. */
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
#define SYS_ASSIGN      10      /* assign(sel, info): the device to this process; its BARs' user VA */
#define SYS_RELEASE     11      /* release(): the device back to pass-through */
#define SYS_CORE_REQUEST 12     /* core_request(entry, stack_top, arg): one more core (below) */
#define SYS_CORE_YIELD  13      /* core_yield(): this core leaves the process */
#define SYS_NCORES      14      /* ncores(): how many cores run this process now */
#define SYS_DEV_XLATE   15      /* dev_xlate(on): the owned device through the domain, or not */
#define SYS_DMA_ADDR    16      /* dma_addr(va): the address the owned device uses for va */
#define SYS_IOMMU_LEND  17      /* benchmark only: iommu_lend(mode, info): the VT-d unit to this process */
#define NSYSCALLS       18

/* Processes that span several cores, Akaros style.  core_request() takes
 * an idle core and starts it in ring 3 in the caller's address space at
 * entry(arg, core) (RDI = arg, RSI = that core's id) with RSP = stack_top
 * - 8, as after a call (stack_top 16-byte aligned, in mapped writable
 * memory; entry must not return: it ends with core_yield() or exit(), or
 * runs until the process ends).  It returns the core's id, or -1
 * when no core is idle.  core_yield() gives the calling core back; the
 * process ends when its last core yields (status 0) or when any core calls
 * exit() or is killed by an exception: then every core of the process
 * leaves it (an IPI to those in ring 3) and goes back to idle. */

/* assign()'s device selector: a bdf (bus << 8 | dev << 3 | fn), or one of */
#define ASSIGN_EDU      0xFFFF  /* an edu device no process owns (the first such) */
#define ASSIGN_PCI_ID(vendor, device) (1ULL << 32 | (uint64_t)(vendor) << 16 | (device))
#define ASSIGN_VIRTIO_BLK ASSIGN_PCI_ID(0x1AF4, 0x1042)   /* the first modern virtio-blk */
#define ASSIGN_VIRTIO_NET ASSIGN_PCI_ID(0x1AF4, 0x1041)   /* the first modern virtio-net */
#define ASSIGN_E1000    ASSIGN_PCI_ID(0x8086, 0x100E)     /* the first Intel 82540EM */
#define ASSIGN_VIRTIO_MMIO(type) (2ULL << 32 | (type))   /* the first virtio-mmio device of a type */
/* ORed into the selector: the caller programs the device only with addresses
 * from dma_addr(), so it may have a device no IOMMU translates (none present,
 * outside the DRHD's scope, or virtio-mmio): DMA then goes to physical
 * addresses, without isolation.  Without it assign() wants translation.
 * Network devices only (class 02 functions, virtio-net): the kernel has no
 * driver of its own for them. */
#define ASSIGN_PHYSICAL_OK (1ULL << 40)
#define ASSIGN_IOAT     ASSIGN_PCI_ID(0x8086, 0x2021)   /* an I/OAT channel no process owns */

/* What assign() tells the owner of a modern virtio-pci device (its second
 * argument, required for one): the BARs that hold the virtio structures
 * are mapped back to back, uncached, from the address assign() returned;
 * each structure is at an offset from there. */
struct assign_virtio {
	uint32_t common, notify, isr, device;   /* offsets of the four structures */
	uint32_t common_len, notify_len, isr_len, device_len;
	uint32_t notify_off_multiplier;         /* queue q notifies at notify + q's off * this */
	uint32_t map_len;                       /* bytes mapped */
	uint16_t bdf, pci_device;               /* which function (vendor 0x1af4) */
	uint32_t mmio;                          /* 1: virtio-mmio, its registers at offset 0 */
};

/* dev_xlate(0) puts the owned device's context entry back to the kernel's
 * pass-through (it then reaches all of RAM by physical address: for
 * measurements only), dev_xlate(1) points it at the process's domain again
 * (as assign() left it).  dma_addr(va) is what to program into the device
 * for va either way (the IOVA, or the physical address), or -1. */

/*
 * iommu_lend(mode, &info) (benchmark only, like dev_xlate and dma_addr:
 * no isolation while it lasts -- the process can make the unit write any
 * physical address and can turn translation off).  It lends the calling
 * process the VT-d unit, so that user/invbench.c can time invalidations
 * from ring 3: the DRHD register page is mapped uncached at the next mmap
 * slot (the return value; also info.regs) and, in IOMMU_LEND_QI mode, the
 * kernel's invalidation queue page right after it (info.queue; queued
 * invalidation switched on for the loan if it was off).  IOMMU_LEND_REG
 * switches queued invalidation off for the loan, since the spec forbids
 * register commands while it is on.  While lent the kernel issues no
 * invalidation itself: its VT-d paths refuse, assign() refuses, and the
 * loan is refused while a process owns a device.  iommu_lend(
 * IOMMU_LEND_RETURN, 0), exit or kill gives it back: the kernel unmaps
 * both pages, waits for the queue to drain (IQH = IQT; after a queue error
 * it empties the queue and clears FSTS.IQE), takes IQT as its own tail and
 * puts queued invalidation back as it was.
 */
#define IOMMU_LEND_RETURN 0
#define IOMMU_LEND_QI   1       /* queued invalidation on: write descriptors, then IQT */
#define IOMMU_LEND_REG  2       /* queued invalidation off: IVA + IOTLB registers */
/* Negative returns other than -1 (bad arguments, already lent, no room): */
#define IOMMU_LEND_ENODEV (-2)  /* no usable VT-d unit */
#define IOMMU_LEND_ENOQI  (-3)  /* IOMMU_LEND_QI without ECAP.QI */
#define IOMMU_LEND_EBUSY  (-4)  /* a process owns a device behind the unit */

struct iommu_lend {
	uint64_t status_va;     /* in: a writable page of the caller's (0: none) */
	uint64_t status_pa;     /* out: its guest-physical address: wait descriptors' status */
	uint64_t regs;          /* out: the register page (4 KiB, uncached) */
	uint64_t queue;         /* out: the invalidation queue (IOMMU_LEND_QI), else 0 */
	uint64_t cap, ecap;     /* out: CAP and ECAP */
	uint64_t desc_drain;    /* out: DR/DW bits (7, 6) for IOTLB descriptors, per CAP */
	uint64_t reg_drain;     /* out: DR/DW bits (49, 48) for the IOTLB register */
	uint32_t entries;       /* out: 128-bit descriptors in the queue */
	uint32_t tail;          /* out: next free descriptor (IQT / 16) as the kernel left it */
	uint32_t iva, iotlb;    /* out: offsets of the IVA and IOTLB registers (ECAP.IRO) */
	uint32_t iqh, iqt;      /* out: offsets of IQH and IQT */
	uint32_t fsts, gsts;    /* out: offsets of FSTS and GSTS */
	uint16_t did;           /* out: a domain id to invalidate in (the pid: nothing uses it) */
	uint16_t qi;            /* out: 1 queued invalidation is on, 0 registers */
	uint32_t rsvd;
};

/* A device assigned to a process sees the process's mmap area: IOVA = user
 * virtual address - USER_DMA_BASE, for the first USER_DMA_SIZE bytes (the
 * edu's DMA mask is 28 bits, in QEMU and akvm alike, and user addresses
 * start at 512 GiB). */
#define USER_DMA_BASE   USER_MMAP_BASE
#define USER_DMA_SIZE   (1ULL << 28)

#endif
