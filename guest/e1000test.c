/*
 * `selftest e1000`: the Intel 82540EM's registers from ring 0, as a driver
 * finds them at probe time (8254x Software Developer's Manual): reset,
 * the EEPROM through EERD (64 words summing to 0xBABA, the MAC in words
 * 0-2, the same as RAL0/RAH0), the PHY at MDIO address 1 (82540EM ids, link
 * up; whether autonegotiation is complete is printed: QEMU's says so only
 * after a restart; nothing at address 2), and one interrupt:
 * ICS raises a cause, IMS lets it through, INTA# reaches this core through
 * the IOAPIC (level-triggered) and reading ICR in the handler clears it.
 * IMS passes only RXSEQ, which no idle device raises by itself: a link
 * change (LSC) the device signals on its own timer may land at any moment
 * under QEMU and must not count as a second interrupt.
 * Frames are user/net's business (run net -d e1000 ...).
 */
#include "acpi.h"
#include "cpu.h"
#include "ioapic.h"
#include "lib.h"
#include "pci.h"
#include "selftest.h"
#include "timer.h"
#include "trap.h"

#define CTRL            0x0000
#define STATUS          0x0008
#define EERD            0x0014
#define MDIC            0x0020
#define ICR             0x00C0
#define ICS             0x00C8
#define IMS             0x00D0
#define IMC             0x00D8
#define RAL0            0x5400
#define RAH0            0x5404
#define CTRL_RST        (1u << 26)
#define STATUS_LU       (1u << 1)
#define EERD_START      (1u << 0)
#define EERD_DONE       (1u << 4)
#define MDIC_READ       (2u << 26)
#define MDIC_READY      (1u << 28)
#define MDIC_ERROR      (1u << 30)
#define ICR_LSC         (1u << 2)
#define ICR_RXSEQ       (1u << 3)

static volatile uint8_t *regs;
static volatile unsigned irqs;
static volatile uint32_t irq_icr;

static uint32_t rd(unsigned r) { return *(volatile uint32_t *)(regs + r); }
static void wr(unsigned r, uint32_t v) { *(volatile uint32_t *)(regs + r) = v; }

static void e1000_irq(struct trapframe *tf)
{
	irq_icr |= rd(ICR);             /* clears the causes: INTA# drops before the EOI */
	irqs++;
}

/* A PHY register, or -1 when MDIC reports an error or never gets ready. */
static int phy_read(unsigned phy, unsigned reg)
{
	wr(MDIC, MDIC_READ | phy << 21 | reg << 16);
	for (int i = 0; i < 1000; i++) {
		uint32_t v = rd(MDIC);
		if (v & MDIC_READY)
			return v & MDIC_ERROR ? -1 : (int)(v & 0xFFFF);
		udelay(1);
	}
	return -1;
}

static const char *test_e1000(void)
{
	struct pci_dev *d = pci_find(0x8086, 0x100E);
	if (!d)
		return SKIP("no 82540EM (8086:100e)");
	uint64_t len, pa = pci_bar(d, 0, &len);
	if (!pa || len < 0x20000)
		return FAIL("BAR0 at 0x%lx, %lu bytes", pa, len);
	regs = (volatile uint8_t *)pci_map_mmio(pa, len);
	wr(IMC, 0xFFFFFFFF);
	wr(CTRL, rd(CTRL) | CTRL_RST);
	for (int i = 0; rd(CTRL) & CTRL_RST; i++)
		if (i > 1000)
			return FAIL("CTRL.RST did not clear");
	uint16_t words[64], sum = 0;
	for (int i = 0; i < 64; i++) {
		wr(EERD, i << 8 | EERD_START);
		uint32_t v = rd(EERD);
		if (!(v & EERD_DONE))
			return FAIL("EERD word %d: DONE not set (0x%x)", i, v);
		words[i] = v >> 16;
		sum += words[i];
	}
	if (sum != 0xBABA)
		return FAIL("EEPROM words sum to 0x%x, not 0xbaba", sum);
	uint32_t ral = words[0] | (uint32_t)words[1] << 16, rah = words[2] | 1u << 31;
	if (rd(RAL0) != ral || rd(RAH0) != rah)
		return FAIL("RAL0/RAH0 0x%x/0x%x after reset, EEPROM says 0x%x/0x%x", rd(RAL0),
			    rd(RAH0), ral, rah);
	int id1 = phy_read(1, 2), id2 = phy_read(1, 3), bmsr = phy_read(1, 1);
	if (id1 != 0x0141 || id2 != 0x0C20)
		return FAIL("PHY 1 ids 0x%x 0x%x, want 0x141 0xc20", id1, id2);
	if (bmsr < 0 || !(bmsr & 0x04))
		return FAIL("PHY 1 status 0x%x: link down", bmsr);
	if (phy_read(2, 1) != -1)
		return FAIL("a PHY answers at MDIO address 2");
	if (!(rd(STATUS) & STATUS_LU))
		return FAIL("STATUS.LU clear (STATUS 0x%x)", rd(STATUS));

	/* One interrupt through INTA#, the IOAPIC and this core. */
	uint8_t line = pci_cfg_read8(d, PCI_INTR_LINE), pin = pci_cfg_read8(d, PCI_INTR_LINE + 1);
	if (!pin || !line || line == 0xFF)
		return FAIL("interrupt pin %u, line %u", pin, line);
	uint16_t flags;
	uint32_t gsi = line < 16 ? acpi_isa_irq_to_gsi(line, &flags) : line;
	irq_register(VEC_E1000_INTX, e1000_irq);
	if (!ioapic_route_gsi(gsi, VEC_E1000_INTX, cpus[0].apic_id, true, false))
		return FAIL("no IOAPIC input for GSI %u", gsi);
	pci_intx(d, true);
	rd(ICR);
	irqs = 0;
	irq_icr = 0;
	wr(IMS, ICR_RXSEQ);
	wr(ICS, ICR_LSC | ICR_RXSEQ);
	uint64_t end = tsc_deadline_us(500000);
	while (!irqs && !tsc_passed(end))
		udelay(20);
	unsigned n = irqs;
	uint32_t after = rd(ICR);
	wr(IMC, 0xFFFFFFFF);
	pci_intx(d, false);
	ioapic_mask_gsi(gsi);
	if (!n)
		return FAIL("no interrupt on GSI %u after ICS with IMS set", gsi);
	if (n != 1 || irq_icr != (ICR_LSC | ICR_RXSEQ) || (after & ~ICR_LSC))
		return FAIL("%u interrupts, ICR 0x%x in the handler and 0x%x after", n, irq_icr, after);
	kprintf("e1000 %02x:%02x.%x: mac %02x:%02x:%02x:%02x:%02x:%02x (EEPROM sum 0xbaba), "
		"PHY 0141:0c20 link up, autonegotiation %s, INTA# -> GSI %u -> vector 0x%x: ICR 0x%x\n",
		d->bus, d->dev, d->fn, words[0] & 255, words[0] >> 8, words[1] & 255, words[1] >> 8,
		words[2] & 255, words[2] >> 8, bmsr & 0x20 ? "complete" : "not done", gsi,
		VEC_E1000_INTX, irq_icr);
	return NULL;
}

const struct selftest e1000_tests[] = {
	{ "e1000", test_e1000, true },
};
const size_t e1000_ntests = ARRAY_SIZE(e1000_tests);
