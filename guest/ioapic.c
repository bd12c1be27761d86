/*
 * I/O APICs from the MADT.  Everything is masked at init; ISA IRQs are
 * routed on demand, honouring the MADT interrupt source overrides.
 */
#include "ioapic.h"
#include "acpi.h"
#include "lib.h"
#include "mm.h"
#include "x86.h"

#define IOREGSEL 0x00
#define IOWIN    0x10
#define IOAPICVER 0x01
#define IOREDTBL(n) (0x10 + 2 * (n))

#define RTE_MASKED    (1u << 16)
#define RTE_LEVEL     (1u << 15)
#define RTE_ACTIVE_LO (1u << 13)

struct ioapic {
	uintptr_t base;
	uint32_t gsi_base;
	int nentries;
	uint8_t id;
};

static struct ioapic ioapics[4];
static int nioapics;

static uint32_t ioapic_read(struct ioapic *io, uint8_t reg)
{
	mmio_write32(io->base + IOREGSEL, reg);
	return mmio_read32(io->base + IOWIN);
}

static void ioapic_write(struct ioapic *io, uint8_t reg, uint32_t v)
{
	mmio_write32(io->base + IOREGSEL, reg);
	mmio_write32(io->base + IOWIN, v);
}

int ioapic_init(void)
{
	for (int i = 0; i < acpi.nioapic && nioapics < (int)ARRAY_SIZE(ioapics); i++) {
		const struct madt_ioapic *m = &acpi.ioapics[i];
		if (m->pa < 0xFE000000u)        /* outside our uncached MMIO window */
			continue;
		struct ioapic *io = &ioapics[nioapics];
		io->base = m->pa;
		io->gsi_base = m->gsi_base;
		io->id = m->id;
		uint32_t ver = ioapic_read(io, IOAPICVER);
		if (ver == 0xFFFFFFFF)
			continue;               /* nothing there */
		io->nentries = ((ver >> 16) & 0xFF) + 1;
		for (int n = 0; n < io->nentries; n++) {
			ioapic_write(io, IOREDTBL(n), RTE_MASKED);
			ioapic_write(io, IOREDTBL(n) + 1, 0);
		}
		nioapics++;
	}
	return nioapics;
}

int ioapic_route_isa(uint8_t irq, uint8_t vector, uint32_t dest_apic)
{
	uint16_t flags;
	uint32_t gsi = acpi_isa_irq_to_gsi(irq, &flags);

	for (int i = 0; i < nioapics; i++) {
		struct ioapic *io = &ioapics[i];
		if (gsi < io->gsi_base || gsi >= io->gsi_base + io->nentries)
			continue;
		uint32_t pin = gsi - io->gsi_base;
		uint32_t lo = vector;           /* fixed delivery, physical dest */
		if ((flags & 3) == 3)
			lo |= RTE_ACTIVE_LO;
		if (((flags >> 2) & 3) == 3)
			lo |= RTE_LEVEL;
		ioapic_write(io, IOREDTBL(pin) + 1, dest_apic << 24);
		ioapic_write(io, IOREDTBL(pin), lo);
		return (int)gsi;
	}
	return -1;
}

static struct ioapic *ioapic_for(uint32_t gsi)
{
	for (int i = 0; i < nioapics; i++)
		if (gsi >= ioapics[i].gsi_base && gsi < ioapics[i].gsi_base + ioapics[i].nentries)
			return &ioapics[i];
	return NULL;
}

bool ioapic_route_gsi(uint32_t gsi, uint8_t vector, uint32_t dest_apic, bool level, bool active_low)
{
	struct ioapic *io = ioapic_for(gsi);
	if (!io)
		return false;
	uint32_t pin = gsi - io->gsi_base;
	uint32_t lo = vector | (level ? RTE_LEVEL : 0) | (active_low ? RTE_ACTIVE_LO : 0);
	ioapic_write(io, IOREDTBL(pin), RTE_MASKED);
	ioapic_write(io, IOREDTBL(pin) + 1, dest_apic << 24);
	ioapic_write(io, IOREDTBL(pin), lo);
	return true;
}

void ioapic_mask_gsi(uint32_t gsi)
{
	struct ioapic *io = ioapic_for(gsi);
	if (io)
		ioapic_write(io, IOREDTBL(gsi - io->gsi_base), RTE_MASKED);
}

void ioapic_print(void)
{
	for (int i = 0; i < nioapics; i++)
		kprintf("IOAPIC id %u at 0x%lx: GSI %u-%u\n", ioapics[i].id, ioapics[i].base,
			ioapics[i].gsi_base, ioapics[i].gsi_base + ioapics[i].nentries - 1);
}
