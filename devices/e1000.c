/* The 82540EM's data path in C (8254x SDM 3.2 and 3.3), the twin of
 * E1000._rx_frame() and E1000._transmit() in akvm.devices.e1000, for a
 * device whose DMA is direct and whose backend runs a loop in C
 * (devices/nicport.h), and the vCPU's exit handler for TDT and RDT.
 *
 * Transmit: whole packets (descriptors up to EOP) of legacy descriptors
 * without IC or VLE, or of extended data descriptors without TSE, POPTS
 * or VLE, are gathered, their status written back where RS asks, TDH moved
 * and the packet handed to the network with the lock released. The vCPU
 * that writes TDT gathers them at once, into a queue of frames (as the
 * hardware would, so descriptors are done when it returns to the guest);
 * the backend's thread, woken, sends them and gathers what did not fit.
 * With a backend that lets the vCPU run its turn (attach(), nicport.h:
 * libslirp under the backend's lock), the vCPU runs that turn itself
 * instead, so the frames reach the network, and the network's answers
 * (a TCP ACK) the receive ring, before it returns to the guest, with no
 * second thread to wake; when the backend is busy or held, the queue and
 * the thread serve as before. Behind an IOMMU, every ring and buffer
 * address goes through the unit's translator in C (dmaxlate.h; VT-d:
 * iommu/vtdfast.c), whose lock a step holds while it touches that memory
 * (as hardware drains DMA in flight before an invalidation completes). A
 * packet that wants more (a context descriptor, offloads, VLAN, a chain not
 * yet ended), a ring Python would complain of, a buffer outside guest RAM,
 * or an address the translator cannot serve (a miss that faults, a buffer
 * across pages it does not map contiguously, a context that changed)
 * ends C's turn at that packet: AKVM_NIC_PYTHON, and Python serves the rest
 * of the ring. Receive: the filters, padding, FCS, buffer sizes and
 * descriptors of _rx_frame(); VLAN filtering and what Python would report
 * go to Python; no free descriptor: AKVM_NIC_FULL (the frame waits).
 *
 * `lock` guards struct akvm_e1000, which Python's register model shares. */
#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "e1000.h"

#define STAT(off)	s->stats[((off) - E1000_STATS) / 4]
/* Descriptors one received frame may take: the longest with its FCS in 256-byte buffers */
#define MAX_PIECES	((E1000_MAX_RX_LONG + E1000_FCS_LEN + 255) / 256)

struct akvm_e1000_c {
	pthread_mutex_t lock;
	struct akvm_e1000 s;
	const struct akvm_mem_slot *slots;
	unsigned int nslots;
	/* behind an IOMMU: addresses through x only; held while its lock is */
	int translated, held;
	const struct akvm_dma_xlate *x;
	uint8_t frame[E1000_MAX_TX_PACKET + E1000_MIN_FRAME];
	/* the backend's turn a vCPU may run at its TDT write (nicport.h), or NULL */
	akvm_nic_turn_fn turn;
	void *engine;
	/* frames the vCPU gathered at its TDT write, for the backend's thread */
	unsigned int txq_head, txq_tail;
	uint32_t txq_len[E1000_TXQ_SLOTS];
	uint8_t txq[E1000_TXQ_SLOTS][E1000_TXQ_SLOT];
	uint8_t rx[E1000_MAX_RX_LONG + E1000_MIN_FRAME + E1000_FCS_LEN];
};

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

/* The Ethernet FCS (CRC-32, as zlib.crc32). */
unsigned int akvm_e1000_crc32(const uint8_t *data, size_t len)
{
	pthread_once(&crc_once, crc_init);
	uint32_t c = 0xFFFFFFFFu;
	while (len--)
		c = crc_table[(c ^ *data++) & 0xFF] ^ (c >> 8);
	return c ^ 0xFFFFFFFFu;
}

/* The translator's lock for the rest of this step: 0, or -1 when C cannot
 * translate now (no translator, or its translations changed since). */
static int hold(struct akvm_e1000_c *c)
{
	if (!c->translated)
		return 0;
	return c->x ? akvm_xlate_hold(c->x, &c->held) : -1;
}

/* The end of a step's memory accesses: before the lock is let go, and before a
 * frame is handed to the network (which may come back with a received one). */
static void let_go(struct akvm_e1000_c *c)
{
	if (c->x)
		akvm_xlate_let_go(c->x, &c->held);
}

#define RD 1
#define WR 2

/* [addr, addr + n) of the device's address space in host memory, in one
 * piece, for `access` (RD, WR or both: a descriptor is read, then its status
 * written), or NULL when C does not reach it (Python's to do: it translates
 * again, records a fault, or reports the bad address). */
static unsigned char *ram(struct akvm_e1000_c *c, uint64_t addr, uint64_t n, int access)
{
	uint64_t gpa = addr, span = n;

	if (c->translated) {
		if (hold(c))
			return NULL;
		for (int write = 0; write < 2; write++)
			if (access & (write ? WR : RD) &&
			    (c->x->translate(c->x->opaque, addr, write, &gpa, &span) || span < n))
				return NULL;
	}
	return akvm_ram(c->slots, c->nslots, gpa, n);
}

static void count(struct akvm_e1000 *s, unsigned int off, uint32_t n)
{
	uint32_t *v = &STAT(off);
	*v = *v > 0xFFFFFFFFu - n ? 0xFFFFFFFFu : *v + n;
}

static void count64(struct akvm_e1000 *s, unsigned int low, uint64_t n)
{
	uint64_t total = ((uint64_t)STAT(low + 4) << 32 | STAT(low)) + n;
	STAT(low) = (uint32_t)total;
	STAT(low + 4) = (uint32_t)(total >> 32);
}

static void count_size(struct akvm_e1000 *s, unsigned int base, size_t len)
{
	static const size_t bounds[] = { 64, 127, 255, 511, 1023 };
	unsigned int i = 0;
	while (i < 5 && len > bounds[i])
		i++;
	count(s, base + 4 * i, 1);
}

/* The statistics registers a good frame moves, one set each way. */
struct frame_counters {
	unsigned int good, total, good_octets, total_octets, multicast, broadcast, size64;
};
static const struct frame_counters tx_counters = {
	E1000_GPTC, E1000_TPT, E1000_GOTCL, E1000_TOTL, E1000_MPTC, E1000_BPTC, E1000_PTC64 };
static const struct frame_counters rx_counters = {
	E1000_GPRC, E1000_TPR, E1000_GORCL, E1000_TORL, E1000_MPRC, E1000_BPRC, E1000_PRC64 };

/* A good frame of len bytes (FCS not included) sent or received. */
static void count_frame(struct akvm_e1000 *s, const struct frame_counters *c,
			const uint8_t *frame, size_t len)
{
	size_t wire = (len < E1000_MIN_FRAME ? E1000_MIN_FRAME : len) + E1000_FCS_LEN;

	count(s, c->good, 1);
	count(s, c->total, 1);
	count64(s, c->good_octets, wire);
	count64(s, c->total_octets, wire);
	if (frame[0] & 1)
		count(s, memcmp(frame, "\xff\xff\xff\xff\xff\xff", 6) ? c->multicast : c->broadcast, 1);
	count_size(s, c->size64, wire);
}

/* Set causes; AKVM_NIC_IRQ when INTA# must rise (Python raises it). */
static int cause(struct akvm_e1000 *s, uint32_t bits)
{
	s->icr |= bits;
	return (s->icr & s->ims) && !s->intx ? AKVM_NIC_IRQ : 0;
}

/* A ring's descriptors, or 0 when Python must look at it (empty, or a
 * head or tail beyond it). */
static uint32_t ring_size(uint32_t len, uint32_t head, uint32_t tail)
{
	uint32_t n = len / 16;
	return !n || head >= n || tail >= n ? 0 : n;
}

/* The packets from TDH on that C can send, each gathered, its descriptors'
 * status written back (RS), TDH moved and counted; lock held. With out,
 * each is handed to the network (the lock released meanwhile); without,
 * each is copied into the frame queue for the backend's thread, until it is
 * full or a packet does not fit a slot. AKVM_NIC_PYTHON when a packet is
 * Python's to send (C stops before it); the causes to raise in *causes. */
static int gather(struct akvm_e1000_c *c, akvm_nic_out_fn out, void *ctx, uint32_t *causes)
{
	struct akvm_e1000 *s = &c->s;
	int moved = 0;

	while ((s->tctl & E1000_TCTL_EN) && s->bus_master && s->tdh != s->tdt) {
		uint32_t n = ring_size(s->tdlen, s->tdh, s->tdt);
		uint64_t base = (uint64_t)s->tdbah << 32 | s->tdbal;
		uint32_t i = s->tdh, len = 0, room = E1000_MAX_TX_PACKET;
		uint8_t *frame = c->frame;
		int eop = 0, rs = 0;
		if (!n)
			return AKVM_NIC_PYTHON;
		if (!out) {
			if (c->txq_head - c->txq_tail == E1000_TXQ_SLOTS)
				break;			/* full: the backend's thread goes on */
			frame = c->txq[c->txq_head % E1000_TXQ_SLOTS];
			room = E1000_TXQ_SLOT;
		}
		while (i != s->tdt && !eop) {
			/* writable: its status may be written back (RS) */
			uint64_t *d = (uint64_t *)ram(c, base + 16ull * i, 16, RD | WR);
			if (!d)
				return AKVM_NIC_PYTHON;
			uint64_t hi = d[1];
			uint32_t cmd = hi >> 24 & 0xFF, dlen;
			if (cmd & E1000_TXD_CMD_DEXT) {
				if ((hi >> 20 & 0xF) != E1000_TXD_DTYP_DATA ||
				    cmd & (E1000_TXD_CMD_IC | E1000_TXD_CMD_VLE) || (hi >> 40 & 0xFF))
					return AKVM_NIC_PYTHON;
				dlen = hi & 0xFFFFF;
			} else {
				if (cmd & (E1000_TXD_CMD_IC | E1000_TXD_CMD_VLE))
					return AKVM_NIC_PYTHON;
				dlen = hi & 0xFFFF;
			}
			if (len + dlen > room) {
				if (!out && len + dlen <= E1000_MAX_TX_PACKET)
					goto done;		/* too big for a slot: the thread sends it */
				return AKVM_NIC_PYTHON;
			}
			if (dlen) {
				const unsigned char *p = ram(c, d[0], dlen, RD);
				if (!p)
					return AKVM_NIC_PYTHON;
				memcpy(frame + len, p, dlen);
				len += dlen;
			}
			eop = cmd & E1000_TXD_CMD_EOP;
			i = (i + 1) % n;
		}
		if (!eop || len < 14)		/* a chain not ended yet (Python holds it), a runt */
			return AKVM_NIC_PYTHON;
		for (uint32_t j = s->tdh; j != i; j = (j + 1) % n) {
			/* mapped above; translated again (an IOTLB fill in between may have
			 * evicted it), it could fail where the guest changed its tables:
			 * then Python does the packet again (nothing sent, TDH not moved) */
			unsigned char *d = ram(c, base + 16ull * j, 16, RD | WR);
			if (!d)
				return AKVM_NIC_PYTHON;
			if (d[11] & E1000_TXD_CMD_RS) {
				d[12] = (d[12] & 0xF) | E1000_TXD_STAT_DD;
				rs = 1;
			}
		}
		s->tdh = i;
		moved = 1;
		if (rs)
			*causes |= E1000_ICR_TXDW;
		if (len < E1000_MIN_FRAME && s->tctl & E1000_TCTL_PSP) {
			memset(frame + len, 0, E1000_MIN_FRAME - len);
			len = E1000_MIN_FRAME;
		}
		count_frame(s, &tx_counters, frame, len);
		s->tx_frames++;
		if (!out) {
			c->txq_len[c->txq_head % E1000_TXQ_SLOTS] = len;
			c->txq_head++;
			continue;
		}
		let_go(c);
		pthread_mutex_unlock(&c->lock);
		out(ctx, frame, len);		/* may come back into akvm_e1000_rx() */
		pthread_mutex_lock(&c->lock);
		if (!s->native)
			break;
	}
done:
	if (moved && s->tdh == s->tdt)
		*causes |= E1000_ICR_TXQE;
	return AKVM_NIC_DONE;
}

int akvm_e1000_tx(void *opaque, akvm_nic_out_fn out, void *ctx, int polling)
{
	(void)polling;				/* a TDT write always exits: nothing to leave off */
	struct akvm_e1000_c *c = opaque;
	struct akvm_e1000 *s = &c->s;
	int code = AKVM_NIC_DONE;
	uint32_t causes = 0;

	pthread_mutex_lock(&c->lock);
	while (c->txq_tail != c->txq_head) {		/* what the vCPU gathered, in order */
		unsigned int slot = c->txq_tail % E1000_TXQ_SLOTS;
		pthread_mutex_unlock(&c->lock);
		out(ctx, c->txq[slot], c->txq_len[slot]);
		pthread_mutex_lock(&c->lock);
		c->txq_tail++;
	}
	if (s->tx_stopped)
		;				/* until the guest writes TDT again */
	else if (!s->native || s->python_tx || s->python_rx)
		code = AKVM_NIC_PYTHON;
	else
		code = gather(c, out, ctx, &causes);
	let_go(c);
	if (causes)
		cause(s, causes);
	if ((s->icr & s->ims) && !s->intx)
		code |= AKVM_NIC_IRQ;
	pthread_mutex_unlock(&c->lock);
	return code;
}

/* _accepts(): the destination filters. */
static int accepts(const struct akvm_e1000 *s, const uint8_t *dst)
{
	if (dst[0] & 1) {
		if (!memcmp(dst, "\xff\xff\xff\xff\xff\xff", 6))
			return !!(s->rctl & (E1000_RCTL_BAM | E1000_RCTL_MPE));
		if (s->rctl & E1000_RCTL_MPE)
			return 1;
		static const int shifts[] = { 4, 3, 2, 0 };
		int shift = shifts[s->rctl >> E1000_RCTL_MO_SHIFT & 3];
		uint32_t h = (dst[4] >> shift | (uint32_t)dst[5] << (8 - shift)) & 0xFFF;
		return s->mta[h >> 5] >> (h & 31) & 1;
	}
	if (s->rctl & E1000_RCTL_UPE)
		return 1;
	uint32_t lo = dst[0] | dst[1] << 8 | dst[2] << 16 | (uint32_t)dst[3] << 24;
	uint32_t hi = dst[4] | dst[5] << 8;
	for (int i = 0; i < E1000_RAL_COUNT; i++)
		if (s->ra[i][1] & E1000_RAH_AV && s->ra[i][0] == lo && (s->ra[i][1] & 0xFFFF) == hi)
			return 1;
	return 0;
}

static uint32_t buffer_size(uint32_t rctl)
{
	static const uint32_t normal[] = { 2048, 1024, 512, 256 }, extended[] = { 16384, 16384, 8192, 4096 };
	uint32_t b = rctl >> E1000_RCTL_BSIZE_SHIFT & 3;
	return rctl & E1000_RCTL_BSEX ? extended[b] : normal[b];
}

int akvm_e1000_rx(void *opaque, const uint8_t *frame, size_t flen)
{
	struct akvm_e1000_c *c = opaque;
	struct akvm_e1000 *s = &c->s;
	int code = AKVM_NIC_DONE;

	pthread_mutex_lock(&c->lock);
	if (!s->native || s->rctl & E1000_RCTL_VFE) {
		code = AKVM_NIC_PYTHON;
		goto out;
	}
	if (s->python_rx) {			/* behind the frame Python holds */
		s->rx_waiting = 1;
		code = AKVM_NIC_FULL;
		goto out;
	}
	if (!(s->rctl & E1000_RCTL_EN) || !s->link_up || flen < 14)
		goto out;			/* the receiver is off: lost on the wire */
	if (!s->bus_master) {
		s->rx_waiting = 1;
		code = AKVM_NIC_FULL;
		goto out;
	}
	if (!accepts(s, frame))
		goto out;
	size_t limit = s->rctl & E1000_RCTL_LPE ? E1000_MAX_RX_LONG : E1000_MAX_RX_NORMAL;
	if (flen + E1000_FCS_LEN > limit && !(s->rctl & E1000_RCTL_SBP)) {
		count(s, E1000_ROC, 1);
		s->rx_dropped++;
		goto out;
	}
	if (flen > E1000_MAX_RX_LONG) {
		code = AKVM_NIC_PYTHON;		/* past any buffer here: Python's to judge */
		goto out;
	}
	size_t len = flen < E1000_MIN_FRAME ? E1000_MIN_FRAME : flen;
	memcpy(c->rx, frame, flen);
	memset(c->rx + flen, 0, len - flen);
	if (!(s->rctl & E1000_RCTL_SECRC)) {
		uint32_t fcs = akvm_e1000_crc32(c->rx, len);
		memcpy(c->rx + len, &fcs, 4);	/* little-endian, as on the wire */
		len += E1000_FCS_LEN;
	}
	uint32_t bsize = buffer_size(s->rctl), need = (uint32_t)((len + bsize - 1) / bsize);
	uint32_t n = ring_size(s->rdlen, s->rdh, s->rdt);
	if (!n || need > n - 1 || need > MAX_PIECES) {
		code = AKVM_NIC_PYTHON;
		goto out;
	}
	uint32_t free_now = (s->rdt + n - s->rdh) % n;
	if (free_now < need) {
		if (!s->rx_full)
			count(s, E1000_RNBC, 1);
		s->rx_full = 1;
		s->rx_waiting = 1;
		code = AKVM_NIC_FULL;
		goto out;
	}
	uint64_t base = (uint64_t)s->rdbah << 32 | s->rdbal;
	unsigned char *desc[MAX_PIECES], *buf[MAX_PIECES];
	for (uint32_t k = 0; k < need; k++) {
		uint32_t piece = len - k * bsize < bsize ? (uint32_t)(len - k * bsize) : bsize;
		desc[k] = ram(c, base + 16ull * ((s->rdh + k) % n), 16, RD | WR);
		uint64_t addr;
		if (desc[k])
			memcpy(&addr, desc[k], 8);
		if (!desc[k] || !(buf[k] = ram(c, addr, piece, WR))) {
			code = AKVM_NIC_PYTHON;	/* Python reports it and drops the frame */
			goto out;
		}
	}
	for (uint32_t k = 0; k < need; k++) {
		uint32_t piece = len - k * bsize < bsize ? (uint32_t)(len - k * bsize) : bsize;
		memcpy(buf[k], c->rx + k * bsize, piece);
		uint16_t length = (uint16_t)piece;
		unsigned char status = E1000_RXD_STAT_DD | E1000_RXD_STAT_IXSM |
				       (k == need - 1 ? E1000_RXD_STAT_EOP : 0);
		memcpy(desc[k] + 8, &length, 2);
		memset(desc[k] + 10, 0, 2);		/* checksum */
		__atomic_store_n(desc[k] + 13, 0, __ATOMIC_RELAXED);	/* errors */
		memset(desc[k] + 14, 0, 2);		/* special */
		__atomic_store_n(desc[k] + 12, status, __ATOMIC_RELEASE);
	}
	s->rdh = (s->rdh + need) % n;
	s->rx_full = 0;
	s->rx_frames++;
	count_frame(s, &rx_counters, frame, flen);
	uint32_t causes = E1000_ICR_RXT0;
	if ((s->rdt + n - s->rdh) % n <= n >> ((s->rctl >> E1000_RCTL_RDMTS_SHIFT & 3) + 1))
		causes |= E1000_ICR_RXDMT0;
	code |= cause(s, causes);
out:
	let_go(c);
	pthread_mutex_unlock(&c->lock);
	return code;
}

/* TDT and RDT writes while C serves the rings: stored, and the backend's
 * thread woken; anything else (or not native) is Python's. */
int akvm_e1000_exit(void *opaque, void *kvm_run)
{
	struct akvm_e1000_c *c = opaque;
	struct kvm_run *run = kvm_run;
	uint32_t value;
	int fd;

	if (run->exit_reason != KVM_EXIT_MMIO || !run->mmio.is_write || run->mmio.len != 4)
		return 0;
	pthread_mutex_lock(&c->lock);
	uint64_t off = run->mmio.phys_addr - c->s.bar;
	if (!c->s.native || (off != E1000_TDT && off != E1000_RDT)) {
		pthread_mutex_unlock(&c->lock);
		return 0;
	}
	memcpy(&value, run->mmio.data, 4);
	int wake = 1;
	if (off == E1000_TDT) {
		c->s.tdt = value & 0xFFFF;
		c->s.tx_stopped = 0;
		if (c->s.python_tx || c->s.python_rx) {
			/* Python's turn: the thread takes it */
		} else if (c->turn && c->turn(c->engine) == 0) {
			wake = 0;			/* sent, here; the backend woke its thread if it must */
			c->s.direct++;
		} else {				/* as the hardware would: at once */
			uint32_t causes = 0;
			gather(c, NULL, NULL, &causes);
			let_go(c);
			c->s.icr |= causes;		/* the thread raises INTA# if it must */
		}
	} else {
		c->s.rdt = value & 0xFFFF;
		wake = c->s.rx_waiting;		/* nothing waits for room: nothing to do */
		c->s.rx_waiting = 0;
	}
	c->s.exits++;
	fd = c->s.kick_fd;
	pthread_mutex_unlock(&c->lock);
	uint64_t one = 1;
	if (wake && write(fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		return 1;
	return 1;
}

/* The i-th frame the vCPU gathered that the backend's thread has not sent yet, for a
 * snapshot taken with that thread held between turns (none is half sent): copied into
 * out (E1000_TXQ_SLOT bytes), its length returned; -1 past the last. */
int akvm_e1000_queued(struct akvm_e1000_c *c, unsigned int i, uint8_t *out)
{
	int len = -1;

	pthread_mutex_lock(&c->lock);
	if (i < c->txq_head - c->txq_tail) {
		unsigned int slot = (c->txq_tail + i) % E1000_TXQ_SLOTS;
		len = (int)c->txq_len[slot];
		memcpy(out, c->txq[slot], len);
	}
	pthread_mutex_unlock(&c->lock);
	return len;
}

/* nicport.h's attach(): once it returns, no vCPU is inside the turn it replaced. */
void akvm_e1000_attach(void *opaque, akvm_nic_turn_fn turn, void *engine)
{
	struct akvm_e1000_c *c = opaque;

	pthread_mutex_lock(&c->lock);
	c->turn = turn;
	c->engine = engine;
	pthread_mutex_unlock(&c->lock);
}

struct akvm_e1000_c *akvm_e1000_new(void)
{
	struct akvm_e1000_c *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	pthread_mutexattr_t attr;
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&c->lock, &attr);
	pthread_mutexattr_destroy(&attr);
	c->s.kick_fd = -1;
	return c;
}

void akvm_e1000_free(struct akvm_e1000_c *c)
{
	if (!c)
		return;
	pthread_mutex_destroy(&c->lock);
	free(c);
}

void akvm_e1000_use_ram(struct akvm_e1000_c *c, const struct akvm_mem_slot *slots,
			unsigned int nslots)
{
	pthread_mutex_lock(&c->lock);
	c->slots = slots;
	c->nslots = nslots;
	pthread_mutex_unlock(&c->lock);
}

void akvm_e1000_use_xlate(struct akvm_e1000_c *c, const struct akvm_dma_xlate *x)
{
	pthread_mutex_lock(&c->lock);
	c->x = x;
	c->translated = 1;
	pthread_mutex_unlock(&c->lock);
}

struct akvm_e1000 *akvm_e1000_state(struct akvm_e1000_c *c) { return &c->s; }
void akvm_e1000_lock(struct akvm_e1000_c *c) { pthread_mutex_lock(&c->lock); }
void akvm_e1000_unlock(struct akvm_e1000_c *c) { pthread_mutex_unlock(&c->lock); }
