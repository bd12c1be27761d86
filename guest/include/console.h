/* COM1 16550: polled output, interrupt-driven (or polled) input. */
#ifndef CONSOLE_H
#define CONSOLE_H
#include "types.h"

#define COM1        0x3F8
#define COM1_IRQ    4

void console_init(void);
void console_putc(int c);                           /* lock held */
void console_write(const char *s, size_t n);
void console_write_locked(const char *s, size_t n);   /* lock held */
int console_getc(void);             /* blocks */
void console_intr(void);            /* serial interrupt handler */
void console_enable_irq(bool on);   /* switch input to interrupts */
bool console_irq_mode(void);
unsigned long console_irq_count(void);
void console_lock(void);
void console_unlock(void);
void console_force_unlock(void);
/* MCR loopback check; NULL on success, else why (written to buf). */
const char *console_loopback_test(char *why, size_t n);

#endif
