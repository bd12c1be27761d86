/* The I/OAT (Crystal Beach DMA, version 3.3) channel's descriptor engine
 * (ioat.c): runs a channel's descriptor chain over the host mappings of
 * the RAM slots, for a channel whose DMA is direct or passed through by
 * the IOMMU, or translated by a C translator (dmaxlate.h) while it can.
 * akvm.devices.ioat.run_python() is the Python twin, which serves what C
 * leaves through the function's DmaSpace.
 *
 * The channel's state is one struct that both engines and the register
 * file (akvm.devices.ioat.IoatFunction) share. A descriptor is done in
 * steps: fetch (and check), copy (in chunks, so a stop request is seen
 * within one chunk), completion write, advance. C stops before any step
 * whose guest memory is out of its reach (outside RAM, or a translation it
 * does not have) and returns AKVM_IOAT_PYTHON:
 * Python does that step through the DmaSpace (which fails it, or records
 * the IOMMU fault) and the rest of the round. */
#ifndef AKVM_IOAT_H
#define AKVM_IOAT_H

#include "dmaxlate.h"
#include "guestram.h"

/* Descriptors: 64 bytes, 64-byte aligned; the engine reads the first 32. */
#define AKVM_IOAT_DESC_SIZE 64
#define AKVM_IOAT_DESC_ALIGN 64
#define AKVM_IOAT_DESC_SIZE_OFF 0x00		/* u32 transfer size in bytes */
#define AKVM_IOAT_DESC_CTL_OFF 0x04		/* u32 control */
#define AKVM_IOAT_DESC_SRC_OFF 0x08		/* u64 source address */
#define AKVM_IOAT_DESC_DST_OFF 0x10		/* u64 destination address */
#define AKVM_IOAT_DESC_NEXT_OFF 0x18		/* u64 next descriptor's address */
#define AKVM_IOAT_DESC_READ 32			/* what the engine fetches */

/* Descriptor control bits */
#define AKVM_IOAT_CTL_INT_EN 0x00000001u	/* interrupt when done */
#define AKVM_IOAT_CTL_SRC_SNOOP_DIS 0x00000002u
#define AKVM_IOAT_CTL_DEST_SNOOP_DIS 0x00000004u
#define AKVM_IOAT_CTL_COMPL_WRITE 0x00000008u	/* write CHANSTS to CHANCMP when done */
#define AKVM_IOAT_CTL_FENCE 0x00000010u		/* (every descriptor completes in order here) */
#define AKVM_IOAT_CTL_NULL 0x00000020u		/* no transfer */
#define AKVM_IOAT_CTL_OP_SHIFT 24
#define AKVM_IOAT_OP_COPY 0x00			/* the only operation DMACAPABILITY offers */

/* CHANSTS: the last completed descriptor's address (63:6) and the state (2:0) */
#define AKVM_IOAT_CHANSTS_ADDR_MASK 0xFFFFFFFFFFFFFFC0ull
#define AKVM_IOAT_CHANSTS_STATE_MASK 0x7ull
#define AKVM_IOAT_ACTIVE 0
#define AKVM_IOAT_IDLE 1
#define AKVM_IOAT_SUSPENDED 2
#define AKVM_IOAT_HALTED 3

/* CHANCTRL bits the engine looks at */
#define AKVM_IOAT_CHANCTRL_INT_REARM 0x0001u
#define AKVM_IOAT_CHANCTRL_ERR_COMPLETION_EN 0x0004u
#define AKVM_IOAT_CHANCTRL_ANY_ERR_ABORT_EN 0x0008u
#define AKVM_IOAT_CHANCTRL_ERR_INT_EN 0x0010u

/* CHANERR bits */
#define AKVM_IOAT_CHANERR_SRC_ADDR_ERR 0x00001u
#define AKVM_IOAT_CHANERR_DEST_ADDR_ERR 0x00002u
#define AKVM_IOAT_CHANERR_NEXT_ADDR_ERR 0x00004u		/* a descriptor's `next` unreachable */
#define AKVM_IOAT_CHANERR_NEXT_DESC_ALIGN_ERR 0x00008u	/* ... or not 64-byte aligned */
#define AKVM_IOAT_CHANERR_CHAIN_ADDR_VALUE_ERR 0x00010u	/* CHAINADDR so */
#define AKVM_IOAT_CHANERR_CHANCMD_ERR 0x00020u
#define AKVM_IOAT_CHANERR_READ_DATA_ERR 0x00100u		/* the source unreachable */
#define AKVM_IOAT_CHANERR_WRITE_DATA_ERR 0x00200u		/* the destination so */
#define AKVM_IOAT_CHANERR_CONTROL_ERR 0x00400u		/* an operation other than copy */
#define AKVM_IOAT_CHANERR_LENGTH_ERR 0x00800u		/* size 0, or over 2^XFERCAP */
#define AKVM_IOAT_CHANERR_COMPLETION_ADDR_ERR 0x01000u	/* CHANCMP unreachable */

/* Bytes copied between two looks at `stop` and at the round's budget; the
 * budget of a round on the channel's thread, and of one run inline in the
 * DMACOUNT write (a vCPU's: a chunk at most). */
#define AKVM_IOAT_CHUNK 0x10000
#define AKVM_IOAT_ROUND_BYTES 0x1000000
#define AKVM_IOAT_ROUND_DESCRIPTORS 1024
#define AKVM_IOAT_INLINE_BYTES AKVM_IOAT_CHUNK
#define AKVM_IOAT_INLINE_DESCRIPTORS 64
/* Pieces a transfer may be in (pages translated apart): 1 MiB of 4 KiB pages, unaligned. */
#define AKVM_IOAT_MAX_PIECES 260

/* What akvm_ioat_run() returns */
#define AKVM_IOAT_DONE 0	/* the count reached DMACOUNT: state IDLE */
#define AKVM_IOAT_INTERRUPT 1	/* a descriptor with INT_EN completed */
#define AKVM_IOAT_ERROR 2	/* CHANERR set, state HALTED */
#define AKVM_IOAT_STOPPED 3	/* `stop` was set: the caller decides the state */
#define AKVM_IOAT_PYTHON 4	/* the next step's memory is out of reach: Python's */
#define AKVM_IOAT_ROUND 5	/* the round's budget spent: call again */

struct akvm_ioat_chan {
	unsigned long long next;	/* the next descriptor to fetch */
	unsigned long long chansts;	/* CHANSTS */
	unsigned long long chancmp;	/* CHANCMP: the completion writeback address */
	unsigned long long cur;		/* the loaded descriptor's address */
	unsigned long long src, dst, link;	/* ... and its fields */
	unsigned int size, ctl;
	unsigned long long done;	/* bytes of it copied */
	unsigned int loaded;		/* a descriptor is fetched and checked */
	unsigned int from_chainaddr;	/* `next` came from CHAINADDR (not from a descriptor) */
	unsigned int count;		/* descriptors completed, mod 2^16 */
	unsigned int dmacount;		/* DMACOUNT, written while the engine runs */
	unsigned int chanerr;		/* changed only by akvm_ioat_chanerr() */
	unsigned int chanctrl;
	unsigned int xfercap;		/* log2 of the largest transfer */
	int stop;			/* set: return AKVM_IOAT_STOPPED at the next chunk */
	unsigned long long descriptors, bytes;	/* counters */
};

/* One round: at most max_bytes copied (checked between chunks) and
 * max_descriptors fetched. DMA through `x` when it is not NULL (translated:
 * each descriptor's accesses with x's lock held), else straight to RAM. */
int akvm_ioat_run(struct akvm_ioat_chan *ch, const struct akvm_mem_slot *slots,
		  unsigned int nslots, const struct akvm_dma_xlate *x,
		  unsigned long long max_bytes, unsigned int max_descriptors);
/* CHANERR |= set, then &= ~clear, atomically (the engine and a vCPU's W1C). */
unsigned int akvm_ioat_chanerr(struct akvm_ioat_chan *ch, unsigned int set, unsigned int clear);

#endif
