/* PIT access, TSC and LAPIC timer calibration, delays. */
#ifndef TIMER_H
#define TIMER_H
#include "types.h"

#define PIT_HZ 1193182

extern uint64_t tsc_khz;
extern const char *tsc_source;      /* how tsc_khz was obtained */

void timer_calibrate(void);         /* TSC and LAPIC timer vs. the PIT */
void udelay(uint64_t us);
uint64_t tsc_deadline_us(uint64_t us);
static inline bool tsc_passed(uint64_t deadline)
{
	uint32_t lo, hi;
	asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (((uint64_t)hi << 32) | lo) >= deadline;
}
uint64_t tsc_to_ns(uint64_t cycles);
uint16_t pit_read_ch0(void);
void pit_start_ch0(void);

#endif
