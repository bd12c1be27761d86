/* The I/OAT channel's descriptor engine in C: the twin of
 * akvm.devices.ioat.run_python() for DMA that reaches guest RAM directly or
 * through a C translator (dmaxlate.h).
 *
 * From `next`, while the count of completed descriptors differs from
 * DMACOUNT (16-bit, re-read after every descriptor, so appends while it
 * runs are taken): fetch a descriptor, check it, copy it in chunks of
 * AKVM_IOAT_CHUNK, write CHANSTS to CHANCMP if asked, advance. A
 * descriptor's memory is mapped whole (host pieces, one per run of pages
 * that are contiguous in the host) before its first byte moves, so a
 * transfer is done entirely or not at all; each chunk is copied as if
 * through a buffer (memmove semantics), as Python copies it. Errors set
 * CHANERR and halt the channel (with the error completion write if CHANCTRL
 * asks for it). Anything outside guest RAM or not translated here is
 * Python's (AKVM_IOAT_PYTHON), before any effect of that step: Python does
 * it through the DmaSpace, failing it or recording an IOMMU fault.
 *
 * The caller holds no channel lock while this runs. A vCPU may meanwhile
 * write `dmacount` and `stop` (read atomically here) and clear CHANERR bits
 * (akvm_ioat_chanerr()); everything else is the engine's until it returns.
 * With a translator, its lock is held from a descriptor's fetch to its
 * completion write: an IOMMU invalidation waits for the descriptor. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ioat.h"

struct piece {
	unsigned char *p;
	uint64_t n;
};

struct mem {
	const struct akvm_mem_slot *slots;
	unsigned int nslots;
	const struct akvm_dma_xlate *x;
	int locked;
	unsigned char *bounce;		/* a chunk, for copies whose pieces overlap */
};

static uint32_t le32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static uint64_t le64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

/* CHANSTS as a vCPU may read it at any time: one store. */
static void set_chansts(struct akvm_ioat_chan *ch, uint64_t sts)
{
	__atomic_store_n(&ch->chansts, sts, __ATOMIC_RELEASE);
}

static int stopping(struct akvm_ioat_chan *ch)
{
	return __atomic_load_n(&ch->stop, __ATOMIC_ACQUIRE);
}

unsigned int akvm_ioat_chanerr(struct akvm_ioat_chan *ch, unsigned int set, unsigned int clear)
{
	if (set)
		__atomic_fetch_or(&ch->chanerr, set, __ATOMIC_ACQ_REL);
	if (clear)
		__atomic_fetch_and(&ch->chanerr, ~clear, __ATOMIC_ACQ_REL);
	return __atomic_load_n(&ch->chanerr, __ATOMIC_ACQUIRE);
}

/* The translator's lock, for one descriptor: 0, or -1 when its translations
 * may have changed since it was handed out (then nothing is held). */
static int hold(struct mem *m)
{
	return m->x ? akvm_xlate_hold(m->x, &m->locked) : 0;
}

static void let_go(struct mem *m)
{
	if (m->x)
		akvm_xlate_let_go(m->x, &m->locked);
}

/* [addr, addr + len) as host pieces: their number, or -1 when some of it is
 * not guest RAM reached here (a translation missing, or more pieces). */
static int map(const struct mem *m, uint64_t addr, uint64_t len, int write, struct piece *out,
	       unsigned int max)
{
	unsigned int k = 0;

	if (addr + len < addr)
		return -1;
	while (len) {
		uint64_t gpa = addr, span = len;
		if (m->x && m->x->translate(m->x->opaque, addr, write, &gpa, &span))
			return -1;
		if (span > len)
			span = len;
		unsigned char *h = akvm_ram(m->slots, m->nslots, gpa, span);
		if (!h || !span)
			return -1;
		if (k && out[k - 1].p + out[k - 1].n == h) {
			out[k - 1].n += span;
		} else {
			if (k == max)
				return -1;
			out[k++] = (struct piece){ h, span };
		}
		addr += span;
		len -= span;
	}
	return (int)k;
}

/* Bytes [off, off + n) of a transfer in pieces, as pieces. */
static unsigned int slice(const struct piece *in, unsigned int count, uint64_t off, uint64_t n,
			  struct piece *out)
{
	unsigned int k = 0;

	for (unsigned int i = 0; i < count && n; i++) {
		if (off >= in[i].n) {
			off -= in[i].n;
			continue;
		}
		uint64_t take = in[i].n - off < n ? in[i].n - off : n;
		out[k++] = (struct piece){ in[i].p + off, take };
		n -= take;
		off = 0;
	}
	return k;
}

static int overlap(const struct piece *a, unsigned int na, const struct piece *b, unsigned int nb)
{
	for (unsigned int i = 0; i < na; i++)
		for (unsigned int j = 0; j < nb; j++)
			if (a[i].p < b[j].p + b[j].n && b[j].p < a[i].p + a[i].n)
				return 1;
	return 0;
}

/* One chunk, as if through a buffer. 0, or -1 when no buffer could be had. */
static int copy_chunk(struct mem *m, const struct piece *dst, unsigned int nd,
		      const struct piece *src, unsigned int ns, uint64_t off, uint64_t n)
{
	struct piece s[AKVM_IOAT_MAX_PIECES], d[AKVM_IOAT_MAX_PIECES];
	unsigned int cs = slice(src, ns, off, n, s), cd = slice(dst, nd, off, n, d);

	if (cs == 1 && cd == 1) {
		memmove(d[0].p, s[0].p, n);
		return 0;
	}
	if (overlap(s, cs, d, cd)) {
		if (!m->bounce && !(m->bounce = malloc(AKVM_IOAT_CHUNK)))
			return -1;
		uint64_t at = 0;
		for (unsigned int i = 0; i < cs; i++) {
			memcpy(m->bounce + at, s[i].p, s[i].n);
			at += s[i].n;
		}
		at = 0;
		for (unsigned int i = 0; i < cd; i++) {
			memcpy(d[i].p, m->bounce + at, d[i].n);
			at += d[i].n;
		}
		return 0;
	}
	unsigned int i = 0, j = 0;
	uint64_t si = 0, dj = 0;
	while (i < cs && j < cd) {
		uint64_t take = s[i].n - si < d[j].n - dj ? s[i].n - si : d[j].n - dj;
		memcpy(d[j].p + dj, s[i].p + si, take);
		si += take;
		dj += take;
		if (si == s[i].n)
			i++, si = 0;
		if (dj == d[j].n)
			j++, dj = 0;
	}
	return 0;
}

/* Write 8 bytes (the completion), after the data it reports (x86 keeps
 * stores in order); -1 when the address is not reached here. */
static int write_completion(struct mem *m, uint64_t addr, uint64_t sts)
{
	struct piece p[8];
	int k = map(m, addr, 8, 1, p, 8);

	if (k < 0)
		return -1;
	unsigned char b[8];
	memcpy(b, &sts, 8);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	for (int i = 0, at = 0; i < k; i++) {
		memcpy(p[i].p, b + at, p[i].n);
		at += p[i].n;
	}
	return 0;
}

/* Halt with `bits`; the loaded descriptor, if any, is dropped and `next`
 * stays where the failure was. PYTHON, with nothing changed, when the
 * error completion write cannot be made here. */
static int fail(struct akvm_ioat_chan *ch, struct mem *m, unsigned int bits)
{
	uint64_t sts = (ch->chansts & AKVM_IOAT_CHANSTS_ADDR_MASK) | AKVM_IOAT_HALTED;

	if ((ch->chanctrl & AKVM_IOAT_CHANCTRL_ERR_COMPLETION_EN) &&
	    (hold(m) || write_completion(m, ch->chancmp, sts)))
		return AKVM_IOAT_PYTHON;
	ch->loaded = 0;
	set_chansts(ch, sts);
	akvm_ioat_chanerr(ch, bits, 0);
	return AKVM_IOAT_ERROR;
}

/* Fetch and check the descriptor at `next`: 0 when it is loaded. */
static int fetch(struct akvm_ioat_chan *ch, struct mem *m)
{
	if (ch->next % AKVM_IOAT_DESC_ALIGN)
		return fail(ch, m, ch->from_chainaddr ? AKVM_IOAT_CHANERR_CHAIN_ADDR_VALUE_ERR
			    : AKVM_IOAT_CHANERR_NEXT_DESC_ALIGN_ERR);
	struct piece p[1];
	if (map(m, ch->next, AKVM_IOAT_DESC_READ, 0, p, 1) != 1)
		return AKVM_IOAT_PYTHON;	/* 64-byte aligned: one page, one piece */
	unsigned char d[AKVM_IOAT_DESC_READ];
	memcpy(d, p[0].p, sizeof(d));	/* the guest may change it meanwhile: one look */
	uint32_t size = le32(d + AKVM_IOAT_DESC_SIZE_OFF), ctl = le32(d + AKVM_IOAT_DESC_CTL_OFF);
	if (!(ctl & AKVM_IOAT_CTL_NULL)) {
		if (ctl >> AKVM_IOAT_CTL_OP_SHIFT != AKVM_IOAT_OP_COPY)
			return fail(ch, m, AKVM_IOAT_CHANERR_CONTROL_ERR);
		if (size == 0 || size > 1ull << ch->xfercap)
			return fail(ch, m, AKVM_IOAT_CHANERR_LENGTH_ERR);
	}
	ch->cur = ch->next;
	ch->size = size;
	ch->ctl = ctl;
	ch->src = le64(d + AKVM_IOAT_DESC_SRC_OFF);
	ch->dst = le64(d + AKVM_IOAT_DESC_DST_OFF);
	ch->link = le64(d + AKVM_IOAT_DESC_NEXT_OFF);
	ch->done = 0;
	ch->loaded = 1;
	return 0;
}

/* The loaded descriptor from where it was, as far as the budget goes. */
static int step(struct akvm_ioat_chan *ch, struct mem *m, uint64_t *round_bytes,
		uint64_t max_bytes)
{
	if (!(ch->ctl & AKVM_IOAT_CTL_NULL) && ch->done < ch->size) {
		struct piece src[AKVM_IOAT_MAX_PIECES], dst[AKVM_IOAT_MAX_PIECES];
		int ns = map(m, ch->src, ch->size, 0, src, AKVM_IOAT_MAX_PIECES);
		int nd = ns < 0 ? -1 : map(m, ch->dst, ch->size, 1, dst, AKVM_IOAT_MAX_PIECES);
		if (nd < 0)
			return AKVM_IOAT_PYTHON;
		while (ch->done < ch->size) {
			if (stopping(ch))
				return AKVM_IOAT_STOPPED;
			if (*round_bytes >= max_bytes)
				return AKVM_IOAT_ROUND;
			uint64_t n = ch->size - ch->done;
			if (n > AKVM_IOAT_CHUNK)
				n = AKVM_IOAT_CHUNK;
			if (copy_chunk(m, dst, nd, src, ns, ch->done, n))
				return AKVM_IOAT_PYTHON;
			ch->done += n;
			ch->bytes += n;
			*round_bytes += n;
		}
	}
	unsigned int count = (ch->count + 1) & 0xFFFF;
	int more = count != (__atomic_load_n(&ch->dmacount, __ATOMIC_ACQUIRE) & 0xFFFF);
	uint64_t sts = ch->cur | (more ? AKVM_IOAT_ACTIVE : AKVM_IOAT_IDLE);
	if ((ch->ctl & AKVM_IOAT_CTL_COMPL_WRITE) && write_completion(m, ch->chancmp, sts))
		return AKVM_IOAT_PYTHON;
	set_chansts(ch, sts);
	ch->count = count;
	ch->next = ch->link;
	ch->from_chainaddr = 0;
	ch->loaded = 0;
	ch->descriptors++;
	return ch->ctl & AKVM_IOAT_CTL_INT_EN ? AKVM_IOAT_INTERRUPT : 0;
}

static int run(struct akvm_ioat_chan *ch, struct mem *m, uint64_t max_bytes,
	       unsigned int max_descriptors)
{
	uint64_t round_bytes = 0;
	unsigned int round_descriptors = 0;

	for (;;) {
		let_go(m);		/* between descriptors: invalidations may go in */
		if (stopping(ch))
			return AKVM_IOAT_STOPPED;
		if (!ch->loaded) {
			if (ch->count == (__atomic_load_n(&ch->dmacount, __ATOMIC_ACQUIRE) & 0xFFFF)) {
				set_chansts(ch, (ch->chansts & AKVM_IOAT_CHANSTS_ADDR_MASK) | AKVM_IOAT_IDLE);
				return AKVM_IOAT_DONE;
			}
			if (round_bytes >= max_bytes || round_descriptors >= max_descriptors)
				return AKVM_IOAT_ROUND;
			if (hold(m))
				return AKVM_IOAT_PYTHON;
			int r = fetch(ch, m);
			if (r)
				return r;
			round_descriptors++;
		} else if (hold(m)) {
			return AKVM_IOAT_PYTHON;
		}
		int r = step(ch, m, &round_bytes, max_bytes);
		if (r)
			return r;
	}
}

int akvm_ioat_run(struct akvm_ioat_chan *ch, const struct akvm_mem_slot *slots,
		  unsigned int nslots, const struct akvm_dma_xlate *x,
		  unsigned long long max_bytes, unsigned int max_descriptors)
{
	struct mem m = { slots, nslots, x, 0, NULL };
	int r = run(ch, &m, max_bytes, max_descriptors);

	let_go(&m);
	free(m.bounce);
	return r;
}
