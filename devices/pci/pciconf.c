/* PCI configuration accesses that need no device: completed in C.
 *
 * Firmware and kernels find PCI functions by reading the vendor id of
 * every bus/device/function: Akaros's scan is 8192 CONFIG_ADDRESS writes
 * and as many CONFIG_DATA reads, nearly all for functions that do not
 * exist. Here the mechanism #1 latch (0xCF8, dword accesses) lives in C,
 * and accesses through 0xCFC-0xCFF or the ECAM window that reach no
 * function (per the bitmap akvm.devices.pci publishes) read all ones and drop
 * writes, as PciRoot does. Accesses to a present function go to Python,
 * which reads the latch from here. */
#include <linux/kvm.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "pciconf.h"

#define ENABLE 0x80000000u
#define LATCH_BITS (ENABLE | 0x00FFFFFCu)	/* 30:24 and 1:0 read as zero */
#define EXT_CONFIG_SPACE 4096

struct akvm_pci_conf {
	pthread_mutex_t lock;		/* guards everything below */
	unsigned int latch;
	unsigned long long ecam_base, ecam_size;
	unsigned char present[65536 / 8];	/* bit (bus << 8 | dev << 3 | fn) */
	struct akvm_pci_conf_stats stats;
};

struct akvm_pci_conf *akvm_pci_conf_new(unsigned long long ecam_base, unsigned long long ecam_size)
{
	struct akvm_pci_conf *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	pthread_mutex_init(&c->lock, NULL);
	c->ecam_base = ecam_base;
	c->ecam_size = ecam_size;
	return c;
}

void akvm_pci_conf_free(struct akvm_pci_conf *c)
{
	if (!c)
		return;
	pthread_mutex_destroy(&c->lock);
	free(c);
}

void akvm_pci_conf_set_present(struct akvm_pci_conf *c, unsigned int bdf, int present)
{
	pthread_mutex_lock(&c->lock);
	if (present)
		c->present[(bdf & 0xFFFF) / 8] |= 1u << (bdf % 8);
	else
		c->present[(bdf & 0xFFFF) / 8] &= ~(1u << (bdf % 8));
	pthread_mutex_unlock(&c->lock);
}

unsigned int akvm_pci_conf_latch(struct akvm_pci_conf *c)
{
	unsigned int v;

	pthread_mutex_lock(&c->lock);
	v = c->latch;
	pthread_mutex_unlock(&c->lock);
	return v;
}

void akvm_pci_conf_set_latch(struct akvm_pci_conf *c, unsigned int value)
{
	pthread_mutex_lock(&c->lock);
	c->latch = value & LATCH_BITS;
	pthread_mutex_unlock(&c->lock);
}

void akvm_pci_conf_stats(struct akvm_pci_conf *c, struct akvm_pci_conf_stats *out)
{
	pthread_mutex_lock(&c->lock);
	*out = c->stats;
	pthread_mutex_unlock(&c->lock);
}

static int is_present(const struct akvm_pci_conf *c, unsigned int bdf)
{
	return c->present[bdf / 8] >> (bdf % 8) & 1;
}

/* An access nothing answers: reads all ones, writes dropped. */
static void absent(struct akvm_pci_conf *c, unsigned char *data, unsigned int bytes, int write)
{
	if (write) {
		c->stats.absent_writes++;
	} else {
		memset(data, 0xff, bytes);
		c->stats.absent_reads++;
	}
}

static int complete_io(struct akvm_pci_conf *c, struct kvm_run *run)
{
	unsigned int port = run->io.port, size = run->io.size, count = run->io.count;
	unsigned char *data = (unsigned char *)run + run->io.data_offset;
	int write = run->io.direction == KVM_EXIT_IO_OUT;

	if (port == AKVM_PCI_CONFIG_ADDRESS && size == 4) {
		if (write) {
			unsigned int v;
			memcpy(&v, data + 4 * (count - 1), 4);	/* REP OUTSD: the last one stays */
			c->latch = v & LATCH_BITS;
		} else {
			for (unsigned int i = 0; i < count; i++)
				memcpy(data + 4 * i, &c->latch, 4);
		}
		c->stats.latch_accesses += count;
		return 1;
	}
	if (port < AKVM_PCI_CONFIG_DATA || port + size > AKVM_PCI_CONFIG_DATA + 4)
		return 0;
	if (c->latch & ENABLE && is_present(c, (c->latch >> 8) & 0xFFFF))
		return 0;
	absent(c, data, size * count, write);
	return 1;
}

static int complete_mmio(struct akvm_pci_conf *c, struct kvm_run *run)
{
	unsigned long long addr = run->mmio.phys_addr, off;
	unsigned int len = run->mmio.len;

	if (!c->ecam_size || addr < c->ecam_base || addr - c->ecam_base >= c->ecam_size ||
	    addr - c->ecam_base + len > c->ecam_size)
		return 0;
	off = addr - c->ecam_base;
	if ((off & (EXT_CONFIG_SPACE - 1)) + len > EXT_CONFIG_SPACE)
		return 0;		/* straddles two functions: Python sorts it out */
	if (is_present(c, (unsigned int)(off >> 12) & 0xFFFF))
		return 0;
	absent(c, run->mmio.data, len, run->mmio.is_write);
	return 1;
}

int akvm_pci_conf_complete(void *opaque, void *kvm_run)
{
	struct akvm_pci_conf *c = opaque;
	struct kvm_run *run = kvm_run;
	int done = 0;

	if (run->exit_reason != KVM_EXIT_IO && run->exit_reason != KVM_EXIT_MMIO)
		return 0;
	pthread_mutex_lock(&c->lock);
	if (run->exit_reason == KVM_EXIT_IO)
		done = complete_io(c, run);
	else
		done = complete_mmio(c, run);
	pthread_mutex_unlock(&c->lock);
	return done;
}
