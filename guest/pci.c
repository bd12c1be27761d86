/*
 * PCI configuration space through mechanism #1 (0xCF8/0xCFC) or, when
 * the MCFG table describes it, ECAM.  The scan follows bridges from bus 0
 * instead of probing all 256 buses: each probe is a VM exit.
 */
#include "pci.h"
#include "acpi.h"
#include "lib.h"
#include "mm.h"
#include "x86.h"

#define CONFIG_ADDRESS 0xCF8
#define CONFIG_DATA    0xCFC

struct pci_dev pci_devs[PCI_MAX_DEVS];
int pci_ndevs;

uint32_t pci_read32_cf8(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t off)
{
	outl(CONFIG_ADDRESS, 0x80000000u | (bus << 16) | (dev << 11) | (fn << 8) | (off & 0xFC));
	return inl(CONFIG_DATA);
}

static const struct mcfg_region *ecam_for(uint8_t bus)
{
	for (int i = 0; i < acpi.nmcfg; i++) {
		const struct mcfg_region *m = &acpi.mcfg[i];
		/* Segment 0 only, and only what the identity map covers. */
		if (m->seg == 0 && bus >= m->bus_start && bus <= m->bus_end &&
		    m->base + ((uint64_t)(m->bus_end + 1) << 20) <= PHYS_LIMIT)
			return m;
	}
	return NULL;
}

bool pci_ecam_available(void)
{
	return ecam_for(0) != NULL;
}

bool pci_read32_ecam(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t off, uint32_t *val)
{
	const struct mcfg_region *m = ecam_for(bus);
	if (!m)
		return false;
	uint64_t a = m->base + ((uint64_t)(bus - m->bus_start) << 20) + (dev << 15) + (fn << 12) + (off & 0xFFC);
	*val = mmio_read32(a);
	return true;
}

uint32_t pci_read32(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t off)
{
	uint32_t v;
	if (pci_read32_ecam(bus, dev, fn, off, &v))
		return v;
	return pci_read32_cf8(bus, dev, fn, off);
}

static void scan_bus(uint8_t bus, int depth)
{
	for (uint8_t dev = 0; dev < 32; dev++) {
		uint32_t id = pci_read32(bus, dev, 0, 0);
		if ((id & 0xFFFF) == 0xFFFF)
			continue;
		uint8_t hdr0 = pci_read32(bus, dev, 0, 0x0C) >> 16;
		int nfn = (hdr0 & 0x80) ? 8 : 1;
		for (uint8_t fn = 0; fn < nfn; fn++) {
			if (fn)
				id = pci_read32(bus, dev, fn, 0);
			if ((id & 0xFFFF) == 0xFFFF)
				continue;
			uint32_t cls = pci_read32(bus, dev, fn, 0x08);
			uint8_t hdr = fn ? pci_read32(bus, dev, fn, 0x0C) >> 16 : hdr0;
			if (pci_ndevs < PCI_MAX_DEVS)
				pci_devs[pci_ndevs++] = (struct pci_dev){
					.bus = bus, .dev = dev, .fn = fn,
					.vendor = id & 0xFFFF, .device = id >> 16,
					.class = cls >> 24, .subclass = cls >> 16, .progif = cls >> 8,
					.header = hdr & 0x7F,
				};
			if ((hdr & 0x7F) == 1 && depth < 8) {   /* PCI-PCI bridge */
				uint8_t sec = pci_read32(bus, dev, fn, 0x18) >> 8;
				if (sec > bus)
					scan_bus(sec, depth + 1);
			}
		}
	}
}

int pci_scan(void)
{
	pci_ndevs = 0;
	scan_bus(0, 0);
	return pci_ndevs;
}

void pci_print(void)
{
	if (pci_ecam_available())
		kprintf("PCI config via ECAM at 0x%lx\n", ecam_for(0)->base);
	else
		kprintf("PCI config via 0xCF8/0xCFC\n");
	pci_scan();
	for (int i = 0; i < pci_ndevs; i++) {
		const struct pci_dev *d = &pci_devs[i];
		kprintf("%02x:%02x.%x %04x:%04x class %02x/%02x/%02x%s\n", d->bus, d->dev, d->fn,
			d->vendor, d->device, d->class, d->subclass, d->progif,
			d->header == 1 ? " (bridge)" : "");
	}
	kprintf("%d PCI functions\n", pci_ndevs);
}
