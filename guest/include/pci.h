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

uint32_t pci_read32(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t off);
uint32_t pci_read32_cf8(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t off);
/* ECAM read; returns false when the function is not covered by MCFG. */
bool pci_read32_ecam(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t off, uint32_t *val);
bool pci_ecam_available(void);
int pci_scan(void);
void pci_print(void);

#endif
