/*
 * COM1 16550 console.  Output is polled on LSR.THRE; when the FIFO is
 * present one THRE poll covers 16 bytes, halving the port exits per
 * character.  Input comes from the serial interrupt (IOAPIC, ISA IRQ 4)
 * into a ring buffer, or is polled when no IOAPIC route exists.
 */
#include "console.h"
#include "lib.h"
#include "timer.h"
#include "x86.h"

#define RBR 0   /* receive buffer (read) */
#define THR 0   /* transmit holding (write) */
#define DLL 0   /* divisor latch low (DLAB=1) */
#define IER 1
#define DLM 1
#define IIR 2   /* read */
#define FCR 2   /* write */
#define LCR 3
#define MCR 4
#define LSR 5

#define LSR_DR   0x01
#define LSR_THRE 0x20
#define IER_RDA  0x01
#define MCR_DTR  0x01
#define MCR_RTS  0x02
#define MCR_OUT2 0x08   /* gates the IRQ line on PC serial ports */
#define MCR_LOOP 0x10

static bool have_fifo;
static int tx_room;             /* bytes we may write before polling LSR */
static bool cr_pending;         /* CR of a CR LF pair already sent */
static bool irq_mode;
static unsigned long irq_count;

static volatile uint8_t rxbuf[256];
static volatile uint8_t rx_head, rx_tail;       /* u8: wraps at 256 */

static spinlock_t out_lock;
static uint64_t out_flags;

static void rx_drain(void);

void console_init(void)
{
	outb(COM1 + IER, 0);
	outb(COM1 + LCR, 0x80);         /* DLAB */
	outb(COM1 + DLL, 1);            /* 115200 baud */
	outb(COM1 + DLM, 0);
	outb(COM1 + LCR, 0x03);         /* 8N1 */
	rx_drain();                     /* keep typeahead: FIFO enable clears it */
	outb(COM1 + FCR, 0x07);         /* enable + clear FIFOs */
	outb(COM1 + MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
	have_fifo = (inb(COM1 + IIR) & 0xC0) == 0xC0;
	tx_room = 0;
}

static void wait_thre(void)
{
	/* Bounded: a missing UART must not hang the kernel. */
	for (int i = 0; i < 1000000; i++)
		if (inb(COM1 + LSR) & LSR_THRE)
			break;
	tx_room = have_fifo ? 16 : 1;
}

/*
 * Caller holds the output lock.  '\n' goes out as CR LF.  Text between
 * newlines leaves in REP OUTSB runs of up to the FIFO's free room: one
 * port exit per run instead of one per byte.
 */
void console_write_locked(const char *s, size_t n)
{
	const char *end = s + n;
	int room = tx_room;

	while (s < end) {
		if (room == 0) {
			wait_thre();
			room = tx_room;
		}
		if (*s == '\n') {
			outb(COM1 + THR, cr_pending ? '\n' : '\r');
			s += cr_pending;
			cr_pending = !cr_pending;
			room--;
			continue;
		}
		size_t run = (size_t)(end - s) < (size_t)room ? (size_t)(end - s) : (size_t)room;
		const char *nl = memchr(s, '\n', run);
		if (nl)
			run = (size_t)(nl - s);
		room -= (int)run;
		cr_pending = false;
		asm volatile("rep outsb" : "+S"(s), "+c"(run) : "d"((uint16_t)(COM1 + THR)) : "memory");
	}
	tx_room = room;
}

void console_putc(int c)
{
	char ch = c;
	console_write_locked(&ch, 1);
}

void console_write(const char *s, size_t n)
{
	console_lock();
	console_write_locked(s, n);
	console_unlock();
}

void console_lock(void)
{
	uint64_t f = irq_save();
	spin_lock(&out_lock);
	out_flags = f;
}

void console_unlock(void)
{
	uint64_t f = out_flags;
	spin_unlock(&out_lock);
	irq_restore(f);
}

/* For the fault path: the faulting core may hold the lock. */
void console_force_unlock(void)
{
	spin_unlock(&out_lock);
	tx_room = 0;
}

/*
 * Empty the receiver completely: the IOAPIC pin is edge-triggered, so
 * data left behind would never raise another interrupt.  Bounded, since
 * an absent UART reads LSR = 0xFF ("data ready" forever).
 */
static void rx_drain(void)
{
	for (int i = 0; i < 256; i++) {
		uint8_t lsr = inb(COM1 + LSR);
		if (lsr == 0xFF || !(lsr & LSR_DR))
			break;
		uint8_t c = inb(COM1 + RBR);
		if ((uint8_t)(rx_head + 1) != rx_tail) {
			rxbuf[rx_head] = c;
			rx_head++;
		}
	}
}

void console_intr(void)
{
	irq_count++;
	rx_drain();
}

void console_enable_irq(bool on)
{
	irq_mode = on;
	outb(COM1 + IER, on ? IER_RDA : 0);
	if (on) {
		/* An edge raised before the route existed was lost. */
		uint64_t f = irq_save();
		rx_drain();
		irq_restore(f);
	}
}

bool console_irq_mode(void)
{
	return irq_mode;
}

unsigned long console_irq_count(void)
{
	return irq_count;
}

/*
 * Self-test: with MCR.LOOP set the transmitter feeds the receiver, so
 * every byte written must come back.  Runs under the output lock with
 * interrupts off so neither console output nor the IRQ handler
 * interferes.
 */
const char *console_loopback_test(char *why, size_t n)
{
	static const uint8_t pattern[] = { 0x55, 0xAA, 0x00, 0xFF, 'A', '\n' };
	const char *err = NULL;

	console_lock();
	uint8_t mcr = inb(COM1 + MCR);
	outb(COM1 + IER, 0);
	outb(COM1 + MCR, mcr | MCR_LOOP);
	for (int i = 0; i < 64 && (inb(COM1 + LSR) & LSR_DR); i++)
		inb(COM1 + RBR);                /* stale input */
	for (size_t i = 0; i < sizeof(pattern) && !err; i++) {
		outb(COM1 + THR, pattern[i]);
		uint64_t end = tsc_deadline_us(10000);
		while (!(inb(COM1 + LSR) & LSR_DR) && !tsc_passed(end))
			pause();
		if (!(inb(COM1 + LSR) & LSR_DR)) {
			ksnprintf(why, n, "byte %zu (0x%02x) did not come back", i, pattern[i]);
			err = why;
		} else {
			uint8_t got = inb(COM1 + RBR);
			if (got != pattern[i]) {
				ksnprintf(why, n, "wrote 0x%02x, read 0x%02x", pattern[i], got);
				err = why;
			}
		}
	}
	outb(COM1 + MCR, mcr);
	if (inb(COM1 + MCR) & MCR_LOOP) {
		ksnprintf(why, n, "MCR loop bit stuck");
		err = why;
	}
	outb(COM1 + IER, irq_mode ? IER_RDA : 0);
	tx_room = 0;
	console_unlock();
	return err;
}

int console_getc(void)
{
	for (;;) {
		cli();
		if (!irq_mode)
			rx_drain();
		if (rx_head != rx_tail) {
			int c = rxbuf[rx_tail];
			rx_tail++;
			sti();
			return c;
		}
		if (irq_mode) {
			sti_hlt();      /* the serial interrupt wakes us */
		} else {
			sti();
			pause();
		}
	}
}
