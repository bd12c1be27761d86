/* Virtio 1.x devices over PCI (modern) and MMIO; split virtqueues, polled. */
#ifndef VIRTIO_H
#define VIRTIO_H
#include "types.h"
#include "pci.h"
#include "virtio_spec.h"         /* IDs, feature and status bits, register layouts */

enum virtio_transport { VIRTIO_PCI, VIRTIO_MMIO };

struct virtq {
	uint16_t size, index;
	volatile uint64_t *desc;        /* 16 bytes each: addr, len|flags|next */
	volatile uint16_t *avail;       /* flags, idx, ring[] */
	volatile uint16_t *used;        /* flags, idx, then {u32 id, u32 len}[] */
	uint16_t avail_idx, last_used;
	uintptr_t notify;               /* PCI: where to write the queue index */
	bool ready;
};

struct vbuf {
	uint64_t pa;
	uint32_t len;
	bool device_writes;
};

#define VIRTIO_MAX_DEVS 12
#define VIRTIO_MAX_QUEUES 2

struct virtio_dev {
	enum virtio_transport transport;
	uint32_t type;
	char where[32];                 /* "pci 00:04.0" / "mmio 0xfeb00000" */
	/* PCI */
	struct pci_dev *pci;
	uintptr_t common, isr, devcfg, notify_base;
	uint32_t notify_mult;
	struct { uint8_t bar; uint32_t off, len; } cap[VPCI_CAP_DEVICE + 1];    /* by kind */
	/* MMIO */
	uintptr_t mmio;
	uint64_t mmio_pa;               /* its register page (assign maps it) */
	uint32_t mmio_version;          /* 1 legacy, 2 modern */
	uint64_t features;              /* negotiated */
	struct virtq vq[VIRTIO_MAX_QUEUES];
	bool ready;
	const char *err;                /* why initialisation failed */
	void *scratch;                  /* a page for request headers */
	int owner_pid;                  /* a process owns it (assign): the driver keeps off */
};

extern struct virtio_dev virtio_devs[VIRTIO_MAX_DEVS];
extern int virtio_ndevs;

/* Finds virtio devices (PCI functions 1af4:1000-107f; MMIO from
 * "virtio_mmio.device=SIZE@ADDR[:IRQ]" on the command line, or microvm's
 * fixed window when there is no PCI).  Once. */
int virtio_scan(void);
/* The nth device of a type, initialised (NULL if there is none). */
struct virtio_dev *virtio_get(uint32_t type, int nth);
/* Initialise: reset, negotiate (want & offered, plus VERSION_1 and
 * ACCESS_PLATFORM), set up nq queues, DRIVER_OK.  NULL or why not. */
const char *virtio_init(struct virtio_dev *d, uint64_t want, int nq);
const char *virtio_type_name(uint32_t type);

/* Device reset: status 0, then until it reads 0 (false if it never does). */
bool virtio_reset(struct virtio_dev *d);
/* Device assignment (user.c): keep the driver off the device (virtio_init
 * refuses) while process pid owns it, and reset it; false when it did not
 * reset or, translated by the IOMMU, does not offer VIRTIO_F_ACCESS_PLATFORM.
 * The owner resets it and clears owner_pid when it lets go; the next
 * virtio_init sets it up anew. */
bool virtio_give(struct virtio_dev *d, int pid, bool translated);

/* Device-specific configuration space. */
uint8_t virtio_cfg8(struct virtio_dev *d, unsigned off);
uint32_t virtio_cfg32(struct virtio_dev *d, unsigned off);
uint64_t virtio_cfg64(struct virtio_dev *d, unsigned off);
uint8_t virtio_status(struct virtio_dev *d);

/* One chain on queue q (at most one outstanding per queue). */
const char *virtq_add(struct virtio_dev *d, int q, const struct vbuf *b, int n);
void virtq_kick(struct virtio_dev *d, int q);
/* Waits for the queue's outstanding chain; *len = bytes the device wrote. */
const char *virtq_wait(struct virtio_dev *d, int q, uint64_t timeout_us, uint32_t *len);
/* Non-blocking: true and *len when the outstanding chain came back. */
bool virtq_done(struct virtio_dev *d, int q, uint32_t *len);
/* add + kick + wait */
const char *virtq_xfer(struct virtio_dev *d, int q, const struct vbuf *b, int n,
		       uint64_t timeout_us, uint32_t *len);

void virtio_print(void);

#endif
