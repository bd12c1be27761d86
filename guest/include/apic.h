/* Local APIC in x2APIC (MSR) or xAPIC (MMIO) mode; timer; IPIs. */
#ifndef APIC_H
#define APIC_H
#include "types.h"

#define LAPIC_ID        0x020
#define LAPIC_VER       0x030
#define LAPIC_TPR       0x080
#define LAPIC_EOI       0x0B0
#define LAPIC_SVR       0x0F0
#define LAPIC_ESR       0x280
#define LAPIC_ICR_LO    0x300
#define LAPIC_ICR_HI    0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_CCR 0x390
#define LAPIC_TIMER_DCR 0x3E0

#define ICR_FIXED       0x00000
#define ICR_INIT        0x00500
#define ICR_STARTUP     0x00600
#define ICR_LEVEL_ASSERT 0x04000
#define ICR_DELIV_STATUS 0x01000
#define ICR_ALL_BUT_SELF 0xC0000

#define LVT_MASKED      0x10000
#define LVT_PERIODIC    0x20000

#define LAPIC_TIMER_DIV 16      /* divide configuration used everywhere */

extern bool x2apic_mode;
extern uint64_t lapic_timer_hz;   /* timer counts per second at LAPIC_TIMER_DIV */

void lapic_init_bsp(void);        /* picks the mode */
void lapic_init_ap(void);
uint32_t lapic_read(uint32_t reg);
void lapic_write(uint32_t reg, uint32_t v);
uint32_t lapic_id(void);
void lapic_eoi(void);
void lapic_send_ipi(uint32_t dest, uint32_t icr_lo);
void lapic_timer_periodic(uint8_t vector, uint32_t count);
void lapic_timer_stop(void);
uint64_t lapic_base_pa(void);

#endif
