/*
 * IDT and interrupt dispatch.  Exceptions print the frame and stop the
 * core, unless the faulting instruction has an entry in .fixup_table
 * (rdmsr_safe/wrmsr_safe), in which case execution resumes there.
 */
#include "trap.h"
#include "apic.h"
#include "console.h"
#include "cpu.h"
#include "lib.h"
#include "mm.h"
#include "proc.h"
#include "x86.h"

struct idt_gate {
	uint16_t off_lo, sel;
	uint8_t ist, type;
	uint16_t off_mid;
	uint32_t off_hi, zero;
} PACKED;

struct fixup { uint64_t insn, resume; };

extern char trap_stubs[];
extern const struct fixup __fixup_start[], __fixup_end[];
extern struct idt_gate idt[256];        /* built at assembly time */

static irq_handler_t handlers[256];
static bool no_eoi[256];        /* software interrupts: nothing to acknowledge */

static const char *const exc_names[32] = {
	"#DE divide error", "#DB debug", "NMI", "#BP breakpoint",
	"#OF overflow", "#BR bound range", "#UD invalid opcode", "#NM device not available",
	"#DF double fault", "coprocessor overrun", "#TS invalid TSS", "#NP segment not present",
	"#SS stack fault", "#GP general protection", "#PF page fault", "reserved",
	"#MF x87 error", "#AC alignment check", "#MC machine check", "#XM SIMD error",
	"#VE virtualization", "#CP control protection", "reserved", "reserved",
	"reserved", "reserved", "reserved", "reserved",
	"#HV hypervisor injection", "#VC VMM communication", "#SX security", "reserved",
};

const char *exc_name(unsigned v)
{
	return v < 32 ? exc_names[v] : "interrupt";
}

void trap_init(void)
{
	/* The static IDT hard-codes the stub address; check the link agrees. */
	const struct idt_gate *g = &idt[255];
	uint64_t a = g->off_lo | ((uint64_t)g->off_mid << 16) | ((uint64_t)g->off_hi << 32);
	if (a != (uint64_t)(uintptr_t)(trap_stubs + 16 * 255))
		panic("IDT gate 255 points to 0x%lx, stub is at %p", a, trap_stubs + 16 * 255);
	idt_load();
}

void idt_load(void)
{
	struct { uint16_t limit; uint64_t base; } PACKED d = { sizeof(struct idt_gate) * 256 - 1, (uint64_t)(uintptr_t)idt };
	asm volatile("lidt %0" :: "m"(d));
}

void irq_register(int vector, irq_handler_t h)
{
	handlers[vector] = h;
}

void trap_register_soft(int vector, irq_handler_t h)
{
	no_eoi[vector] = true;
	handlers[vector] = h;
}

static bool try_fixup(struct trapframe *tf)
{
	for (const struct fixup *f = __fixup_start; f < __fixup_end; f++) {
		if (f->insn == tf->rip) {
			tf->rip = f->resume;
			return true;
		}
	}
	return false;
}

static NORETURN void fatal_exception(struct trapframe *tf)
{
	cli();
	console_force_unlock();
	int core = -1;
	/* %gs may not be set up yet on a very early fault. */
	if (rdmsr(MSR_GS_BASE))
		core = this_cpu()->id;
	kprintf("\nEXCEPTION %lu (%s) on core %d, error code 0x%lx\n",
		tf->vector, exc_names[tf->vector & 31], core, tf->err);
	kprintf("rip=0x%016lx cs=0x%lx rflags=0x%lx cr2=0x%016lx\n",
		tf->rip, tf->cs, tf->rflags, read_cr2());
	kprintf("rsp=0x%016lx ss=0x%lx cr3=0x%lx\n", tf->rsp, tf->ss, read_cr3());
	kprintf("rax=0x%016lx rbx=0x%016lx rcx=0x%016lx rdx=0x%016lx\n",
		tf->rax, tf->rbx, tf->rcx, tf->rdx);
	kprintf("rsi=0x%016lx rdi=0x%016lx rbp=0x%016lx r8 =0x%016lx\n",
		tf->rsi, tf->rdi, tf->rbp, tf->r8);
	kprintf("r9 =0x%016lx r10=0x%016lx r11=0x%016lx r12=0x%016lx\n",
		tf->r9, tf->r10, tf->r11, tf->r12);
	kprintf("r13=0x%016lx r14=0x%016lx r15=0x%016lx\n", tf->r13, tf->r14, tf->r15);
	kprintf("core halted\n");
	for (;;)
		hlt();
}

void trap(struct trapframe *tf)
{
	uint64_t v = tf->vector;

	if (v < 32) {
		if (handlers[v]) {      /* a self-test's exception hook */
			handlers[v](tf);
			return;
		}
		if ((tf->cs & 3) && user_trap(tf))
			return;         /* a system call (kvm_pvm), or the process was killed */
		if (try_fixup(tf))
			return;
		fatal_exception(tf);
	}
	if (handlers[v]) {
		handlers[v](tf);
		if (v != VEC_SPURIOUS && !no_eoi[v])
			lapic_eoi();
		return;
	}
	if (v >= VEC_PIC_BASE && v < VEC_PIC_BASE + 16)
		return;         /* spurious IRQ 7/15 from the masked 8259: no EOI */
	if (v == VEC_SPURIOUS)
		return;
	kprintf("unexpected interrupt vector 0x%lx on core %d\n", v, this_cpu()->id);
	lapic_eoi();
}
