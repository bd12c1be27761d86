#ifndef IOAPIC_H
#define IOAPIC_H
#include "types.h"

int ioapic_init(void);                          /* number of IOAPICs */
/* Route ISA IRQ to vector on the core with this APIC id; returns the GSI or -1. */
int ioapic_route_isa(uint8_t irq, uint8_t vector, uint32_t dest_apic);
void ioapic_print(void);

#endif
