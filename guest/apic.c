/*
 * Local APIC.  x2APIC mode (registers are MSRs 0x800 + reg/16) when CPUID
 * offers it and the VMM lets us enable it; xAPIC MMIO otherwise.  All
 * cores use the BSP's choice.
 */
#include "apic.h"
#include "acpi.h"
#include "cpu.h"
#include "lib.h"
#include "trap.h"
#include "x86.h"

#define APIC_BASE_BSP    (1u << 8)
#define APIC_BASE_X2APIC (1u << 10)
#define APIC_BASE_ENABLE (1u << 11)
#define X2APIC_MSR(reg)  (0x800 + ((reg) >> 4))
#define X2APIC_ICR       0x830

bool x2apic_mode;
uint64_t lapic_timer_hz;
static uintptr_t lapic_mmio = 0xFEE00000;

uint32_t lapic_read(uint32_t reg)
{
	if (x2apic_mode)
		return (uint32_t)rdmsr(X2APIC_MSR(reg));
	return mmio_read32(lapic_mmio + reg);
}

void lapic_write(uint32_t reg, uint32_t v)
{
	if (x2apic_mode)
		wrmsr(X2APIC_MSR(reg), v);
	else
		mmio_write32(lapic_mmio + reg, v);
}

uint32_t lapic_id(void)
{
	return x2apic_mode ? lapic_read(LAPIC_ID) : lapic_read(LAPIC_ID) >> 24;
}

void lapic_eoi(void)
{
	lapic_write(LAPIC_EOI, 0);
}

uint64_t lapic_base_pa(void)
{
	return lapic_mmio;
}

static void xapic_wait_icr(void)
{
	for (int i = 0; i < 100000 && (lapic_read(LAPIC_ICR_LO) & ICR_DELIV_STATUS); i++)
		pause();
}

void lapic_send_ipi(uint32_t dest, uint32_t icr_lo)
{
	if (x2apic_mode) {
		wrmsr(X2APIC_ICR, ((uint64_t)dest << 32) | icr_lo);
		return;
	}
	uint64_t f = irq_save();
	xapic_wait_icr();
	lapic_write(LAPIC_ICR_HI, dest << 24);
	lapic_write(LAPIC_ICR_LO, icr_lo);
	xapic_wait_icr();
	irq_restore(f);
}

void lapic_timer_periodic(uint8_t vector, uint32_t count)
{
	lapic_write(LAPIC_TIMER_DCR, 0x3);      /* divide by 16 */
	lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | vector);
	lapic_write(LAPIC_TIMER_ICR, count);
}

void lapic_timer_stop(void)
{
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
	lapic_write(LAPIC_TIMER_ICR, 0);
}

static void apic_error(struct trapframe *tf)
{
	lapic_write(LAPIC_ESR, 0);
	uint32_t esr = lapic_read(LAPIC_ESR);
	kprintf("APIC error 0x%x on core %d\n", esr, this_cpu()->id);
}

static void lapic_setup(bool bsp)
{
	lapic_write(LAPIC_TPR, 0);
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
	lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);               /* IOAPIC, not ExtINT */
	lapic_write(LAPIC_LVT_LINT1, bsp ? 0x400 : LVT_MASKED); /* NMI on the BSP */
	lapic_write(LAPIC_LVT_ERROR, VEC_APIC_ERROR);
	lapic_write(LAPIC_ESR, 0);
	lapic_write(LAPIC_SVR, 0x100 | VEC_SPURIOUS);           /* software enable */
	lapic_write(LAPIC_TIMER_DCR, 0x3);
}

/* Enable in APIC_BASE; x2APIC must be entered from xAPIC-enabled mode. */
static bool lapic_enable(bool want_x2apic)
{
	uint64_t base = rdmsr(MSR_APIC_BASE);
	if (!(base & APIC_BASE_ENABLE)) {
		base |= APIC_BASE_ENABLE;
		wrmsr(MSR_APIC_BASE, base);
	}
	if (!want_x2apic || (base & APIC_BASE_X2APIC))
		return want_x2apic;
	return wrmsr_safe(MSR_APIC_BASE, base | APIC_BASE_X2APIC) == 0;
}

void lapic_init_bsp(void)
{
	uint64_t base = rdmsr(MSR_APIC_BASE);
	lapic_mmio = acpi.lapic_pa ? acpi.lapic_pa : (base & 0xFFFFF000);
	x2apic_mode = lapic_enable(cpuinfo.x2apic);
	lapic_setup(true);
	irq_register(VEC_APIC_ERROR, apic_error);
}

void lapic_init_ap(void)
{
	lapic_enable(x2apic_mode);
	lapic_setup(false);
}
