/*
 * NIC drivers for the net program, in ring 3.  The kernel gives this
 * process the device (assign_dev with ASSIGN_PHYSICAL_OK): its registers
 * are mapped here, and every address the device is given comes from
 * dma_addr(): an IOVA in this process's VT-d domain when an IOMMU
 * translates the device, else a physical address.  Each DMA buffer lies
 * inside one page, so nothing needs physically contiguous pages.
 *
 * virtio-net (virtio 1.2, 5.1), modern PCI or virtio-mmio version 2:
 * VERSION_1 and MAC (ACCESS_PLATFORM when offered), one receive and one
 * transmit queue of up to 256, no offloads, no control queue; every
 * descriptor owns one 2 KiB buffer for good.  Completions are polled in
 * the used rings (VRING_AVAIL_F_NO_INTERRUPT); a queue is notified after a
 * batch, unless the device says it does not want it (VRING_USED_F_NO_NOTIFY).
 *
 * The Intel 82540EM (e1000): below.
 */
#include "net.h"
#include "../include/virtio_spec.h"

#define barrier()       asm volatile("" ::: "memory")
#define mb()            asm volatile("mfence" ::: "memory")

/* ---- time ---- */

static uint64_t khz;

void clock_init(void)
{
	khz = tsc_khz();
	if (!khz)
		khz = 1000000;
}

uint64_t now_us(void)
{
	return rdtsc() * 1000 / khz;
}

/* ---- DMA pages ---- */

#define DMA_REGIONS 8
static struct { uint8_t *va; unsigned pages; uint64_t *da; } regions[DMA_REGIONS];
static int nregions;

void *dma_pages(unsigned n)
{
	if (nregions == DMA_REGIONS)
		return NULL;
	unsigned table = (n * 8 + PAGE_SIZE - 1) / PAGE_SIZE;
	uint8_t *va = mmap((size_t)(n + table) * PAGE_SIZE);
	if (va == MAP_FAILED)
		return NULL;
	uint64_t *da = (uint64_t *)(va + (size_t)n * PAGE_SIZE);
	for (unsigned i = 0; i < n; i++) {
		int64_t a = dma_addr(va + (size_t)i * PAGE_SIZE);
		if (a < 0)
			return NULL;
		da[i] = a;
	}
	regions[nregions].va = va;
	regions[nregions].pages = n;
	regions[nregions].da = da;
	nregions++;
	return va;
}

uint64_t dma_of(const volatile void *p)
{
	const uint8_t *b = (const uint8_t *)p;
	for (int r = 0; r < nregions; r++) {
		uint64_t off = b - regions[r].va;
		if (b >= regions[r].va && off < (uint64_t)regions[r].pages * PAGE_SIZE)
			return regions[r].da[off / PAGE_SIZE] + (off & (PAGE_SIZE - 1));
	}
	printf("net: %p is not DMA memory\n", p);
	exit(90);
}

/* ---- virtio-net ---- */

#define VQ_MAX  256

struct vq {
	uint16_t size, avail_idx, last_used, added;
	volatile uint64_t *desc;        /* 16 bytes each: addr, len | flags << 32 | next << 48 */
	volatile uint16_t *avail;       /* flags, idx, ring[] */
	volatile uint16_t *used;        /* flags, idx, then {u32 id, u32 len}[] */
	volatile uint16_t *notify;      /* PCI: where to write the queue index */
	uint8_t *buf[VQ_MAX];
};

struct vnet {
	struct nic nic;
	bool mmio;
	volatile uint8_t *bar, *common, *devcfg;
	struct assign_virtio info;
	uint64_t features;
	struct vq rx, tx;
	uint16_t tx_free[VQ_MAX];
	int ntx_free;
	int rx_held;                    /* buffer recv() handed out, -1: none */
};

static struct vnet vnet;

static uint8_t vstatus(struct vnet *v)
{
	return v->mmio ? R32(v->bar + VMMIO_STATUS) : R8(v->common + VPCI_STATUS);
}

static void set_vstatus(struct vnet *v, uint8_t s)
{
	if (v->mmio)
		W32(v->bar + VMMIO_STATUS, s);
	else
		W8(v->common + VPCI_STATUS, s);
}

static uint64_t offered_features(struct vnet *v)
{
	uint64_t f = 0;
	for (int i = 0; i < 2; i++) {
		if (v->mmio) {
			W32(v->bar + VMMIO_DFSEL, i);
			f |= (uint64_t)R32(v->bar + VMMIO_DF) << (32 * i);
		} else {
			W32(v->common + VPCI_DFSELECT, i);
			f |= (uint64_t)R32(v->common + VPCI_DF) << (32 * i);
		}
	}
	return f;
}

static void accept_features(struct vnet *v, uint64_t f)
{
	for (int i = 0; i < 2; i++) {
		if (v->mmio) {
			W32(v->bar + VMMIO_GFSEL, i);
			W32(v->bar + VMMIO_GF, (uint32_t)(f >> (32 * i)));
		} else {
			W32(v->common + VPCI_GFSELECT, i);
			W32(v->common + VPCI_GF, (uint32_t)(f >> (32 * i)));
		}
	}
}

static void w64(volatile uint8_t *a, uint64_t v)
{
	W32(a, (uint32_t)v);            /* low half first, as the spec asks */
	W32(a + 4, v >> 32);
}

static uint8_t vcfg8(struct vnet *v, unsigned off)
{
	return v->mmio ? R8(v->bar + VMMIO_CONFIG + off) : R8(v->devcfg + off);
}

/* Queue qi: rings in three pages, buffers of NIC_RX_BUF bytes (two a page). */
static const char *setup_queue(struct vnet *v, int qi, struct vq *q)
{
	uint16_t max;
	if (v->mmio) {
		W32(v->bar + VMMIO_QSEL, qi);
		max = R32(v->bar + VMMIO_QNUMMAX);
	} else {
		W16(v->common + VPCI_QSELECT, qi);
		max = R16(v->common + VPCI_QSIZE);
	}
	for (q->size = VQ_MAX; q->size > max; q->size >>= 1)
		;
	if (!q->size)
		return "queue not available";
	uint8_t *rings = dma_pages(3), *bufs = dma_pages(q->size / 2);
	if (!rings || !bufs)
		return "out of memory";
	q->desc = (volatile uint64_t *)rings;
	q->avail = (volatile uint16_t *)(rings + PAGE_SIZE);
	q->used = (volatile uint16_t *)(rings + 2 * PAGE_SIZE);
	q->avail[0] = VRING_AVAIL_F_NO_INTERRUPT;
	for (int i = 0; i < q->size; i++)
		q->buf[i] = bufs + i * NIC_RX_BUF;
	if (v->mmio) {
		W32(v->bar + VMMIO_QNUM, q->size);
		w64(v->bar + VMMIO_QDESC, dma_of(q->desc));
		w64(v->bar + VMMIO_QAVAIL, dma_of(q->avail));
		w64(v->bar + VMMIO_QUSED, dma_of(q->used));
		W32(v->bar + VMMIO_QREADY, 1);
		return NULL;
	}
	W16(v->common + VPCI_QSIZE, q->size);
	W16(v->common + VPCI_QMSIX, VPCI_NO_VECTOR);
	w64(v->common + VPCI_QDESC, dma_of(q->desc));
	w64(v->common + VPCI_QAVAIL, dma_of(q->avail));
	w64(v->common + VPCI_QUSED, dma_of(q->used));
	uint16_t noff = R16(v->common + VPCI_QNOFF);
	if ((uint64_t)noff * v->info.notify_off_multiplier + 2 > v->info.notify_len)
		return "notify offset outside the notify structure";
	q->notify = (volatile uint16_t *)(v->bar + v->info.notify +
					  noff * v->info.notify_off_multiplier);
	W16(v->common + VPCI_QENABLE, 1);
	return NULL;
}

static void vq_notify(struct vnet *v, struct vq *q, int qi)
{
	mb();                           /* the new idx before we look at the device's flags */
	if (q->used[0] & VRING_USED_F_NO_NOTIFY)
		return;
	if (v->mmio)
		W32(v->bar + VMMIO_QNOTIFY, qi);
	else
		*q->notify = qi;
	v->nic.kicks++;
}

static void vq_publish(struct vnet *v, struct vq *q, int qi)
{
	if (!q->added)
		return;
	barrier();
	q->avail[1] = q->avail_idx;
	q->added = 0;
	vq_notify(v, q, qi);
}

static void vq_add(struct vq *q, uint16_t id)
{
	q->avail[2 + q->avail_idx % q->size] = id;
	q->avail_idx++;
	q->added++;
}

static bool vnet_send(struct nic *n, const void *frame, unsigned len)
{
	struct vnet *v = (struct vnet *)n;
	struct vq *q = &v->tx;
	while (q->used[1] != q->last_used) {            /* take back what was sent */
		barrier();
		v->tx_free[v->ntx_free++] = q->used[2 + 4 * (q->last_used % q->size)];
		q->last_used++;
	}
	if (!v->ntx_free || len > ETH_FRAME_MAX) {
		n->tx_full++;
		return false;
	}
	uint16_t id = v->tx_free[--v->ntx_free];
	uint8_t *b = q->buf[id];
	memset(b, 0, VIRTIO_NET_HDR_LEN);
	memcpy(b + VIRTIO_NET_HDR_LEN, frame, len);
	q->desc[2 * id] = dma_of(b);
	q->desc[2 * id + 1] = VIRTIO_NET_HDR_LEN + len;
	vq_add(q, id);
	n->tx_frames++;
	return true;
}

static const uint8_t *vnet_recv(struct nic *n, unsigned *len)
{
	struct vnet *v = (struct vnet *)n;
	struct vq *q = &v->rx;
	if (v->rx_held >= 0) {
		vq_add(q, v->rx_held);
		v->rx_held = -1;
		if (q->added >= q->size / 4)
			vq_publish(v, q, 0);
	}
	if (q->used[1] == q->last_used)
		return NULL;
	barrier();
	volatile uint32_t *e = (volatile uint32_t *)&q->used[2] + 2 * (q->last_used % q->size);
	uint32_t id = e[0], l = e[1];
	q->last_used++;
	if (id >= q->size || l < VIRTIO_NET_HDR_LEN || l > NIC_RX_BUF) {
		printf("net: virtio-net used a receive buffer wrongly (id %u, %u bytes)\n", id, l);
		exit(91);
	}
	v->rx_held = id;
	n->rx_frames++;
	*len = l - VIRTIO_NET_HDR_LEN;
	return q->buf[id] + VIRTIO_NET_HDR_LEN;
}

static void vnet_kick(struct nic *n)
{
	struct vnet *v = (struct vnet *)n;
	vq_publish(v, &v->rx, 0);
	vq_publish(v, &v->tx, 1);
}

static const char *vnet_open(bool mmio, const char **where)
{
	struct vnet *v = &vnet;
	uint64_t sel = mmio ? ASSIGN_VIRTIO_MMIO(VIRTIO_ID_NET) : ASSIGN_VIRTIO_NET;
	v->bar = assign_dev(sel | ASSIGN_PHYSICAL_OK, &v->info);
	if (v->bar == MAP_FAILED)
		return "no such device (or it cannot be assigned)";
	v->mmio = mmio;
	v->common = v->bar + v->info.common;
	v->devcfg = v->bar + v->info.device;
	v->rx_held = -1;
	set_vstatus(v, 0);
	for (int i = 0; vstatus(v); i++) {
		if (i > 1000000)
			return "device did not reset";
		cpu_pause();
	}
	set_vstatus(v, VIRTIO_STATUS_ACK);
	set_vstatus(v, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER);
	uint64_t offered = offered_features(v);
	if (!(offered & VIRTIO_F_VERSION_1))
		return "no VIRTIO_F_VERSION_1";
	if (!(offered & VIRTIO_NET_F_MAC))
		return "no VIRTIO_NET_F_MAC";
	v->features = offered & (VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM | VIRTIO_NET_F_MAC |
				 VIRTIO_NET_F_STATUS);
	accept_features(v, v->features);
	uint8_t st = VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
	set_vstatus(v, st);
	if (!(vstatus(v) & VIRTIO_STATUS_FEATURES_OK))
		return "FEATURES_OK refused";
	const char *err = setup_queue(v, 0, &v->rx);
	if (!err)
		err = setup_queue(v, 1, &v->tx);
	if (err)
		return err;
	for (int i = 0; i < 6; i++)
		v->nic.mac[i] = vcfg8(v, VIRTIO_NET_CFG_MAC + i);
	set_vstatus(v, st | VIRTIO_STATUS_DRIVER_OK);
	if (vstatus(v) & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
		return "device failed at DRIVER_OK";
	/* Every receive buffer posted; every transmit buffer free. */
	struct vq *rx = &v->rx, *tx = &v->tx;
	for (int i = 0; i < rx->size; i++) {
		rx->desc[2 * i] = dma_of(rx->buf[i]);
		rx->desc[2 * i + 1] = NIC_RX_BUF | (uint64_t)VRING_DESC_F_WRITE << 32;
		vq_add(rx, i);
	}
	vq_publish(v, rx, 0);
	for (int i = tx->size - 1; i >= 0; i--)
		v->tx_free[v->ntx_free++] = i;
	v->nic.send = vnet_send;
	v->nic.recv = vnet_recv;
	v->nic.kick = vnet_kick;
	if (mmio)
		snprintf(v->nic.name, sizeof(v->nic.name), "virtio-net mmio");
	else
		snprintf(v->nic.name, sizeof(v->nic.name), "virtio-net pci 00:%02x.%x",
			 (v->info.bdf >> 3) & 31, v->info.bdf & 7);
	*where = v->nic.name;
	return NULL;
}

/* ---- Intel 82540EM (e1000) ----
 *
 * From Intel's 8254x Software Developer's Manual: reset (CTRL.RST), the MAC
 * from the EEPROM through EERD (its 64 words must sum to 0xBABA), link up
 * (CTRL.SLU, STATUS.LU), interrupts masked (IMC): the rings are polled.
 * Legacy descriptors, 256 per ring (one page each), 2 KiB buffers
 * (RCTL.BSIZE 00b), the FCS stripped (RCTL.SECRC); every transmit
 * descriptor asks for its status (RS), so the driver sees DD in memory and
 * never reads TDH.  TDT is written once per batch, RDT once per 32
 * descriptors returned: each register access is an exit to the VMM.
 */

#define E_CTRL          0x0000
#define E_STATUS        0x0008
#define E_EERD          0x0014
#define E_IMC           0x00D8
#define E_RCTL          0x0100
#define E_TCTL          0x0400
#define E_TIPG          0x0410
#define E_RDBAL         0x2800
#define E_RDBAH         0x2804
#define E_RDLEN         0x2808
#define E_RDH           0x2810
#define E_RDT           0x2818
#define E_TDBAL         0x3800
#define E_TDBAH         0x3804
#define E_TDLEN         0x3808
#define E_TDH           0x3810
#define E_TDT           0x3818
#define E_RAL0          0x5400
#define E_RAH0          0x5404
#define E_CTRL_SLU      (1u << 6)
#define E_CTRL_RST      (1u << 26)
#define E_STATUS_LU     (1u << 1)
#define E_EERD_START    (1u << 0)
#define E_EERD_DONE     (1u << 4)
#define E_RCTL_EN       (1u << 1)
#define E_RCTL_BAM      (1u << 15)
#define E_RCTL_SECRC    (1u << 26)
#define E_TCTL_EN       (1u << 1)
#define E_TCTL_PSP      (1u << 3)
#define E_TCTL_CT       (0x0Fu << 4)
#define E_TCTL_COLD     (0x40u << 12)   /* full duplex */
#define E_TIPG_COPPER   (10u | 8u << 10 | 6u << 20)
#define E_TXD_EOP       (1u << 24)
#define E_TXD_IFCS      (1u << 25)
#define E_TXD_RS        (1u << 27)
#define E_DD            1u
#define E_EOP           2u
#define E_RING          256
#define E_EEPROM_SUM    0xBABA

struct e1000 {
	struct nic nic;
	volatile uint8_t *regs;
	volatile uint64_t *rx, *tx;     /* descriptors: two u64 each */
	uint8_t *rxbuf[E_RING], *txbuf[E_RING];
	unsigned rx_next, tx_tail, tx_clean, tx_pending, rx_returned;
	int rx_held;
};

static struct e1000 e1k;

static uint32_t er(struct e1000 *e, unsigned reg) { return R32(e->regs + reg); }
static void ew(struct e1000 *e, unsigned reg, uint32_t v) { W32(e->regs + reg, v); }

static bool e1000_send(struct nic *n, const void *frame, unsigned len)
{
	struct e1000 *e = (struct e1000 *)n;
	while (e->tx_clean != e->tx_tail && (e->tx[2 * e->tx_clean + 1] >> 32) & E_DD)
		e->tx_clean = (e->tx_clean + 1) % E_RING;
	unsigned t = e->tx_tail;
	if ((t + 1) % E_RING == e->tx_clean || len > ETH_FRAME_MAX) {
		n->tx_full++;
		return false;
	}
	memcpy(e->txbuf[t], frame, len);
	e->tx[2 * t] = dma_of(e->txbuf[t]);
	e->tx[2 * t + 1] = len | E_TXD_EOP | E_TXD_IFCS | E_TXD_RS;
	e->tx_tail = (t + 1) % E_RING;
	e->tx_pending++;
	n->tx_frames++;
	return true;
}

static void e1000_kick(struct nic *n)
{
	struct e1000 *e = (struct e1000 *)n;
	mb();
	if (e->rx_returned >= E_RING / 8) {     /* in batches, as descriptors are plenty */
		ew(e, E_RDT, (e->rx_next + E_RING - 1) % E_RING);
		e->rx_returned = 0;
		n->kicks++;
	}
	if (e->tx_pending) {
		ew(e, E_TDT, e->tx_tail);
		e->tx_pending = 0;
		n->kicks++;
	}
}

static const uint8_t *e1000_recv(struct nic *n, unsigned *len)
{
	struct e1000 *e = (struct e1000 *)n;
	for (;;) {
		if (e->rx_held >= 0) {          /* its descriptor goes back at the next RDT write */
			e->rx[2 * e->rx_held + 1] = 0;
			e->rx_held = -1;
			e->rx_returned++;
		}
		unsigned i = e->rx_next;
		uint64_t st = e->rx[2 * i + 1];
		if (!((st >> 32) & E_DD))
			return NULL;
		barrier();
		e->rx_held = i;
		e->rx_next = (i + 1) % E_RING;
		if (!((st >> 32) & E_EOP) || (st >> 40) & 0xFF)
			continue;               /* a piece of a long frame, or an error: dropped */
		n->rx_frames++;
		*len = st & 0xFFFF;
		return e->rxbuf[i];
	}
}

static const char *e1000_open(const char **where)
{
	struct e1000 *e = &e1k;
	e->regs = assign_dev(ASSIGN_E1000 | ASSIGN_PHYSICAL_OK, NULL);
	if (e->regs == MAP_FAILED)
		return "no such device (or it cannot be assigned)";
	e->rx_held = -1;
	ew(e, E_IMC, 0xFFFFFFFF);
	ew(e, E_CTRL, er(e, E_CTRL) | E_CTRL_RST);
	for (int i = 0; er(e, E_CTRL) & E_CTRL_RST; i++) {
		if (i > 1000000)
			return "CTRL.RST did not clear";
		cpu_pause();
	}
	ew(e, E_IMC, 0xFFFFFFFF);
	uint16_t words[64], sum = 0;
	for (int i = 0; i < 64; i++) {
		ew(e, E_EERD, i << 8 | E_EERD_START);
		uint32_t v;
		for (int t = 0; !((v = er(e, E_EERD)) & E_EERD_DONE); t++)
			if (t > 100000)
				return "EERD never said DONE";
		words[i] = v >> 16;
		sum += words[i];
	}
	if (sum != E_EEPROM_SUM)
		return "EEPROM checksum is not 0xBABA";
	for (int i = 0; i < 3; i++) {
		e->nic.mac[2 * i] = (uint8_t)words[i];
		e->nic.mac[2 * i + 1] = words[i] >> 8;
	}
	ew(e, E_CTRL, er(e, E_CTRL) | E_CTRL_SLU);
	if (!(er(e, E_STATUS) & E_STATUS_LU))
		return "link down";
	uint8_t *rings = dma_pages(2), *rxb = dma_pages(E_RING / 2), *txb = dma_pages(E_RING / 2);
	if (!rings || !rxb || !txb)
		return "out of memory";
	e->rx = (volatile uint64_t *)rings;
	e->tx = (volatile uint64_t *)(rings + PAGE_SIZE);
	for (int i = 0; i < E_RING; i++) {
		e->rxbuf[i] = rxb + i * NIC_RX_BUF;
		e->txbuf[i] = txb + i * NIC_RX_BUF;
		e->rx[2 * i] = dma_of(e->rxbuf[i]);
		e->rx[2 * i + 1] = 0;
	}
	ew(e, E_RAL0, words[0] | (uint32_t)words[1] << 16);
	ew(e, E_RAH0, words[2] | 1u << 31);
	ew(e, E_RDBAL, (uint32_t)dma_of(e->rx));
	ew(e, E_RDBAH, dma_of(e->rx) >> 32);
	ew(e, E_RDLEN, E_RING * 16);
	ew(e, E_RDH, 0);
	ew(e, E_RDT, E_RING - 1);
	ew(e, E_RCTL, E_RCTL_EN | E_RCTL_BAM | E_RCTL_SECRC);
	ew(e, E_TDBAL, (uint32_t)dma_of(e->tx));
	ew(e, E_TDBAH, dma_of(e->tx) >> 32);
	ew(e, E_TDLEN, E_RING * 16);
	ew(e, E_TDH, 0);
	ew(e, E_TDT, 0);
	ew(e, E_TIPG, E_TIPG_COPPER);
	ew(e, E_TCTL, E_TCTL_EN | E_TCTL_PSP | E_TCTL_CT | E_TCTL_COLD);
	e->nic.send = e1000_send;
	e->nic.recv = e1000_recv;
	e->nic.kick = e1000_kick;
	snprintf(e->nic.name, sizeof(e->nic.name), "e1000");
	*where = e->nic.name;
	return NULL;
}

/* ---- choosing ---- */

struct nic *nic_open(const char *kind, const char **err)
{
	static const char *const kinds[] = { "virtio-pci", "virtio-mmio", "e1000" };
	const char *where;
	bool tried = false;
	*err = "no NIC (virtio-net on PCI or MMIO, or e1000)";
	for (unsigned i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		if (kind && strcmp(kind, kinds[i]))
			continue;
		tried = true;
		const char *e = i == 2 ? e1000_open(&where) : vnet_open(i == 1, &where);
		if (!e)
			return i == 2 ? &e1k.nic : &vnet.nic;
		bool assigned = i == 2 ? e1k.regs != MAP_FAILED : vnet.bar != MAP_FAILED;
		if (kind || assigned) {
			*err = e;
			return NULL;
		}
	}
	if (!tried)
		*err = "unknown NIC kind: virtio-pci, virtio-mmio or e1000";
	return NULL;
}
