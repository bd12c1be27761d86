/* QEMU's "edu" PCI test device (1234:11e8): a DMA engine with a 4 KiB buffer. */
#ifndef EDU_H
#define EDU_H
#include "types.h"
#include "pci.h"

#define EDU_BUF_ADDR    0x40000         /* device address of its buffer */
#define EDU_BUF_SIZE    4096
/* QEMU 7.2's edu aborts the whole VM (hw_error) on a transfer that ends at
 * the buffer's last byte (its range check wants end < 0x41000), so no
 * transfer may: at most 4088 bytes (8-byte multiples) from the start. */
#define EDU_DMA_MAX     (EDU_BUF_SIZE - 8)
#define EDU_DMA_TO_DEV  0               /* RAM -> device buffer */
#define EDU_DMA_TO_RAM  1               /* device buffer -> RAM */

#define EDU_IRQ_FACT    0x001
#define EDU_IRQ_DMA     0x100

enum edu_wait { EDU_POLL, EDU_IRQ };

struct edu {
	bool probed, present;
	const char *absent_why;
	struct pci_dev *pci;
	uintptr_t mmio;
	uint32_t id;
	int irq_mode;                   /* 0 none, 1 MSI, 2 INTx */
	int gsi;                        /* INTx: the GSI routed, or -1 */
	volatile unsigned irqs;
	volatile uint32_t irq_status;   /* accumulated from the handler */
	unsigned long dmas;
};

extern struct edu edu;

const char *edu_probe(void);
uint32_t edu_read32(unsigned off);
void edu_write32(unsigned off, uint32_t v);
/* Interrupt delivery: 0 none (polled), 1 MSI, 2 INTx through the IOAPIC. */
const char *edu_set_irq(int mode);
/* One DMA: src/dst are device addresses (bus addresses / IOVAs for RAM,
 * EDU_BUF_ADDR + offset for the buffer).  Waits by polling or for the
 * interrupt; NULL on completion, else why not. */
const char *edu_dma(uint64_t src, uint64_t dst, uint32_t len, int dir, enum edu_wait how);
/* The requester id the IOMMU sees. */
uint16_t edu_sid(void);

#endif
