#ifndef AKVM_E1000_H
#define AKVM_E1000_H

#include "dmaxlate.h"
#include "guestram.h"
#include "nicport.h"

/* The 82540EM's data path in C (e1000.c), the twin of E1000._transmit()
 * and E1000._rx_frame() in akvm.devices.e1000 (8254x SDM). The state the
 * data path shares with Python's register model lives in struct
 * akvm_e1000: Python reads and writes it there, under the same lock
 * (akvm_e1000_lock), and its registers keep their spec names. */

/* Registers (byte offsets in BAR0) */
#define E1000_ICR	0x00C0
#define E1000_IMS	0x00D0
#define E1000_RCTL	0x0100
#define E1000_TCTL	0x0400
#define E1000_RDBAL	0x2800
#define E1000_RDBAH	0x2804
#define E1000_RDLEN	0x2808
#define E1000_RDH	0x2810
#define E1000_RDT	0x2818
#define E1000_TDBAL	0x3800
#define E1000_TDBAH	0x3804
#define E1000_TDLEN	0x3808
#define E1000_TDH	0x3810
#define E1000_TDT	0x3818
#define E1000_STATS	0x4000		/* 64 statistics registers */
#define E1000_MTA	0x5200		/* 128 */
#define E1000_RAL0	0x5400		/* 16 RAL/RAH pairs */
#define E1000_RAH0	0x5404
#define E1000_RAL_COUNT	16
#define E1000_MTA_COUNT	128
#define E1000_STATS_COUNT 64

/* Statistics (offsets) the data path counts */
#define E1000_MPC	0x4010
#define E1000_PRC64	0x405C		/* then 127, 255, 511, 1023, 1522: every 4 bytes */
#define E1000_GPRC	0x4074
#define E1000_BPRC	0x4078
#define E1000_MPRC	0x407C
#define E1000_GPTC	0x4080
#define E1000_GORCL	0x4088
#define E1000_GOTCL	0x4090
#define E1000_RNBC	0x40A0
#define E1000_ROC	0x40AC
#define E1000_TORL	0x40C0
#define E1000_TOTL	0x40C8
#define E1000_TPR	0x40D0
#define E1000_TPT	0x40D4
#define E1000_PTC64	0x40D8
#define E1000_MPTC	0x40F0
#define E1000_BPTC	0x40F4

/* Interrupt causes */
#define E1000_ICR_TXDW	(1u << 0)
#define E1000_ICR_TXQE	(1u << 1)
#define E1000_ICR_RXDMT0 (1u << 4)
#define E1000_ICR_RXT0	(1u << 7)
/* RCTL */
#define E1000_RCTL_EN	(1u << 1)
#define E1000_RCTL_SBP	(1u << 2)
#define E1000_RCTL_UPE	(1u << 3)
#define E1000_RCTL_MPE	(1u << 4)
#define E1000_RCTL_LPE	(1u << 5)
#define E1000_RCTL_RDMTS_SHIFT 8
#define E1000_RCTL_MO_SHIFT 12
#define E1000_RCTL_BAM	(1u << 15)
#define E1000_RCTL_BSIZE_SHIFT 16
#define E1000_RCTL_VFE	(1u << 18)
#define E1000_RCTL_BSEX	(1u << 25)
#define E1000_RCTL_SECRC (1u << 26)
/* TCTL */
#define E1000_TCTL_EN	(1u << 1)
#define E1000_TCTL_PSP	(1u << 3)
/* RAH */
#define E1000_RAH_AV	(1u << 31)
/* Receive descriptor status */
#define E1000_RXD_STAT_DD (1u << 0)
#define E1000_RXD_STAT_EOP (1u << 1)
#define E1000_RXD_STAT_IXSM (1u << 2)
/* Transmit descriptor command (bits 31:24 of the second dword) and status */
#define E1000_TXD_CMD_EOP (1u << 0)
#define E1000_TXD_CMD_IFCS (1u << 1)
#define E1000_TXD_CMD_IC (1u << 2)	/* legacy; TSE in an extended descriptor */
#define E1000_TXD_CMD_RS (1u << 3)
#define E1000_TXD_CMD_DEXT (1u << 5)
#define E1000_TXD_CMD_VLE (1u << 6)
#define E1000_TXD_STAT_DD (1u << 0)
#define E1000_TXD_DTYP_DATA 1

/* Frames */
#define E1000_MAX_RX_NORMAL 1518	/* with the FCS; more needs RCTL.LPE */
#define E1000_MAX_RX_LONG 16384
#define E1000_MIN_FRAME 60		/* without the FCS */
#define E1000_FCS_LEN 4
#define E1000_MAX_TX_PACKET 16384	/* without TSE */
#define E1000_TXQ_SLOTS	128		/* frames a vCPU gathers for the backend's thread */
#define E1000_TXQ_SLOT	2048		/* bytes each */

struct akvm_e1000 {
	/* registers shared with Python (under the lock) */
	unsigned int rctl, tctl, icr, ims;
	unsigned int rdbal, rdbah, rdlen, rdh, rdt;
	unsigned int tdbal, tdbah, tdlen, tdh, tdt;
	unsigned int ra[E1000_RAL_COUNT][2];
	unsigned int mta[E1000_MTA_COUNT];
	unsigned int stats[E1000_STATS_COUNT];
	/* what Python keeps current */
	int link_up;		/* STATUS.LU */
	int bus_master;		/* PCI Bus Master Enable */
	int intx;		/* INTA# asserted */
	int native;		/* C may serve the rings (a backend's thread) */
	int python_tx;		/* Python holds part of a packet: the ring is Python's */
	int python_rx;		/* Python holds a received frame: frames wait, turns are Python's */
	int tx_stopped;		/* a transmit DMA failed: nothing is sent until a TDT write */
	int rx_waiting;		/* a frame found no free descriptor: an RDT write wakes the thread */
	int rx_full;		/* ... and RNBC counted it: until a frame is placed again */
	int kick_fd;		/* eventfd of the backend's thread: TDT or RDT written */
	unsigned long long bar;	/* BAR0's address, for the exit handler */
	/* counters for --stats */
	unsigned long long tx_frames, rx_frames, rx_dropped, exits;
	unsigned long long direct;	/* TDT writes whose frames the vCPU sent itself */
};

struct akvm_e1000_c;
struct akvm_e1000_c *akvm_e1000_new(void);
void akvm_e1000_free(struct akvm_e1000_c *c);
/* Guest RAM for the data path (the slots stay alive while in use); needed before native. */
void akvm_e1000_use_ram(struct akvm_e1000_c *c, const struct akvm_mem_slot *slots,
			unsigned int nslots);
/* Behind an IOMMU, from the first call on: ring and buffer addresses are bus
 * addresses, which C reaches only through x (dmaxlate.h), holding its lock
 * from a step's first access to its last; x NULL or an address x cannot
 * translate leaves the work to Python. Without a call: guest-physical. */
void akvm_e1000_use_xlate(struct akvm_e1000_c *c, const struct akvm_dma_xlate *x);
struct akvm_e1000 *akvm_e1000_state(struct akvm_e1000_c *c);
/* Recursive: Python may take it again inside a register access. */
void akvm_e1000_lock(struct akvm_e1000_c *c);
void akvm_e1000_unlock(struct akvm_e1000_c *c);
/* devices/nicport.h */
int akvm_e1000_tx(void *c, akvm_nic_out_fn out, void *ctx, int polling);
int akvm_e1000_rx(void *c, const uint8_t *frame, size_t len);
void akvm_e1000_attach(void *c, akvm_nic_turn_fn turn, void *engine);
/* A frame gathered for the backend's thread and not sent yet (snapshots). */
int akvm_e1000_queued(struct akvm_e1000_c *c, unsigned int i, uint8_t *out);
/* The vCPU's exit handler (akvm_exit_fn): TDT and RDT writes while native. */
int akvm_e1000_exit(void *c, void *kvm_run);
unsigned int akvm_e1000_crc32(const uint8_t *data, size_t len);

#endif
