/*
 * The 8254 PIT as a reference clock.  TSC and LAPIC timer are calibrated
 * together over one short (10 ms) window of PIT channel 2 (gate and
 * output through port 0x61), so the boot does not spend long polling.
 */
#include "timer.h"
#include "apic.h"
#include "cpu.h"
#include "lib.h"
#include "trap.h"
#include "x86.h"

#define PIT_CH0  0x40
#define PIT_CH2  0x42
#define PIT_CMD  0x43
#define PORT_61  0x61           /* bit 0 gate 2, bit 1 speaker, bit 5 OUT2 */
#define CAL_MS   10

uint64_t tsc_khz = 1000000;     /* placeholder until calibrated */
const char *tsc_source = "assumed";

uint64_t tsc_deadline_us(uint64_t us)
{
	return rdtsc() + us * tsc_khz / 1000;
}

void udelay(uint64_t us)
{
	uint64_t end = tsc_deadline_us(us);
	while (!tsc_passed(end))
		pause();
}

uint64_t tsc_to_ns(uint64_t cycles)
{
	return cycles * 1000000 / tsc_khz;
}

void pit_start_ch0(void)
{
	outb(PIT_CMD, 0x34);            /* ch0, lo/hi, mode 2, as a BIOS leaves it */
	outb(PIT_CH0, 0);
	outb(PIT_CH0, 0);               /* 65536: ~18.2 Hz */
}

uint16_t pit_read_ch0(void)
{
	outb(PIT_CMD, 0x00);            /* latch ch0 */
	uint8_t lo = inb(PIT_CH0);
	return lo | (inb(PIT_CH0) << 8);
}

/* Runs the window; false if OUT2 never rose (no PIT). */
static bool pit_window(uint64_t *tsc_delta, uint32_t *lapic_delta)
{
	const uint32_t count = PIT_HZ * CAL_MS / 1000;
	uint8_t p61 = inb(PORT_61) & ~0x03;
	bool ok = false;

	outb(PORT_61, p61);                     /* gate low, speaker off */
	outb(PIT_CMD, 0xB0);                    /* ch2, lo/hi, mode 0 */
	outb(PIT_CH2, count & 0xFF);
	outb(PIT_CH2, count >> 8);
	lapic_write(LAPIC_TIMER_DCR, 0x3);
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
	lapic_write(LAPIC_TIMER_ICR, 0xFFFFFFFF);

	/* Mode 0 drives OUT2 low once programmed: if it reads high, there is
	 * no PIT behind these ports (absent ports read 0xFF). */
	if (inb(PORT_61) & 0x20)
		return false;

	outb(PORT_61, p61 | 0x01);              /* gate high: count down */
	uint64_t t0 = rdtsc();
	uint32_t a0 = lapic_read(LAPIC_TIMER_CCR);
	/* Give up after 2e9 cycles: 200 ms even at 10 GHz. */
	while (rdtsc() - t0 < 2000000000ULL) {
		if (inb(PORT_61) & 0x20) {
			ok = true;
			break;
		}
	}
	uint64_t t1 = rdtsc();
	uint32_t a1 = lapic_read(LAPIC_TIMER_CCR);
	outb(PORT_61, p61);
	lapic_write(LAPIC_TIMER_ICR, 0);

	*tsc_delta = t1 - t0;
	*lapic_delta = a0 - a1;
	return ok;
}

void timer_calibrate(void)
{
	uint64_t dt;
	uint32_t da;
	const uint32_t count = PIT_HZ * CAL_MS / 1000;
	uint32_t r[4];

	/* A hypervisor that publishes the frequencies (kHz) saves the PIT
	 * window: 10 ms of a boot that is otherwise about as long. */
	cpuid(0x40000000, 0, r);
	if (cpuinfo.hypervisor[0] && r[0] >= 0x40000010 && r[0] < 0x40000100) {
		cpuid(0x40000010, 0, r);
		if (r[0] && r[1]) {
			tsc_khz = r[0];
			lapic_timer_hz = (uint64_t)r[1] * 1000 / LAPIC_TIMER_DIV;
			tsc_source = "CPUID 0x40000010";
			return;
		}
	}
	/* A TSC below 10 MHz means the window did not really run. */
	if (pit_window(&dt, &da) && dt >= 10000ULL * CAL_MS) {
		tsc_khz = dt * PIT_HZ / ((uint64_t)count * 1000);
		lapic_timer_hz = (uint64_t)da * PIT_HZ / count;
		tsc_source = "PIT";
		return;
	}
	kprintf("timer: PIT calibration failed, assuming TSC %lu kHz\n", tsc_khz);
}
