/*
 * Virtio drivers, written from the virtio 1.x specification: the PCI
 * (modern: common/notify/ISR/device capabilities) and MMIO (version 2,
 * and the legacy version 1 QEMU offers by default) transports and split
 * virtqueues.  Requests are synchronous and completion is polled on the
 * used ring (no interrupts: VRING_AVAIL_F_NO_INTERRUPT), which costs no
 * exits while waiting.  Each queue lives in one page (two for legacy MMIO).
 */
#include "virtio.h"
#include "acpi.h"
#include "lib.h"
#include "mm.h"
#include "multiboot.h"
#include "timer.h"
#include "vm.h"
#include "x86.h"

struct virtio_dev virtio_devs[VIRTIO_MAX_DEVS];
int virtio_ndevs;
static bool scanned;

#define QUEUE_MAX 64

/* microvm: 24 transports of 512 bytes from 0xFEB00000 (8 without ioapic2) */
#define MICROVM_BASE    0xFEB00000u
#define MICROVM_SLOTS   24

static inline uint8_t r8(uintptr_t a) { return *(volatile uint8_t *)a; }
static inline uint16_t r16(uintptr_t a) { return *(volatile uint16_t *)a; }
static inline uint32_t r32(uintptr_t a) { return *(volatile uint32_t *)a; }
static inline void w8(uintptr_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static inline void w16(uintptr_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void w32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
/* 64-bit fields go as two 32-bit writes, low first, as the spec asks. */
static inline void w64(uintptr_t a, uint64_t v) { w32(a, (uint32_t)v); w32(a + 4, v >> 32); }

const char *virtio_type_name(uint32_t type)
{
	switch (type) {
	case VIRTIO_ID_NET: return "net";
	case VIRTIO_ID_BLOCK: return "block";
	case VIRTIO_ID_CONSOLE: return "console";
	case VIRTIO_ID_RNG: return "rng";
	default: return "other";
	}
}

/* ---- discovery ------------------------------------------------------- */

static struct virtio_dev *new_dev(void)
{
	if (virtio_ndevs == VIRTIO_MAX_DEVS)
		return NULL;
	struct virtio_dev *d = &virtio_devs[virtio_ndevs++];
	memset(d, 0, sizeof(*d));
	return d;
}

/* Where the structure a vendor capability names lives: kept in d->cap[kind]
 * (BAR, offset, length: what a process given the device is told), and its
 * kernel address returned (0 when the BAR cannot hold it). */
static uintptr_t cap_addr(struct virtio_dev *d, uint8_t cap, uint8_t kind)
{
	struct pci_dev *p = d->pci;
	uint8_t bar = pci_cfg_read8(p, cap + VPCI_CAP_BAR);
	uint32_t off = pci_cfg_read32(p, cap + VPCI_CAP_OFFSET);
	uint32_t len = pci_cfg_read32(p, cap + VPCI_CAP_LENGTH);
	if (bar > 5)
		return 0;
	uint64_t barlen;
	uint64_t pa = pci_bar(p, bar, &barlen);
	if (!pa || (uint64_t)off + len > barlen)
		return 0;
	uintptr_t va = pci_map_mmio(pa, barlen);
	if (!va)
		return 0;
	d->cap[kind].bar = bar;
	d->cap[kind].off = off;
	d->cap[kind].len = len;
	return va + off;
}

static void add_pci(struct pci_dev *p)
{
	uint32_t type;
	if (p->device >= 0x1040 && p->device <= 0x107F)
		type = p->device - 0x1040;
	else if (p->device >= 0x1000 && p->device <= 0x103F)
		type = pci_cfg_read16(p, 0x2E);         /* transitional: subsystem id */
	else
		return;
	struct virtio_dev *d = new_dev();
	if (!d)
		return;
	d->transport = VIRTIO_PCI;
	d->type = type;
	d->pci = p;
	ksnprintf(d->where, sizeof(d->where), "pci %02x:%02x.%x", p->bus, p->dev, p->fn);
	/* The first capability of each kind that we can map. */
	for (uint8_t c = pci_find_cap(p, PCI_CAP_VENDOR, 0); c; c = pci_find_cap(p, PCI_CAP_VENDOR, c)) {
		uint8_t kind = pci_cfg_read8(p, c + 3);
		uintptr_t *slot = kind == VPCI_CAP_COMMON ? &d->common : kind == VPCI_CAP_NOTIFY ?
			&d->notify_base : kind == VPCI_CAP_ISR ? &d->isr : kind == VPCI_CAP_DEVICE ?
			&d->devcfg : NULL;
		if (!slot || *slot)
			continue;
		uintptr_t a = cap_addr(d, c, kind);
		if (!a)
			continue;
		*slot = a;
		if (kind == VPCI_CAP_NOTIFY)
			d->notify_mult = pci_cfg_read32(p, c + VPCI_CAP_NOTIFY_MULT);
	}
	if (!d->common || !d->notify_base)
		d->err = "no modern virtio-pci capabilities (legacy-only device)";
	pci_set_master(p, true);
	pci_intx(p, false);                     /* polled */
}

static void add_mmio(uint64_t pa, bool quiet_absent)
{
	for (int i = 0; i < virtio_ndevs; i++)
		if (virtio_devs[i].transport == VIRTIO_MMIO &&
		    virtio_devs[i].mmio == pa)
			return;
	uintptr_t a = map_mmio(pa, 0x200);
	if (!a || r32(a + VMMIO_MAGIC) != VIRTIO_MMIO_MAGIC)
		return;
	uint32_t id = r32(a + VMMIO_DEVID);
	if (!id)
		return;                         /* an empty transport slot */
	struct virtio_dev *d = new_dev();
	if (!d)
		return;
	d->transport = VIRTIO_MMIO;
	d->type = id;
	d->mmio = a;
	d->mmio_pa = pa;
	d->mmio_version = r32(a + VMMIO_VERSION);
	ksnprintf(d->where, sizeof(d->where), "mmio 0x%lx", pa);
	if (d->mmio_version != 1 && d->mmio_version != 2)
		d->err = "unknown virtio-mmio version";
}

static uint64_t parse_num(const char **s)
{
	const char *p = *s;
	uint64_t v = 0;
	int base = 10;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		base = 16;
		p += 2;
	}
	for (;; p++) {
		int dgt;
		if (*p >= '0' && *p <= '9')
			dgt = *p - '0';
		else if (base == 16 && *p >= 'a' && *p <= 'f')
			dgt = *p - 'a' + 10;
		else if (base == 16 && *p >= 'A' && *p <= 'F')
			dgt = *p - 'A' + 10;
		else
			break;
		v = v * base + dgt;
	}
	if (*p == 'K' || *p == 'k')
		v <<= 10, p++;
	else if (*p == 'M' || *p == 'm')
		v <<= 20, p++;
	*s = p;
	return v;
}

/* virtio_mmio.device=<size>@<baseaddr>:<irq> (Linux's syntax) */
static int scan_cmdline(void)
{
	static const char key[] = "virtio_mmio.device=";
	int n = 0;
	const char *s = bootinfo.cmdline;
	while ((s = strchr(s, 'v'))) {
		if (strncmp(s, key, sizeof(key) - 1)) {
			s++;
			continue;
		}
		s += sizeof(key) - 1;
		parse_num(&s);
		if (*s != '@')
			continue;
		s++;
		uint64_t base = parse_num(&s);
		if (base) {
			add_mmio(base, false);
			n++;
		}
	}
	return n;
}

int virtio_scan(void)
{
	if (scanned)
		return virtio_ndevs;
	scanned = true;
	int npci = pci_scan();
	for (int i = 0; i < pci_ndevs; i++)
		if (pci_devs[i].vendor == 0x1AF4)
			add_pci(&pci_devs[i]);
	/* MMIO: what the command line names; without PCI (microvm) the fixed window. */
	if (!scan_cmdline() && npci == 0)
		for (int i = 0; i < MICROVM_SLOTS; i++)
			add_mmio(MICROVM_BASE + 0x200 * i, true);
	return virtio_ndevs;
}

/* ---- transport operations ------------------------------------------- */

uint8_t virtio_status(struct virtio_dev *d)
{
	return d->transport == VIRTIO_PCI ? r8(d->common + VPCI_STATUS) : r32(d->mmio + VMMIO_STATUS);
}

static void set_status(struct virtio_dev *d, uint8_t s)
{
	if (d->transport == VIRTIO_PCI)
		w8(d->common + VPCI_STATUS, s);
	else
		w32(d->mmio + VMMIO_STATUS, s);
}

static uint64_t device_features(struct virtio_dev *d)
{
	uint64_t f = 0;
	int words = d->transport == VIRTIO_MMIO && d->mmio_version == 1 ? 1 : 2;
	for (int i = 0; i < words; i++) {
		uint32_t v;
		if (d->transport == VIRTIO_PCI) {
			w32(d->common + VPCI_DFSELECT, i);
			v = r32(d->common + VPCI_DF);
		} else {
			w32(d->mmio + VMMIO_DFSEL, i);
			v = r32(d->mmio + VMMIO_DF);
		}
		f |= (uint64_t)v << (32 * i);
	}
	return f;
}

static void driver_features(struct virtio_dev *d, uint64_t f)
{
	int words = d->transport == VIRTIO_MMIO && d->mmio_version == 1 ? 1 : 2;
	for (int i = 0; i < words; i++) {
		if (d->transport == VIRTIO_PCI) {
			w32(d->common + VPCI_GFSELECT, i);
			w32(d->common + VPCI_GF, f >> (32 * i));
		} else {
			w32(d->mmio + VMMIO_GFSEL, i);
			w32(d->mmio + VMMIO_GF, f >> (32 * i));
		}
	}
}

static uint32_t generation(struct virtio_dev *d)
{
	if (d->transport == VIRTIO_PCI)
		return r8(d->common + VPCI_CFGGEN);
	return d->mmio_version == 1 ? 0 : r32(d->mmio + VMMIO_CFGGEN);
}

static uintptr_t cfg_base(struct virtio_dev *d)
{
	return d->transport == VIRTIO_PCI ? d->devcfg : d->mmio + VMMIO_CONFIG;
}

uint8_t virtio_cfg8(struct virtio_dev *d, unsigned off)
{
	return cfg_base(d) ? r8(cfg_base(d) + off) : 0;
}

uint32_t virtio_cfg32(struct virtio_dev *d, unsigned off)
{
	return cfg_base(d) ? r32(cfg_base(d) + off) : 0;
}

uint64_t virtio_cfg64(struct virtio_dev *d, unsigned off)
{
	if (!cfg_base(d))
		return 0;
	for (int tries = 0; tries < 4; tries++) {
		uint32_t g = generation(d);
		uint64_t v = r32(cfg_base(d) + off) | (uint64_t)r32(cfg_base(d) + off + 4) << 32;
		if (generation(d) == g)
			return v;
	}
	return 0;
}

/* The largest power of two <= min(max, QUEUE_MAX). */
static uint16_t queue_size(uint32_t max)
{
	uint16_t s = QUEUE_MAX;
	while (s > max)
		s >>= 1;
	return s;
}

static const char *setup_queue(struct virtio_dev *d, int i)
{
	struct virtq *q = &d->vq[i];
	bool legacy = d->transport == VIRTIO_MMIO && d->mmio_version == 1;
	uint32_t max;

	if (d->transport == VIRTIO_PCI) {
		w16(d->common + VPCI_QSELECT, i);
		max = r16(d->common + VPCI_QSIZE);
	} else {
		w32(d->mmio + VMMIO_QSEL, i);
		max = r32(d->mmio + VMMIO_QNUMMAX);
	}
	if (!max)
		return "queue not available";
	uint16_t size = queue_size(max);
	if (!size)
		return "queue too small";

	/* Memory, allocated once: modern desc@0, avail@1024, used@2048 of one
	 * page; legacy desc + avail on the first page, used on the next. */
	if (!q->desc) {
		uint8_t *p = page_alloc();
		if (!p)
			return "out of pages";
		if (legacy) {
			uint8_t *p2 = page_alloc();
			if (p2 != p + PAGE_SIZE)
				return "legacy queue needs two contiguous pages";
			q->used = (volatile uint16_t *)p2;
		} else {
			q->used = (volatile uint16_t *)(p + 2048);
		}
		q->desc = (volatile uint64_t *)p;
		q->avail = (volatile uint16_t *)(p + (legacy ? 16 * size : 1024));
	}
	q->size = size;
	q->index = i;
	q->avail_idx = q->last_used = 0;
	q->avail[0] = VRING_AVAIL_F_NO_INTERRUPT;
	q->avail[1] = 0;
	q->used[0] = q->used[1] = 0;

	uint64_t desc = virt_to_phys((const void *)q->desc);
	uint64_t avail = virt_to_phys((const void *)q->avail);
	uint64_t used = virt_to_phys((const void *)q->used);
	if (d->transport == VIRTIO_PCI) {
		w16(d->common + VPCI_QSIZE, size);
		w16(d->common + VPCI_QMSIX, 0xFFFF);     /* no MSI-X vector: polled */
		w64(d->common + VPCI_QDESC, desc);
		w64(d->common + VPCI_QAVAIL, avail);
		w64(d->common + VPCI_QUSED, used);
		uint16_t noff = r16(d->common + VPCI_QNOFF);
		q->notify = d->notify_base + (uintptr_t)noff * d->notify_mult;
		w16(d->common + VPCI_QENABLE, 1);
	} else if (legacy) {
		w32(d->mmio + VMMIO_QNUM, size);
		w32(d->mmio + VMMIO_QALIGN, PAGE_SIZE);
		w32(d->mmio + VMMIO_QPFN, desc >> 12);
	} else {
		w32(d->mmio + VMMIO_QNUM, size);
		w32(d->mmio + VMMIO_QDESC, (uint32_t)desc);
		w32(d->mmio + VMMIO_QDESC + 4, desc >> 32);
		w32(d->mmio + VMMIO_QAVAIL, (uint32_t)avail);
		w32(d->mmio + VMMIO_QAVAIL + 4, avail >> 32);
		w32(d->mmio + VMMIO_QUSED, (uint32_t)used);
		w32(d->mmio + VMMIO_QUSED + 4, used >> 32);
		w32(d->mmio + VMMIO_QREADY, 1);
	}
	q->ready = true;
	return NULL;
}

bool virtio_reset(struct virtio_dev *d)
{
	set_status(d, 0);
	for (int i = 0; i < 1000 && virtio_status(d); i++)
		udelay(10);
	return !virtio_status(d);
}

const char *virtio_init(struct virtio_dev *d, uint64_t want, int nq)
{
	if (d->owner_pid)
		return "assigned to a process";
	if (d->err)
		return d->err;
	if (d->ready)
		return NULL;
	bool legacy = d->transport == VIRTIO_MMIO && d->mmio_version == 1;

	if (!virtio_reset(d))
		return d->err = "device did not reset";
	set_status(d, VIRTIO_STATUS_ACK);
	set_status(d, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER);
	if (legacy)
		w32(d->mmio + VMMIO_PAGESIZE, PAGE_SIZE);

	uint64_t offered = device_features(d);
	uint64_t f = offered & (want | VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
	if (!legacy && !(f & VIRTIO_F_VERSION_1)) {
		set_status(d, VIRTIO_STATUS_FAILED);
		return d->err = "device does not offer VIRTIO_F_VERSION_1";
	}
	driver_features(d, f);
	uint8_t st = VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER;
	if (!legacy) {
		st |= VIRTIO_STATUS_FEATURES_OK;
		set_status(d, st);
		if (!(virtio_status(d) & VIRTIO_STATUS_FEATURES_OK)) {
			set_status(d, VIRTIO_STATUS_FAILED);
			return d->err = "device refused FEATURES_OK";
		}
	}
	d->features = f;
	if (!d->scratch && !(d->scratch = page_alloc()))
		return d->err = "out of pages";
	for (int i = 0; i < nq && i < VIRTIO_MAX_QUEUES; i++) {
		const char *err = setup_queue(d, i);
		if (err) {
			set_status(d, VIRTIO_STATUS_FAILED);
			return d->err = err;
		}
	}
	st |= VIRTIO_STATUS_DRIVER_OK;
	set_status(d, st);
	if (virtio_status(d) & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
		return d->err = "device status shows NEEDS_RESET/FAILED after DRIVER_OK";
	d->ready = true;
	return NULL;
}

/* ---- a PCI device given to a process (user.c: assign/release) ---------- */

bool virtio_give(struct virtio_dev *d, int pid, bool translated)
{
	d->owner_pid = pid;
	d->ready = false;               /* queues and features are the process's now */
	/* Translated, only a device whose DMA the IOMMU sees: one without
	 * ACCESS_PLATFORM would take the process's IOVAs for physical addresses. */
	return virtio_reset(d) && (!translated || (device_features(d) & VIRTIO_F_ACCESS_PLATFORM));
}

struct virtio_dev *virtio_get(uint32_t type, int nth)
{
	virtio_scan();
	for (int i = 0; i < virtio_ndevs; i++)
		if (virtio_devs[i].type == type && nth-- == 0)
			return &virtio_devs[i];
	return NULL;
}

/* ---- virtqueues ------------------------------------------------------- */

const char *virtq_add(struct virtio_dev *d, int qi, const struct vbuf *b, int n)
{
	struct virtq *q = &d->vq[qi];
	if (!q->ready)
		return "queue not set up";
	if (n < 1 || n > q->size)
		return "chain longer than the queue";
	if (q->avail_idx != q->last_used)
		return "a request is still outstanding on this queue";
	for (int i = 0; i < n; i++) {
		uint16_t flags = (b[i].device_writes ? VRING_DESC_F_WRITE : 0) |
				 (i + 1 < n ? VRING_DESC_F_NEXT : 0);
		q->desc[2 * i] = b[i].pa;
		q->desc[2 * i + 1] = b[i].len | (uint64_t)flags << 32 | (uint64_t)(i + 1) << 48;
	}
	q->avail[2 + (q->avail_idx % q->size)] = 0;     /* the chain's head */
	barrier();
	q->avail_idx++;
	q->avail[1] = q->avail_idx;
	return NULL;
}

void virtq_kick(struct virtio_dev *d, int qi)
{
	asm volatile("mfence" ::: "memory");
	if (d->transport == VIRTIO_PCI)
		w16(d->vq[qi].notify, qi);
	else
		w32(d->mmio + VMMIO_QNOTIFY, qi);
}

bool virtq_done(struct virtio_dev *d, int qi, uint32_t *len)
{
	struct virtq *q = &d->vq[qi];
	if (q->last_used == q->avail_idx || q->used[1] == q->last_used)
		return false;
	barrier();
	volatile uint32_t *elem = (volatile uint32_t *)(q->used + 2) + 2 * (q->last_used % q->size);
	if (len)
		*len = elem[1];
	q->last_used++;
	return true;
}

const char *virtq_wait(struct virtio_dev *d, int qi, uint64_t timeout_us, uint32_t *len)
{
	uint64_t end = 0, delay = 1;
	for (int i = 0; !virtq_done(d, qi, len); i++) {
		if (i == 0)
			end = tsc_deadline_us(timeout_us);
		else if (tsc_passed(end))
			return (virtio_status(d) & VIRTIO_STATUS_NEEDS_RESET) ?
				"device set NEEDS_RESET" : "request did not complete in time";
		udelay(delay);
		if (delay < 500)
			delay *= 2;
	}
	return NULL;
}

const char *virtq_xfer(struct virtio_dev *d, int q, const struct vbuf *b, int n,
		       uint64_t timeout_us, uint32_t *len)
{
	const char *err = virtq_add(d, q, b, n);
	if (err)
		return err;
	virtq_kick(d, q);
	return virtq_wait(d, q, timeout_us, len);
}

void virtio_print(void)
{
	virtio_scan();
	for (int i = 0; i < virtio_ndevs; i++) {
		struct virtio_dev *d = &virtio_devs[i];
		kprintf("virtio %-7s %s%s, %s", virtio_type_name(d->type), d->where,
			d->transport == VIRTIO_MMIO ? (d->mmio_version == 1 ? " (legacy v1)" : " (v2)") : "",
			d->owner_pid ? "owned by a process" : d->ready ? "ready" : d->err ? d->err :
			"not initialised");
		if (d->owner_pid)
			kprintf(" (pid %d)", d->owner_pid);
		if (d->ready)
			kprintf(", features 0x%lx", d->features);
		kprintf("\n");
	}
	kprintf("%d virtio devices\n", virtio_ndevs);
}
