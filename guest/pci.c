/*
 * PCI configuration space through mechanism #1 (0xCF8/0xCFC) or, when
 * the MCFG table describes it, ECAM.  The scan follows bridges from bus 0
 * instead of probing all 256 buses: each probe is a VM exit.
 */
#include "pci.h"
#include "acpi.h"
#include "lib.h"
#include "mm.h"
#include "vm.h"
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

static uintptr_t ecam_addr(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t off)
{
	const struct mcfg_region *m = ecam_for(bus);
	if (!m)
		return 0;
	return m->base + ((uint64_t)(bus - m->bus_start) << 20) + (dev << 15) + (fn << 12) + off;
}

static uint32_t cf8_addr(const struct pci_dev *d, uint16_t off)
{
	return 0x80000000u | (d->bus << 16) | (d->dev << 11) | (d->fn << 8) | (off & 0xFC);
}

uint32_t pci_cfg_read32(const struct pci_dev *d, uint16_t off)
{
	return pci_read32(d->bus, d->dev, d->fn, off & 0xFFC);
}

uint16_t pci_cfg_read16(const struct pci_dev *d, uint16_t off)
{
	return pci_cfg_read32(d, off) >> ((off & 2) * 8);
}

uint8_t pci_cfg_read8(const struct pci_dev *d, uint16_t off)
{
	return pci_cfg_read32(d, off) >> ((off & 3) * 8);
}

void pci_cfg_write32(const struct pci_dev *d, uint16_t off, uint32_t v)
{
	uintptr_t a = ecam_addr(d->bus, d->dev, d->fn, off & 0xFFC);
	if (a) {
		mmio_write32(a, v);
		return;
	}
	outl(CONFIG_ADDRESS, cf8_addr(d, off));
	outl(CONFIG_DATA, v);
}

void pci_cfg_write16(const struct pci_dev *d, uint16_t off, uint16_t v)
{
	uintptr_t a = ecam_addr(d->bus, d->dev, d->fn, off & 0xFFE);
	if (a) {
		*(volatile uint16_t *)a = v;
		return;
	}
	outl(CONFIG_ADDRESS, cf8_addr(d, off));
	outw(CONFIG_DATA + (off & 2), v);
}

static bool scanned;

struct pci_dev *pci_find(uint16_t vendor, uint16_t device)
{
	if (!scanned)
		pci_scan();
	for (int i = 0; i < pci_ndevs; i++)
		if (pci_devs[i].vendor == vendor && pci_devs[i].device == device)
			return &pci_devs[i];
	return NULL;
}

uint8_t pci_find_cap(const struct pci_dev *d, uint8_t id, uint8_t after)
{
	if (!(pci_cfg_read16(d, 0x06) & PCI_STATUS_CAPS))
		return 0;
	uint8_t p = after ? pci_cfg_read8(d, after + 1) : pci_cfg_read8(d, PCI_CAP_PTR);
	for (int n = 0; n < 48 && p >= 0x40; n++) {
		uint32_t h = pci_cfg_read32(d, p & 0xFC);
		if ((h & 0xFF) == id)
			return p & 0xFC;
		p = h >> 8;
	}
	return 0;
}

/*
 * Where BARs firmware left unassigned go (a direct kernel boot has no
 * BIOS).  A guess that fits the machines we run on: above the usual RAM
 * sizes, below the 0xFE000000 platform range, clear of ECAM.
 */
static uint64_t bar_next = 0xD0000000u;

static uint64_t bar_alloc(uint64_t size)
{
	for (int tries = 0; tries < 8; tries++) {
		uint64_t a = (bar_next + size - 1) & ~(size - 1);
		bool clash = false;
		for (int i = 0; i < acpi.nmcfg; i++) {
			uint64_t lo = acpi.mcfg[i].base;
			uint64_t hi = lo + ((uint64_t)(acpi.mcfg[i].bus_end + 1) << 20);
			if (a < hi && a + size > lo) {
				bar_next = hi;
				clash = true;
			}
		}
		if (clash)
			continue;
		if (a + size > 0xFE000000u)
			return 0;
		bar_next = a + size;
		return a;
	}
	return 0;
}

uint64_t pci_bar(const struct pci_dev *d, int bar, uint64_t *len)
{
	uint16_t off = PCI_BAR0 + 4 * bar;
	uint32_t lo = pci_cfg_read32(d, off);
	if (lo & 1)
		return 0;                       /* I/O BAR */
	bool is64 = ((lo >> 1) & 3) == 2;
	uint64_t addr = lo & ~0xFULL;
	if (is64)
		addr |= (uint64_t)pci_cfg_read32(d, off + 4) << 32;

	/* Size it with decoding off. */
	uint16_t cmd = pci_cfg_read16(d, PCI_COMMAND);
	pci_cfg_write16(d, PCI_COMMAND, cmd & ~(PCI_CMD_MEM | PCI_CMD_IO));
	pci_cfg_write32(d, off, 0xFFFFFFFF);
	uint64_t mask = pci_cfg_read32(d, off) & ~0xFULL;
	if (is64) {
		pci_cfg_write32(d, off + 4, 0xFFFFFFFF);
		mask |= (uint64_t)pci_cfg_read32(d, off + 4) << 32;
	} else {
		mask |= 0xFFFFFFFF00000000ULL;
	}
	uint64_t size = mask ? ~mask + 1 : 0;
	if (size && !addr)
		addr = bar_alloc(size);
	pci_cfg_write32(d, off, (uint32_t)addr | (lo & 0xF));
	if (is64)
		pci_cfg_write32(d, off + 4, addr >> 32);
	if (size && addr)
		cmd |= PCI_CMD_MEM;
	pci_cfg_write16(d, PCI_COMMAND, cmd);
	if (len)
		*len = size;
	return size ? addr : 0;
}

uintptr_t pci_map_mmio(uint64_t pa, uint64_t len)
{
	return map_mmio(pa, len);
}

void pci_set_master(const struct pci_dev *d, bool on)
{
	uint16_t cmd = pci_cfg_read16(d, PCI_COMMAND);
	uint16_t want = on ? cmd | PCI_CMD_MASTER : cmd & ~PCI_CMD_MASTER;
	if (want != cmd)
		pci_cfg_write16(d, PCI_COMMAND, want);
}

void pci_intx(const struct pci_dev *d, bool on)
{
	uint16_t cmd = pci_cfg_read16(d, PCI_COMMAND);
	uint16_t want = on ? cmd & ~PCI_CMD_INTX_OFF : cmd | PCI_CMD_INTX_OFF;
	if (want != cmd)
		pci_cfg_write16(d, PCI_COMMAND, want);
}

bool pci_msi_enable(const struct pci_dev *d, uint8_t vector, uint32_t dest_apic)
{
	uint8_t c = pci_find_cap(d, PCI_CAP_MSI, 0);
	if (!c)
		return false;
	uint16_t ctl = pci_cfg_read16(d, c + 2);
	bool is64 = ctl & 0x80;
	pci_cfg_write32(d, c + 4, msi_addr(dest_apic));
	if (is64)
		pci_cfg_write32(d, c + 8, 0);
	pci_cfg_write16(d, c + (is64 ? 12 : 8), vector);  /* fixed, edge */
	if (ctl & 0x100)                                    /* per-vector masking */
		pci_cfg_write32(d, c + (is64 ? 16 : 12), 0);
	pci_cfg_write16(d, c + 2, (ctl & ~0x70) | 1);      /* one vector, enable */
	return true;
}

void pci_msi_disable(const struct pci_dev *d)
{
	uint8_t c = pci_find_cap(d, PCI_CAP_MSI, 0);
	if (c)
		pci_cfg_write16(d, c + 2, pci_cfg_read16(d, c + 2) & ~1);
}

bool pci_msix_enable(const struct pci_dev *d, uint8_t vector, uint32_t dest_apic)
{
	uint8_t c = pci_find_cap(d, PCI_CAP_MSIX, 0);
	if (!c)
		return false;
	uint16_t ctl = pci_cfg_read16(d, c + 2);
	uint32_t table = pci_cfg_read32(d, c + 4);
	uint64_t len, bar = pci_bar(d, table & 7, &len);
	unsigned n = (ctl & 0x7FF) + 1;
	if (!bar || (table & ~7u) + 16ULL * n > len)
		return false;
	uintptr_t t = pci_map_mmio(bar, len);
	if (!t)
		return false;
	pci_cfg_write16(d, c + 2, ctl | 0xC000);            /* enable, function masked */
	for (unsigned i = 0; i < n; i++) {
		volatile uint32_t *e = (volatile uint32_t *)(t + (table & ~7u) + 16 * i);
		e[3] = 1;                                   /* masked */
		if (i == 0) {
			e[0] = msi_addr(dest_apic);
			e[1] = 0;
			e[2] = vector;                      /* fixed, edge */
			e[3] = 0;
		}
	}
	pci_cfg_write16(d, c + 2, (ctl & ~0x4000) | 0x8000);
	return true;
}

void pci_msix_disable(const struct pci_dev *d)
{
	uint8_t c = pci_find_cap(d, PCI_CAP_MSIX, 0);
	if (c)
		pci_cfg_write16(d, c + 2, pci_cfg_read16(d, c + 2) & ~0xC000);
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
	scanned = true;
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
