/* CMOS real-time clock (ports 0x70/0x71). */
#include "rtc.h"
#include "timer.h"
#include "x86.h"

#define CMOS_INDEX 0x70
#define CMOS_DATA  0x71
#define NMI_OFF    0x80         /* keep NMIs masked while indexing */

static uint8_t cmos_read(uint8_t reg)
{
	outb(CMOS_INDEX, NMI_OFF | reg);
	return inb(CMOS_DATA);
}

static bool bcd_ok(uint8_t v)
{
	return (v & 0x0F) <= 9 && (v >> 4) <= 9;
}

static uint8_t from_bcd(uint8_t v)
{
	return (v >> 4) * 10 + (v & 0x0F);
}

const char *rtc_read(uint8_t *hour, uint8_t *min, uint8_t *sec)
{
	/* Status A bit 7 (update in progress) lasts < 2 ms per second. */
	uint64_t end = tsc_deadline_us(20000);
	uint8_t a;
	while ((a = cmos_read(0x0A)) & 0x80) {
		if (a == 0xFF)
			return "CMOS reads 0xFF";
		if (tsc_passed(end))
			return "update-in-progress never cleared";
		pause();
	}
	uint8_t b = cmos_read(0x0B);
	uint8_t s = cmos_read(0x00), m = cmos_read(0x02), h = cmos_read(0x04);
	if (!(b & 0x04)) {              /* BCD mode */
		if (!bcd_ok(s) || !bcd_ok(m) || !bcd_ok(h & 0x7F))
			return "bad BCD digits";
		s = from_bcd(s);
		m = from_bcd(m);
		h = from_bcd(h & 0x7F) | (h & 0x80);
	}
	*sec = s;
	*min = m;
	*hour = h;
	return 0;
}
