/* The legacy 8259 pair: move it off the exception vectors, mask it all. */
#include "pic.h"
#include "trap.h"
#include "x86.h"

void pic_disable(void)
{
	outb(0x21, 0xFF);
	outb(0xA1, 0xFF);
	outb(0x20, 0x11);               /* ICW1: edge, cascade, ICW4 */
	outb(0xA0, 0x11);
	outb(0x21, VEC_PIC_BASE);       /* ICW2: vector base */
	outb(0xA1, VEC_PIC_BASE + 8);
	outb(0x21, 0x04);               /* ICW3: slave on IRQ 2 */
	outb(0xA1, 0x02);
	outb(0x21, 0x01);               /* ICW4: 8086 mode */
	outb(0xA1, 0x01);
	outb(0x21, 0xFF);               /* mask all */
	outb(0xA1, 0xFF);
}
