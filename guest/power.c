/* Reset and ACPI soft-off. */
#include "power.h"
#include "acpi.h"
#include "lib.h"
#include "mm.h"
#include "timer.h"
#include "x86.h"

#define SLP_EN (1u << 13)
#define SCI_EN 1u

void power_reboot(void)
{
	kprintf("rebooting\n");
	cli();
	outb(0xCF9, 0x06);              /* PIIX/ICH reset control: full reset */
	udelay(10000);
	/* i8042 pulse reset line, once its input buffer is empty. */
	for (int i = 0; i < 10000 && (inb(0x64) & 0x02); i++)
		pause();
	outb(0x64, 0xFE);
	udelay(10000);
	kprintf("reset failed, triple-faulting\n");
	struct { uint16_t limit; uint64_t base; } PACKED none = { 0, 0 };
	asm volatile("lidt %0; ud2" :: "m"(none));
	for (;;)
		hlt();
}

void power_off(void)
{
	uint8_t a, b;

	if (!acpi.have_fadt || !(acpi.pm1a_cnt || acpi.sleep_ctl)) {
		kprintf("poweroff: no ACPI PM1a control block\n");
		return;
	}
	if (!acpi_s5(&a, &b)) {
		kprintf("poweroff: no \\_S5 in the DSDT\n");
		return;
	}
	kprintf("powering off\n");
	cli();
	if (!acpi.pm1a_cnt) {
		/* Hardware-reduced: SLP_TYP in bits 4:2, SLP_EN is bit 5. */
		uint8_t v = ((a & 7) << 2) | (1u << 5);
		if (acpi.sleep_ctl_io)
			outb(acpi.sleep_ctl, v);
		else if (acpi.sleep_ctl < PHYS_LIMIT)
			*(volatile uint8_t *)(uintptr_t)acpi.sleep_ctl = v;
		udelay(100000);
		sti();
		kprintf("poweroff failed: still running after writing SLEEP_CONTROL_REG\n");
		return;
	}
	/* Hand the PM registers to the OS if firmware has not. */
	if (!(inw(acpi.pm1a_cnt) & SCI_EN) && acpi.smi_cmd && acpi.acpi_enable) {
		outb(acpi.smi_cmd, acpi.acpi_enable);
		uint64_t end = tsc_deadline_us(10000);
		while (!(inw(acpi.pm1a_cnt) & SCI_EN) && !tsc_passed(end))
			pause();
	}
	/* Keep the other bits (SCI_EN) as they are. */
	uint16_t keep = (uint16_t)~((7u << 10) | SLP_EN);
	outw(acpi.pm1a_cnt, (inw(acpi.pm1a_cnt) & keep) | ((a & 7) << 10) | SLP_EN);
	if (acpi.pm1b_cnt)
		outw(acpi.pm1b_cnt, (inw(acpi.pm1b_cnt) & keep) | ((b & 7) << 10) | SLP_EN);
	udelay(100000);
	sti();
	kprintf("poweroff failed: still running after writing PM1a_CNT 0x%x\n", acpi.pm1a_cnt);
}
