/*
 * QEMU's edu device (PCI 1234:11e8), used as a DMA engine for IOMMU
 * tests: BAR0 registers, DMA between RAM (a bus address) and its 4 KiB
 * buffer, completion seen by polling the command register or by an
 * interrupt (MSI, or INTx through the IOAPIC, level-triggered).
 */
#include "edu.h"
#include "acpi.h"
#include "cpu.h"
#include "ioapic.h"
#include "lib.h"
#include "timer.h"
#include "trap.h"
#include "x86.h"

#define EDU_ID          0x00
#define EDU_LIVENESS    0x04
#define EDU_FACTORIAL   0x08
#define EDU_STATUS      0x20
#define EDU_IRQ_STATUS  0x24
#define EDU_IRQ_RAISE   0x60
#define EDU_IRQ_ACK     0x64
#define EDU_DMA_SRC     0x80
#define EDU_DMA_DST     0x88
#define EDU_DMA_CNT     0x90
#define EDU_DMA_CMD     0x98

#define DMA_START       1
#define DMA_DIR_TO_RAM  2
#define DMA_IRQ         4

struct edu edu = { .gsi = -1 };

uint32_t edu_read32(unsigned off) { return mmio_read32(edu.mmio + off); }
void edu_write32(unsigned off, uint32_t v) { mmio_write32(edu.mmio + off, v); }
static void edu_write64(unsigned off, uint64_t v) { *(volatile uint64_t *)(edu.mmio + off) = v; }

uint16_t edu_sid(void)
{
	return edu.pci ? pci_sid(edu.pci) : 0;
}

const char *edu_probe(void)
{
	if (edu.probed)
		return edu.present ? NULL : edu.absent_why;
	edu.probed = true;
	edu.pci = pci_find(0x1234, 0x11e8);
	if (!edu.pci)
		return edu.absent_why = "no edu device (PCI 1234:11e8)";
	uint64_t len;
	uint64_t pa = pci_bar(edu.pci, 0, &len);
	if (!pa || len < 0x100)
		return edu.absent_why = "edu BAR0 not usable";
	edu.mmio = pci_map_mmio(pa, len);
	if (!edu.mmio)
		return edu.absent_why = "edu BAR0 cannot be mapped";
	edu.id = edu_read32(EDU_ID);
	if ((edu.id & 0xFF) != 0xED)
		return edu.absent_why = "edu identification register does not read 0x..ed";
	pci_set_master(edu.pci, true);
	pci_intx(edu.pci, false);
	edu.present = true;
	return NULL;
}

static void edu_irq(struct trapframe *tf)
{
	uint32_t st = edu_read32(EDU_IRQ_STATUS);
	if (st)
		edu_write32(EDU_IRQ_ACK, st);   /* lowers INTx before the EOI */
	edu.irq_status |= st;
	edu.irqs++;
}

const char *edu_set_irq(int mode)
{
	const char *err = edu_probe();
	if (err)
		return err;
	if (edu.irq_mode == mode)
		return NULL;
	/* Everything off first. */
	pci_msi_disable(edu.pci);
	pci_intx(edu.pci, false);
	if (edu.gsi >= 0) {
		ioapic_mask_gsi(edu.gsi);
		edu.gsi = -1;
	}
	edu.irq_mode = 0;
	if (mode == 1) {
		irq_register(VEC_EDU_MSI, edu_irq);
		if (!pci_msi_enable(edu.pci, VEC_EDU_MSI, cpus[0].apic_id))
			return "edu has no MSI capability";
	} else if (mode == 2) {
		uint8_t line = pci_cfg_read8(edu.pci, PCI_INTR_LINE);
		uint8_t pin = pci_cfg_read8(edu.pci, PCI_INTR_LINE + 1);
		if (!pin)
			return "edu has no INTx pin";
		if (line == 0 || line == 0xFF)
			return "edu interrupt line not assigned (0x3C)";
		uint16_t flags;
		uint32_t gsi = line < 16 ? acpi_isa_irq_to_gsi(line, &flags) : line;
		irq_register(VEC_EDU_INTX, edu_irq);
		/* PCI INTx is level-triggered; VMMs assert it as a high level. */
		if (!ioapic_route_gsi(gsi, VEC_EDU_INTX, cpus[0].apic_id, true, false))
			return "no IOAPIC input for the edu interrupt line";
		edu.gsi = gsi;
		pci_intx(edu.pci, true);
	}
	edu.irq_mode = mode;
	return NULL;
}

/* Waits for the DMA engine to go idle: short first, then backing off. */
static bool wait_idle(uint64_t timeout_us)
{
	uint64_t end = 0, delay = 5;
	for (int i = 0;; i++) {
		if (!(edu_read32(EDU_DMA_CMD) & DMA_START))
			return true;
		if (i == 0)
			end = tsc_deadline_us(timeout_us);
		else if (tsc_passed(end))
			return false;
		udelay(delay);
		if (delay < 2000)
			delay *= 2;
	}
}

const char *edu_dma(uint64_t src, uint64_t dst, uint32_t len, int dir, enum edu_wait how)
{
	const char *err = edu_probe();
	if (err)
		return err;
	uint64_t dev = dir == EDU_DMA_TO_DEV ? dst : src;
	if (dev < EDU_BUF_ADDR || dev + len > EDU_BUF_ADDR + EDU_BUF_SIZE || !len)
		return "DMA range outside the edu buffer";
	if (dev + len == EDU_BUF_ADDR + EDU_BUF_SIZE)
		return "DMA up to the buffer's last byte (QEMU 7.2's edu would abort)";
	if (how == EDU_IRQ && !edu.irq_mode)
		return "edu interrupts are off";
	if (!wait_idle(1000000))
		return "edu DMA engine busy";
	edu_write64(EDU_DMA_SRC, src);
	edu_write64(EDU_DMA_DST, dst);
	edu_write64(EDU_DMA_CNT, len);
	unsigned before = edu.irqs;
	uint32_t cmd = DMA_START | (dir == EDU_DMA_TO_RAM ? DMA_DIR_TO_RAM : 0) |
		       (how == EDU_IRQ ? DMA_IRQ : 0);
	edu.dmas++;
	edu_write64(EDU_DMA_CMD, cmd);
	if (how == EDU_POLL)
		return wait_idle(2000000) ? NULL : "edu DMA did not complete in 2 s";
	uint64_t end = tsc_deadline_us(2000000), delay = 5;
	while (edu.irqs == before) {
		if (tsc_passed(end))
			return (edu_read32(EDU_DMA_CMD) & DMA_START) ? "edu DMA did not complete in 2 s"
				: "edu DMA completed but no interrupt arrived";
		udelay(delay);
		if (delay < 1000)
			delay *= 2;
	}
	if (!(edu.irq_status & EDU_IRQ_DMA))
		return "interrupt without the DMA status bit";
	return NULL;
}
