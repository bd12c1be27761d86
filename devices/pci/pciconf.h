/* PCI configuration in C (pciconf.c): the mechanism #1 latch (0xCF8,
 * dword accesses) and every CONFIG_DATA or ECAM access that reaches no
 * function in the `present` bitmap (bit bus << 8 | device << 3 | function),
 * as akvm.devices.pci.host.PciRoot answers them; akvm.devices.pci.pciconf
 * is the Python handle. */
#ifndef AKVM_PCICONF_H
#define AKVM_PCICONF_H

#define AKVM_PCI_CONFIG_ADDRESS 0xCF8
#define AKVM_PCI_CONFIG_DATA 0xCFC
struct akvm_pci_conf;
struct akvm_pci_conf_stats {
	unsigned long long latch_accesses;
	unsigned long long absent_reads;
	unsigned long long absent_writes;
};
struct akvm_pci_conf *akvm_pci_conf_new(unsigned long long ecam_base, unsigned long long ecam_size);
void akvm_pci_conf_free(struct akvm_pci_conf *c);
void akvm_pci_conf_set_present(struct akvm_pci_conf *c, unsigned int bdf, int present);
unsigned int akvm_pci_conf_latch(struct akvm_pci_conf *c);
void akvm_pci_conf_set_latch(struct akvm_pci_conf *c, unsigned int value);
void akvm_pci_conf_stats(struct akvm_pci_conf *c, struct akvm_pci_conf_stats *out);
/* An akvm_exit_fn (runloop.h) for 0xCF8-0xCFF and the ECAM window; opaque is the akvm_pci_conf. */
int akvm_pci_conf_complete(void *opaque, void *kvm_run);

#endif
