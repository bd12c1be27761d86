/* Intel I/OAT (Crystal Beach DMA 3.x, e.g. Skylake-SP's 8086:2021): one
 * channel per PCI function, 64-byte descriptors in a ring, DMACOUNT as the
 * doorbell, completion written back to CHANCMP's address. */
#ifndef IOAT_H
#define IOAT_H
#include "types.h"
#include "pci.h"

#define IOAT_VENDOR     0x8086
#define IOAT_DEVICE     0x2021
#define IOAT_MAX_FNS    8

/* BAR0: device registers */
#define IOAT_CHANCNT    0x00    /* 8 */
#define IOAT_XFERCAP    0x01    /* 8: log2 of the largest transfer */
#define IOAT_INTRCTRL   0x03    /* 8 */
#define IOAT_ATTNSTATUS 0x04    /* 32 */
#define IOAT_CBVER      0x08    /* 8 */
#define IOAT_DMACAPABILITY 0x10 /* 32 */
/* channel 0 */
#define IOAT_CHANCTRL   0x80    /* 16 */
#define IOAT_CHANCMD    0x84    /* 8 */
#define IOAT_DMACOUNT   0x86    /* 16 */
#define IOAT_CHANSTS    0x88    /* 64 */
#define IOAT_CHAINADDR  0x90    /* 64 (two dwords) */
#define IOAT_CHANCMP    0x98    /* 64 (two dwords) */
#define IOAT_CDAR       0xA0    /* 64 */
#define IOAT_CHANERR    0xA8    /* 32, RW1C */
#define IOAT_CHANERR_INT 0x180  /* configuration space, RW1C */

#define INTRCTRL_MASTER_INT_EN  0x01
#define INTRCTRL_INT            0x04
#define CHANCTRL_INT_REARM      0x0001
#define CHANCTRL_ERR_COMPLETION_EN 0x0004
#define CHANCTRL_ANY_ERR_ABORT_EN 0x0008
#define CHANCTRL_ERR_INT_EN     0x0010
#define CHANCTRL_RUN    (CHANCTRL_INT_REARM | CHANCTRL_ERR_COMPLETION_EN | \
			 CHANCTRL_ANY_ERR_ABORT_EN | CHANCTRL_ERR_INT_EN)
#define CHANCMD_SUSPEND 0x04
#define CHANCMD_ABORT   0x08
#define CHANCMD_RESUME  0x10
#define CHANCMD_RESET   0x20
#define CHANSTS_STATE(s) ((s) & 7)
#define CHANSTS_ADDR(s) ((s) & ~0x3FULL)
#define CHANSTS_ACTIVE  0
#define CHANSTS_IDLE    1
#define CHANSTS_SUSPENDED 2
#define CHANSTS_HALTED  3

#define CHANERR_NEXT_ADDR_ERR   0x0004
#define CHANERR_NEXT_DESC_ALIGN_ERR 0x0008
#define CHANERR_CHAIN_ADDR_VALUE_ERR 0x0010
#define CHANERR_READ_DATA_ERR   0x0100
#define CHANERR_WRITE_DATA_ERR  0x0200
#define CHANERR_CONTROL_ERR     0x0400
#define CHANERR_LENGTH_ERR      0x0800
#define CHANERR_COMPLETION_ADDR_ERR 0x1000

/* Descriptor control */
#define DESC_INT_EN     0x01
#define DESC_COMPL_WRITE 0x08
#define DESC_FENCE      0x10
#define DESC_NULL       0x20
#define DESC_OP_SHIFT   24

struct ioat_desc {
	uint32_t size, ctl;
	uint64_t src, dst, next;
	uint64_t rsvd[4];
} __attribute__((aligned(64)));

#define IOAT_RING       64      /* descriptors: one page */

struct ioat_chan {
	struct pci_dev *pci;
	uintptr_t mmio;
	unsigned xfercap;               /* log2 */
	struct ioat_desc *ring;         /* IOAT_RING entries, each linked to the next */
	uint64_t ring_pa;
	volatile uint64_t *compl;       /* completion writeback */
	uint64_t compl_pa;
	uint16_t head;                  /* descriptors written: DMACOUNT once issued */
	bool started;                   /* reset and CHAINADDR given since */
	int owner_pid;                  /* a process owns it (user.c): hands off */
	volatile unsigned irqs;
};

extern struct ioat_chan ioat_chans[IOAT_MAX_FNS];
extern int ioat_nchans;
extern int ioat_irq_mode;               /* of ioat_chans[0]: 0 polled, 1 MSI-X, 2 INTx */

/* Finds every function, maps BAR0, allocates rings; NULL or why not. */
const char *ioat_probe(void);
uint8_t ioat_r8(struct ioat_chan *c, unsigned off);
uint16_t ioat_r16(struct ioat_chan *c, unsigned off);
uint32_t ioat_r32(struct ioat_chan *c, unsigned off);
uint64_t ioat_r64(struct ioat_chan *c, unsigned off);
void ioat_w8(struct ioat_chan *c, unsigned off, uint8_t v);
void ioat_w16(struct ioat_chan *c, unsigned off, uint16_t v);
void ioat_w32(struct ioat_chan *c, unsigned off, uint32_t v);
/* CHANERR cleared, reset, CHANCTRL, CHANCMP and CHAINADDR (= the ring);
 * NULL or why not. */
const char *ioat_start(struct ioat_chan *c, uint16_t chanctrl);
/* The next ring entry (its link kept): its physical address. */
uint64_t ioat_put(struct ioat_chan *c, uint32_t size, uint32_t ctl, uint64_t src, uint64_t dst);
/* A copy in descriptors of at most 2^XFERCAP, ctl on the last one: its address. */
uint64_t ioat_memcpy(struct ioat_chan *c, uint64_t src, uint64_t dst, uint64_t len, uint32_t ctl);
void ioat_issue(struct ioat_chan *c);   /* DMACOUNT = head */
/* Until CHANSTS is not ACTIVE (or timeout): the state, or -1. */
int ioat_wait(struct ioat_chan *c, uint64_t timeout_us);
/* Interrupts of ioat_chans[0]: 0 none, 1 MSI-X, 2 INTx; NULL or why not. */
const char *ioat_set_irq(int mode);
/* A process takes (pid) or gives back (0) the function: the channel is reset. */
void ioat_give(struct pci_dev *d, int pid);

#endif
