/*
 * Intel I/OAT DMA engine (CBDMA, 8086:2021): a driver in the style of
 * ioatdma, small.  Each function is one channel; the kernel uses a ring of
 * IOAT_RING descriptors in a pool page, linked in a circle, and a 64-byte
 * completion writeback per channel.  A copy is descriptors written at the
 * head, then DMACOUNT = head (16 bits, counting up).  Completion is seen in
 * the writeback (polled) or by interrupt (MSI-X vector 0, or INTx through
 * the IOAPIC, level-triggered); the handler re-arms the channel
 * (CHANCTRL.INT_REARM), which also drops INTx.
 */
#include "ioat.h"
#include "acpi.h"
#include "cpu.h"
#include "ioapic.h"
#include "lib.h"
#include "timer.h"
#include "trap.h"
#include "vm.h"
#include "x86.h"

struct ioat_chan ioat_chans[IOAT_MAX_FNS];
int ioat_nchans;
int ioat_irq_mode;
static bool probed;
static const char *absent_why;
static int irq_gsi = -1;
static volatile uint64_t *compl_page;

uint8_t ioat_r8(struct ioat_chan *c, unsigned off) { return *(volatile uint8_t *)(c->mmio + off); }
uint16_t ioat_r16(struct ioat_chan *c, unsigned off) { return *(volatile uint16_t *)(c->mmio + off); }
uint32_t ioat_r32(struct ioat_chan *c, unsigned off) { return mmio_read32(c->mmio + off); }
uint64_t ioat_r64(struct ioat_chan *c, unsigned off) { return *(volatile uint64_t *)(c->mmio + off); }
void ioat_w8(struct ioat_chan *c, unsigned off, uint8_t v) { *(volatile uint8_t *)(c->mmio + off) = v; }
void ioat_w16(struct ioat_chan *c, unsigned off, uint16_t v) { *(volatile uint16_t *)(c->mmio + off) = v; }
void ioat_w32(struct ioat_chan *c, unsigned off, uint32_t v) { mmio_write32(c->mmio + off, v); }

const char *ioat_probe(void)
{
	if (probed)
		return ioat_nchans ? NULL : absent_why;
	probed = true;
	pci_find(IOAT_VENDOR, IOAT_DEVICE);             /* scans the bus once */
	for (int i = 0; i < pci_ndevs && ioat_nchans < IOAT_MAX_FNS; i++) {
		struct pci_dev *d = &pci_devs[i];
		if (d->vendor != IOAT_VENDOR || d->device != IOAT_DEVICE)
			continue;
		struct ioat_chan *c = &ioat_chans[ioat_nchans];
		uint64_t len, pa = pci_bar(d, 0, &len);
		if (!pa || len < 0x4000)
			return absent_why = "an I/OAT function's BAR0 is not 16 KiB of memory";
		if (!compl_page && !(compl_page = page_alloc()))
			return absent_why = "out of pool pages";
		c->ring = page_alloc();
		c->mmio = pci_map_mmio(pa, len);
		if (!c->ring || !c->mmio)
			return absent_why = "out of pool pages or mappings";
		c->pci = d;
		c->ring_pa = virt_to_phys(c->ring);
		c->compl = compl_page + 8 * ioat_nchans;
		c->compl_pa = virt_to_phys((void *)c->compl);
		c->xfercap = ioat_r8(c, IOAT_XFERCAP) & 0x1F;
		for (int k = 0; k < IOAT_RING; k++)
			c->ring[k].next = c->ring_pa + ((k + 1) % IOAT_RING) * sizeof(struct ioat_desc);
		pci_set_master(d, true);
		ioat_nchans++;
	}
	if (!ioat_nchans)
		return absent_why = "no I/OAT function (PCI 8086:2021)";
	return NULL;
}

const char *ioat_start(struct ioat_chan *c, uint16_t chanctrl)
{
	if (c->owner_pid)
		return "owned by a process";
	ioat_w32(c, IOAT_CHANERR, ioat_r32(c, IOAT_CHANERR));
	pci_cfg_write32(c->pci, IOAT_CHANERR_INT, pci_cfg_read32(c->pci, IOAT_CHANERR_INT));
	ioat_w8(c, IOAT_CHANCMD, CHANCMD_RESET);
	uint64_t end = tsc_deadline_us(200000);
	while (ioat_r8(c, IOAT_CHANCMD) & CHANCMD_RESET)
		if (tsc_passed(end))
			return "CHANCMD.RESET did not clear in 200 ms";
	if (CHANSTS_STATE(ioat_r64(c, IOAT_CHANSTS)) != CHANSTS_HALTED)
		return "not HALTED after a reset";
	ioat_w16(c, IOAT_CHANCTRL, chanctrl);
	*c->compl = 0;
	ioat_w32(c, IOAT_CHANCMP, (uint32_t)c->compl_pa);
	ioat_w32(c, IOAT_CHANCMP + 4, c->compl_pa >> 32);
	ioat_w32(c, IOAT_CHAINADDR, (uint32_t)c->ring_pa);
	ioat_w32(c, IOAT_CHAINADDR + 4, c->ring_pa >> 32);
	c->head = 0;
	c->started = true;
	return NULL;
}

uint64_t ioat_put(struct ioat_chan *c, uint32_t size, uint32_t ctl, uint64_t src, uint64_t dst)
{
	unsigned i = c->head % IOAT_RING;
	struct ioat_desc *d = &c->ring[i];
	d->size = size;
	d->ctl = ctl;
	d->src = src;
	d->dst = dst;
	c->head++;
	return c->ring_pa + i * sizeof(*d);
}

uint64_t ioat_memcpy(struct ioat_chan *c, uint64_t src, uint64_t dst, uint64_t len, uint32_t ctl)
{
	uint64_t max = 1ULL << c->xfercap, last = 0;
	for (uint64_t off = 0; off < len; off += max) {
		uint64_t n = MIN(max, len - off);
		last = ioat_put(c, n, off + n >= len ? ctl : 0, src + off, dst + off);
	}
	return last;
}

void ioat_issue(struct ioat_chan *c)
{
	asm volatile("" ::: "memory");  /* descriptors before the doorbell (x86 keeps store order) */
	ioat_w16(c, IOAT_DMACOUNT, c->head);
}

int ioat_wait(struct ioat_chan *c, uint64_t timeout_us)
{
	uint64_t end = tsc_deadline_us(timeout_us), delay = 2;
	for (;;) {
		int st = CHANSTS_STATE(ioat_r64(c, IOAT_CHANSTS));
		if (st != CHANSTS_ACTIVE)
			return st;
		if (tsc_passed(end))
			return -1;
		udelay(delay);
		if (delay < 1000)
			delay *= 2;
	}
}

/* ioat_chans[0]'s interrupt: counted, and the channel re-armed (drops INTx). */
static void ioat_irq(struct trapframe *tf)
{
	struct ioat_chan *c = &ioat_chans[0];
	c->irqs++;
	ioat_w16(c, IOAT_CHANCTRL, ioat_r16(c, IOAT_CHANCTRL) | CHANCTRL_INT_REARM);
}

const char *ioat_set_irq(int mode)
{
	const char *err = ioat_probe();
	if (err)
		return err;
	struct ioat_chan *c = &ioat_chans[0];
	ioat_w8(c, IOAT_INTRCTRL, 0);
	pci_msix_disable(c->pci);
	pci_intx(c->pci, false);
	if (irq_gsi >= 0) {
		ioapic_mask_gsi(irq_gsi);
		irq_gsi = -1;
	}
	ioat_irq_mode = 0;
	if (mode == 1) {
		irq_register(VEC_IOAT_MSIX, ioat_irq);
		if (!pci_msix_enable(c->pci, VEC_IOAT_MSIX, cpus[0].apic_id))
			return "no usable MSI-X capability";
	} else if (mode == 2) {
		uint8_t line = pci_cfg_read8(c->pci, PCI_INTR_LINE);
		if (!pci_cfg_read8(c->pci, PCI_INTR_LINE + 1) || line == 0 || line == 0xFF)
			return "no INTx pin or line";
		uint16_t flags;
		uint32_t gsi = line < 16 ? acpi_isa_irq_to_gsi(line, &flags) : line;
		irq_register(VEC_IOAT_INTX, ioat_irq);
		if (!ioapic_route_gsi(gsi, VEC_IOAT_INTX, cpus[0].apic_id, true, false))
			return "no IOAPIC input for the interrupt line";
		irq_gsi = gsi;
		pci_intx(c->pci, true);
	}
	if (mode)
		ioat_w8(c, IOAT_INTRCTRL, INTRCTRL_MASTER_INT_EN);
	ioat_irq_mode = mode;
	return NULL;
}

void ioat_give(struct pci_dev *d, int pid)
{
	if (ioat_probe())
		return;
	for (int i = 0; i < ioat_nchans; i++) {
		struct ioat_chan *c = &ioat_chans[i];
		if (c->pci != d)
			continue;
		c->owner_pid = 0;
		ioat_start(c, 0);       /* stopped: a reset, nothing queued */
		c->started = false;
		c->owner_pid = pid;
	}
}
