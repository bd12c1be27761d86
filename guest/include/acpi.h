/* ACPI tables as found in firmware memory: what we record from them. */
#ifndef ACPI_H
#define ACPI_H
#include "types.h"
#include "cpu.h"

#define ACPI_MAX_TABLES 32

struct acpi_table {
	char sig[5];
	uint64_t pa;
	uint32_t len;
	uint8_t rev;
	bool checked, csum_ok;  /* see acpi_table_ok() */
};

struct madt_lapic { uint32_t apic_id, uid, flags; };
struct madt_ioapic { uint8_t id; uint32_t pa, gsi_base; };
struct madt_iso { uint8_t bus, irq; uint32_t gsi; uint16_t flags; };
struct mcfg_region { uint64_t base; uint16_t seg; uint8_t bus_start, bus_end; };
/* A DRHD device scope: type 1 PCI endpoint, 2 PCI sub-hierarchy, 3 IOAPIC,
 * 4 HPET, 5 ACPI namespace device; a path of (device, function) hops
 * starting at start_bus. */
#define DMAR_MAX_SCOPES 16
#define DMAR_MAX_PATH   4
struct dmar_scope {
	uint8_t type, enum_id, start_bus, npath;
	uint8_t path[DMAR_MAX_PATH][2];
};
struct dmar_drhd {
	uint64_t base;
	uint16_t seg;
	uint8_t flags, nscopes;         /* flags bit 0: INCLUDE_PCI_ALL */
	uint8_t nkept;                  /* scopes recorded below */
	struct dmar_scope scopes[DMAR_MAX_SCOPES];
};

struct acpi_info {
	bool present;
	uint64_t rsdp_pa;
	uint8_t rsdp_rev;
	char oem[7];
	bool use_xsdt;
	uint64_t root_pa;               /* XSDT or RSDT */
	int ntables;                    /* root + its entries + DSDT */
	struct acpi_table tables[ACPI_MAX_TABLES];

	bool have_madt;
	uint32_t lapic_pa;
	int nlapic;                     /* enabled local APIC entries */
	struct madt_lapic lapics[MAX_CPUS];
	int nioapic;
	struct madt_ioapic ioapics[4];
	int niso;
	struct madt_iso isos[16];

	int nmcfg;
	struct mcfg_region mcfg[4];

	bool have_dmar;
	uint8_t dmar_haw, dmar_flags;
	int ndrhd;
	struct dmar_drhd drhd[4];

	bool have_fadt;
	uint32_t pm1a_cnt, pm1b_cnt, smi_cmd;
	uint8_t acpi_enable;
	uint64_t dsdt_pa;
	uint64_t sleep_ctl;             /* hardware-reduced ACPI only */
	bool sleep_ctl_io;
};

extern struct acpi_info acpi;

void acpi_init(void);
const struct acpi_table *acpi_find(const char *sig);
uint8_t acpi_checksum(const void *p, size_t len);
bool acpi_table_ok(struct acpi_table *t);    /* checksum, computed once */
/* SLP_TYPa/b of \_S5 from the DSDT/SSDTs; false if not found. */
bool acpi_s5(uint8_t *typa, uint8_t *typb);
/* ISA IRQ -> GSI and MPS INTI flags, applying interrupt source overrides. */
uint32_t acpi_isa_irq_to_gsi(uint8_t irq, uint16_t *flags);
void acpi_print(void);

#endif
