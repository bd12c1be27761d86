/*
 * vblk MODE: a virtio-blk driver in ring 3.  assign_dev(ASSIGN_VIRTIO_BLK)
 * gives this process the first modern virtio-blk PCI function (the kernel's
 * driver resets it and keeps off it): the BAR with the virtio-pci
 * structures is mapped uncached and struct assign_virtio says where each
 * one is.  The driver negotiates VERSION_1 and ACCESS_PLATFORM (required:
 * without it the device would take IOVAs for guest-physical addresses and
 * bypass the IOMMU), FLUSH when offered, sets up one
 * split virtqueue in a page from mmap and polls its used ring.  Every
 * address the device is given is an IOVA (iova_of: the kernel's VT-d domain
 * for this process mirrors its mmap area), so a 32 KiB mmap buffer is one
 * descriptor although its frames are scattered.  Modes:
 *   rw     write a pattern to 64 sectors at a quarter of the disk, flush,
 *          read back, compare; write the original back, flush, read back,
 *          compare; release()
 *   fault  a read into FAULT_IOVA, never mapped: the IOMMU blocks the
 *          device's write (the kernel's self-test finds the fault record);
 *          says what the device reported (akvm: status IOERR; QEMU: OK,
 *          the data dropped; or DEVICE_NEEDS_RESET); then a read into a
 *          mapped buffer works (after a reset and a new set-up if the
 *          device asked for one); exits owning the device
 * Exit codes 1-39 name the check that failed.
 */
#include "ulib.h"
#include "../include/virtio_spec.h"

#define SECTORS         64
#define BUF_LEN         (SECTORS * VIRTIO_BLK_SECTOR)
#define QMAX            64
#define FAULT_IOVA      0x0F000000ULL   /* never mapped; virtiotest.c has the same */


/* No writable globals: everything lives in this, on the stack. */
struct vblk {
	volatile uint8_t *common, *devcfg;
	volatile uint16_t *notify;
	struct assign_virtio info;
	volatile uint8_t *bar;
	uint64_t features, capacity, khz;
	/* queue 0: desc at 0, avail at 1024, used at 2048 of one page */
	uint8_t *ring;
	volatile uint64_t *desc;
	volatile uint16_t *avail, *used;
	uint16_t size, avail_idx, last_used;
	uint8_t *hdr;                   /* request header at 0, status byte at 16 */
};

static void w64(volatile uint8_t *a, uint64_t v)
{
	W32(a, (uint32_t)v);            /* low half first, as the spec asks */
	W32(a + 4, v >> 32);
}

static uint8_t status(struct vblk *v) { return R8(v->common + VPCI_STATUS); }

static bool reset(struct vblk *v)
{
	W8(v->common + VPCI_STATUS, 0);
	for (int i = 0; i < 1000000; i++) {
		if (!status(v))
			return true;
		cpu_pause();
	}
	return false;
}

/* Reset, negotiate, queue 0, DRIVER_OK: 0, or an exit code. */
static int setup(struct vblk *v)
{
	if (!reset(v))
		return 10;
	W8(v->common + VPCI_STATUS, VIRTIO_STATUS_ACK);
	W8(v->common + VPCI_STATUS, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER);
	uint64_t offered = 0;
	for (int i = 0; i < 2; i++) {
		W32(v->common + VPCI_DFSELECT, i);
		offered |= (uint64_t)R32(v->common + VPCI_DF) << (32 * i);
	}
	if (!(offered & VIRTIO_F_VERSION_1))
		return 11;
	if (!(offered & VIRTIO_F_ACCESS_PLATFORM))
		return 16;                      /* it would take our IOVAs for physical addresses */
	v->features = offered & (VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM |
				 VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_RO);
	for (int i = 0; i < 2; i++) {
		W32(v->common + VPCI_GFSELECT, i);
		W32(v->common + VPCI_GF, (uint32_t)(v->features >> (32 * i)));
	}
	uint8_t st = VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
	W8(v->common + VPCI_STATUS, st);
	if (!(status(v) & VIRTIO_STATUS_FEATURES_OK))
		return 12;

	W16(v->common + VPCI_QSELECT, 0);
	uint16_t max = R16(v->common + VPCI_QSIZE);
	for (v->size = QMAX; v->size > max; v->size >>= 1)
		;
	if (!v->size)
		return 13;
	memset(v->ring, 0, PAGE_SIZE);
	v->desc = (volatile uint64_t *)v->ring;
	v->avail = (volatile uint16_t *)(v->ring + 1024);
	v->used = (volatile uint16_t *)(v->ring + 2048);
	v->avail[0] = VRING_AVAIL_F_NO_INTERRUPT;
	v->avail_idx = v->last_used = 0;
	W16(v->common + VPCI_QSIZE, v->size);
	W16(v->common + VPCI_QMSIX, VPCI_NO_VECTOR);
	w64(v->common + VPCI_QDESC, iova_of((const void *)v->desc));
	w64(v->common + VPCI_QAVAIL, iova_of((const void *)v->avail));
	w64(v->common + VPCI_QUSED, iova_of((const void *)v->used));
	uint16_t noff = R16(v->common + VPCI_QNOFF);
	if ((uint64_t)noff * v->info.notify_off_multiplier + 2 > v->info.notify_len)
		return 14;
	v->notify = (volatile uint16_t *)(v->bar + v->info.notify + noff * v->info.notify_off_multiplier);
	W16(v->common + VPCI_QENABLE, 1);
	W8(v->common + VPCI_STATUS, st | VIRTIO_STATUS_DRIVER_OK);
	if (status(v) & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
		return 15;
	for (int tries = 0; tries < 4; tries++) {
		uint8_t gen = R8(v->common + VPCI_CFGGEN);
		v->capacity = R32(v->devcfg + VIRTIO_BLK_CFG_CAPACITY) |
			      (uint64_t)R32(v->devcfg + VIRTIO_BLK_CFG_CAPACITY + 4) << 32;
		if (R8(v->common + VPCI_CFGGEN) == gen)
			break;
	}
	return 0;
}

enum { DONE, TIMEOUT, NEEDS_RESET };

/* One request: header, data (len bytes at IOVA data, none if len is 0),
 * status byte.  Polls the used ring for up to 5 s; *st = the status byte. */
static int request(struct vblk *v, uint32_t type, uint64_t sector, uint64_t data, uint32_t len,
		   uint8_t *st)
{
	volatile uint8_t *h = v->hdr;
	*(volatile uint32_t *)h = type;
	*(volatile uint32_t *)(h + 4) = 0;
	*(volatile uint64_t *)(h + 8) = sector;
	h[16] = 0xFF;
	uint64_t addr[3] = { iova_of(v->hdr), data, iova_of(v->hdr) + 16 };
	uint32_t lens[3] = { 16, len, 1 };
	uint16_t flags[3] = { 0, type == VIRTIO_BLK_T_OUT ? 0 : VRING_DESC_F_WRITE, VRING_DESC_F_WRITE };
	int n = 0;
	for (int i = 0; i < 3; i++) {
		if (!lens[i])
			continue;
		v->desc[2 * n] = addr[i];
		v->desc[2 * n + 1] = lens[i] | (uint64_t)(flags[i] | VRING_DESC_F_NEXT) << 32 |
				     (uint64_t)(n + 1) << 48;
		n++;
	}
	v->desc[2 * n - 1] &= ~((uint64_t)VRING_DESC_F_NEXT << 32);     /* the chain ends */
	v->avail[2 + v->avail_idx % v->size] = 0;                       /* its head */
	asm volatile("" ::: "memory");
	v->avail[1] = ++v->avail_idx;
	asm volatile("mfence" ::: "memory");
	*v->notify = 0;                                                 /* queue 0 */

	uint64_t end = rdtsc() + 5000 * v->khz;
	while (v->used[1] == v->last_used) {
		if (status(v) & VIRTIO_STATUS_NEEDS_RESET)
			return NEEDS_RESET;
		if (rdtsc() > end) {
			printf("vblk: request type %u (sector %lu) did not complete in 5 s: device "
			       "status 0x%x, used idx %u, avail idx %u\n", type, sector, status(v),
			       v->used[1], v->avail_idx);
			return TIMEOUT;
		}
		cpu_pause();
	}
	asm volatile("" ::: "memory");
	v->last_used++;
	*st = h[16];
	return DONE;
}

/* A request that must complete with VIRTIO_BLK_S_OK. */
static bool ok(struct vblk *v, uint32_t type, uint64_t sector, void *buf, uint32_t len)
{
	uint8_t st;
	return request(v, type, sector, buf ? iova_of(buf) : 0, len, &st) == DONE &&
	       st == VIRTIO_BLK_S_OK;
}

static bool same(const uint64_t *a, const uint64_t *b, size_t words)
{
	for (size_t i = 0; i < words; i++)
		if (a[i] != b[i])
			return false;
	return true;
}

static int rw(struct vblk *v, int pid)
{
	uint64_t *save = mmap(BUF_LEN), *pat = mmap(BUF_LEN), *back = mmap(BUF_LEN);
	if (save == MAP_FAILED || pat == MAP_FAILED || back == MAP_FAILED)
		return 20;
	if (v->capacity < 4 * SECTORS)
		return 21;
	if (v->features & VIRTIO_BLK_F_RO)
		return 22;
	bool flush = v->features & VIRTIO_BLK_F_FLUSH;
	uint64_t first = (v->capacity / 4) & ~7ULL, seed = rdtsc();
	if (!ok(v, VIRTIO_BLK_T_IN, first, save, BUF_LEN))
		return 23;
	for (int i = 0; i < BUF_LEN / 8; i++)
		pat[i] = (seed + i / 64) * 0x9E3779B97F4A7C15ULL ^ (uint64_t)pid << 48 ^ i;
	if (!ok(v, VIRTIO_BLK_T_OUT, first, pat, BUF_LEN) ||
	    (flush && !ok(v, VIRTIO_BLK_T_FLUSH, 0, NULL, 0)))
		return 24;
	if (!ok(v, VIRTIO_BLK_T_IN, first, back, BUF_LEN))
		return 25;
	int bad = same(back, pat, BUF_LEN / 8) ? 0 : 26;
	/* The original back, whatever happened. */
	if (!ok(v, VIRTIO_BLK_T_OUT, first, save, BUF_LEN) ||
	    (flush && !ok(v, VIRTIO_BLK_T_FLUSH, 0, NULL, 0)))
		return 27;
	if (bad)
		return bad;
	if (!ok(v, VIRTIO_BLK_T_IN, first, back, BUF_LEN) || !same(back, save, BUF_LEN / 8))
		return 28;
	printf("vblk: pid %d: %lu sectors, features 0x%lx; wrote, %sread back %d sectors at %lu "
	       "through IOVA 0x%lx (one %d-byte descriptor) from ring 3, data ok; original restored\n",
	       pid, v->capacity, v->features, flush ? "flushed, " : "", SECTORS, first, iova_of(back),
	       BUF_LEN);
	if (release() != 0 || release() == 0)
		return 29;
	return 0;
}

static int fault(struct vblk *v, int pid)
{
	uint64_t *buf = mmap(PAGE_SIZE);
	if (buf == MAP_FAILED)
		return 30;
	uint8_t st = 0;
	int r = request(v, VIRTIO_BLK_T_IN, 0, FAULT_IOVA, PAGE_SIZE, &st);
	if (r == TIMEOUT)
		return 31;
	/* akvm's device fails the request; QEMU's completes it (the blocked
	 * write went to a bounce buffer and was dropped).  Either way the
	 * IOMMU records the fault: the kernel's self-test checks that. */
	if (r == DONE)
		printf("vblk: pid %d: read into unmapped IOVA 0x%llx: status %u (%s)\n", pid, FAULT_IOVA,
		       st, st == VIRTIO_BLK_S_OK ? "OK: the device saw no error" :
		       st == VIRTIO_BLK_S_IOERR ? "IOERR" : "?");
	else
		printf("vblk: pid %d: read into unmapped IOVA 0x%llx: device set DEVICE_NEEDS_RESET\n",
		       pid, FAULT_IOVA);
	if (r == NEEDS_RESET) {
		int e = setup(v);
		if (e)
			return e;
	}
	if (!ok(v, VIRTIO_BLK_T_IN, 0, buf, PAGE_SIZE))
		return 33;
	printf("vblk: pid %d: then a read into IOVA 0x%lx worked%s\n", pid, iova_of(buf),
	       r == NEEDS_RESET ? " (after a reset)" : "");
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "rw";
	int pid = getpid();
	struct vblk v;
	memset(&v, 0, sizeof(v));
	v.khz = tsc_khz();
	if (!v.khz)
		v.khz = 1000000;
	v.hdr = mmap(PAGE_SIZE);                /* the first mmap: IOVA 0 */
	v.ring = mmap(PAGE_SIZE);               /* not at 0: QEMU takes a ring at 0 for "none" */
	if (v.ring == MAP_FAILED || v.hdr == MAP_FAILED)
		return 1;
	v.bar = assign_dev(ASSIGN_VIRTIO_BLK, &v.info);
	if (v.bar == MAP_FAILED)
		return 2;
	if (assign_dev(ASSIGN_VIRTIO_BLK, &v.info) != MAP_FAILED)
		return 3;                       /* one device per process */
	if (!v.info.common_len || !v.info.notify_len || v.info.device_len < 8)
		return 4;
	v.common = v.bar + v.info.common;
	v.devcfg = v.bar + v.info.device;
	int e = setup(&v);
	if (e)
		return e;
	printf("vblk: pid %d: %04x:%02x:%02x.%x mapped at %p (%u bytes): common +0x%x, notify +0x%x "
	       "(x%u), isr +0x%x, device +0x%x; queue of %u at IOVA 0x%lx\n", pid, v.info.pci_device,
	       v.info.bdf >> 8, (v.info.bdf >> 3) & 31, v.info.bdf & 7, (void *)v.bar, v.info.map_len,
	       v.info.common, v.info.notify, v.info.notify_off_multiplier, v.info.isr, v.info.device,
	       v.size, iova_of(v.ring));
	if (!strcmp(mode, "rw"))
		return rw(&v, pid);
	if (!strcmp(mode, "fault"))
		return fault(&v, pid);
	return 39;
}
