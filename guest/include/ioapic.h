#ifndef IOAPIC_H
#define IOAPIC_H
#include "types.h"

int ioapic_init(void);                          /* number of IOAPICs */
/* Route ISA IRQ to vector on the core with this APIC id; returns the GSI or -1. */
int ioapic_route_isa(uint8_t irq, uint8_t vector, uint32_t dest_apic);
/* Route a GSI (fixed delivery to dest_apic); false if no IOAPIC has it. */
bool ioapic_route_gsi(uint32_t gsi, uint8_t vector, uint32_t dest_apic, bool level, bool active_low);
void ioapic_mask_gsi(uint32_t gsi);
void ioapic_print(void);

#endif
