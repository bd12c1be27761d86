#ifndef PCI_H
#define PCI_H
#include "types.h"

struct pci_dev {
	uint8_t bus, dev, fn;
	uint16_t vendor, device;
	uint8_t class, subclass, progif, header;
};

#define PCI_MAX_DEVS 128
extern struct pci_dev pci_devs[PCI_MAX_DEVS];
extern int pci_ndevs;

#define PCI_COMMAND      0x04
#define PCI_CMD_IO       0x0001
#define PCI_CMD_MEM      0x0002
#define PCI_CMD_MASTER   0x0004
#define PCI_CMD_INTX_OFF 0x0400
#define PCI_STATUS_CAPS  0x0010
#define PCI_BAR0         0x10
#define PCI_CAP_PTR      0x34
#define PCI_INTR_LINE    0x3C

#define PCI_CAP_MSI      0x05
#define PCI_CAP_VENDOR   0x09
#define PCI_CAP_MSIX     0x11

uint32_t pci_read32(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t off);
uint32_t pci_read32_cf8(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t off);
/* ECAM read; returns false when the function is not covered by MCFG. */
bool pci_read32_ecam(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t off, uint32_t *val);
bool pci_ecam_available(void);
int pci_scan(void);
void pci_print(void);

/* Accessors on a scanned function. */
uint32_t pci_cfg_read32(const struct pci_dev *d, uint16_t off);
uint16_t pci_cfg_read16(const struct pci_dev *d, uint16_t off);
uint8_t pci_cfg_read8(const struct pci_dev *d, uint16_t off);
void pci_cfg_write32(const struct pci_dev *d, uint16_t off, uint32_t v);
void pci_cfg_write16(const struct pci_dev *d, uint16_t off, uint16_t v);

/* Requester id (bus << 8 | devfn). */
static inline uint16_t pci_sid(const struct pci_dev *d)
{
	return (uint16_t)(d->bus << 8 | d->dev << 3 | d->fn);
}

/* First function with this vendor:device (scans once, then uses the list). */
struct pci_dev *pci_find(uint16_t vendor, uint16_t device);
/* Offset of the capability with this id after `after` (0: from the start), or 0. */
uint8_t pci_find_cap(const struct pci_dev *d, uint8_t id, uint8_t after);
/* Physical address of a memory BAR (assigning one if firmware left it 0), 0 if none;
 * *len gets its size.  Enables memory decoding. */
uint64_t pci_bar(const struct pci_dev *d, int bar, uint64_t *len);
/* Kernel virtual address for a physical MMIO range (maps above 4 GiB). */
uintptr_t pci_map_mmio(uint64_t pa, uint64_t len);
/* MSI: one vector to core 0 (mask/unmask with on). false without the capability. */
bool pci_msi_enable(const struct pci_dev *d, uint8_t vector, uint32_t dest_apic);
void pci_msi_disable(const struct pci_dev *d);
/* MSI-X: entry 0 to vector on dest_apic, unmasked, the rest masked; false without it. */
bool pci_msix_enable(const struct pci_dev *d, uint8_t vector, uint32_t dest_apic);
void pci_msix_disable(const struct pci_dev *d);
void pci_set_master(const struct pci_dev *d, bool on);
void pci_intx(const struct pci_dev *d, bool on);
/* MSI address/data for a fixed, edge interrupt to dest_apic. */
static inline uint32_t msi_addr(uint32_t dest_apic) { return 0xFEE00000u | (dest_apic & 0xFF) << 12; }

#endif
