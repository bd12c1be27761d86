/* The I/OAT channel's descriptor engine in C: the twin of
 * akvm.devices.ioat.run_python() for DMA that reaches guest RAM directly.
 *
 * From `next`, while the count of completed descriptors differs from
 * DMACOUNT (16-bit, re-read after every descriptor, so appends while it
 * runs are taken): fetch a descriptor, check it, copy it in chunks of
 * AKVM_IOAT_CHUNK (memmove), write CHANSTS to CHANCMP if asked, advance.
 * A descriptor's memory is checked whole before its first byte moves, so
 * a transfer is done entirely or not at all. Errors set CHANERR and halt
 * the channel (with the error completion write if CHANCTRL asks for it).
 * Anything outside guest RAM is Python's (AKVM_IOAT_PYTHON), before any
 * effect of that step: Python fails it through the DmaSpace, recording an
 * IOMMU fault where there is one.
 *
 * The caller holds no lock while this runs. A vCPU may meanwhile write
 * `dmacount` and `stop` (read atomically here) and clear CHANERR bits
 * (akvm_ioat_chanerr()); everything else is the engine's until it returns. */
#include <stdint.h>
#include <string.h>

#include "ioat.h"

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

/* A completion write: after the data it reports (x86 keeps stores in order). */
static void write_completion(unsigned char *p, uint64_t sts)
{
	__atomic_thread_fence(__ATOMIC_RELEASE);
	memcpy(p, &sts, sizeof(sts));
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

/* Halt with `bits`; the loaded descriptor, if any, is dropped and `next`
 * stays where the failure was. PYTHON, with nothing changed, when the
 * error completion write cannot be made here. */
static int fail(struct akvm_ioat_chan *ch, unsigned int bits, const struct akvm_mem_slot *slots,
		unsigned int nslots)
{
	uint64_t sts = (ch->chansts & AKVM_IOAT_CHANSTS_ADDR_MASK) | AKVM_IOAT_HALTED;

	if (ch->chanctrl & AKVM_IOAT_CHANCTRL_ERR_COMPLETION_EN) {
		unsigned char *p = akvm_ram(slots, nslots, ch->chancmp, 8);

		if (!p)
			return AKVM_IOAT_PYTHON;
		write_completion(p, sts);
	}
	ch->loaded = 0;
	set_chansts(ch, sts);
	akvm_ioat_chanerr(ch, bits, 0);
	return AKVM_IOAT_ERROR;
}

/* Fetch and check the descriptor at `next`: 0 when it is loaded. */
static int fetch(struct akvm_ioat_chan *ch, const struct akvm_mem_slot *slots, unsigned int nslots)
{
	if (ch->next % AKVM_IOAT_DESC_ALIGN)
		return fail(ch, ch->from_chainaddr ? AKVM_IOAT_CHANERR_CHAIN_ADDR_VALUE_ERR
			    : AKVM_IOAT_CHANERR_NEXT_DESC_ALIGN_ERR, slots, nslots);
	const unsigned char *p = akvm_ram(slots, nslots, ch->next, AKVM_IOAT_DESC_READ);
	if (!p)
		return AKVM_IOAT_PYTHON;
	unsigned char d[AKVM_IOAT_DESC_READ];
	memcpy(d, p, sizeof(d));	/* the guest may change it meanwhile: one look */
	uint32_t size = le32(d + AKVM_IOAT_DESC_SIZE_OFF), ctl = le32(d + AKVM_IOAT_DESC_CTL_OFF);
	if (!(ctl & AKVM_IOAT_CTL_NULL)) {
		if (ctl >> AKVM_IOAT_CTL_OP_SHIFT != AKVM_IOAT_OP_COPY)
			return fail(ch, AKVM_IOAT_CHANERR_CONTROL_ERR, slots, nslots);
		if (size == 0 || size > 1ull << ch->xfercap)
			return fail(ch, AKVM_IOAT_CHANERR_LENGTH_ERR, slots, nslots);
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

int akvm_ioat_run(struct akvm_ioat_chan *ch, const struct akvm_mem_slot *slots,
		  unsigned int nslots)
{
	uint64_t round_bytes = 0;
	unsigned int round_descriptors = 0;

	for (;;) {
		if (stopping(ch))
			return AKVM_IOAT_STOPPED;
		if (!ch->loaded) {
			if (ch->count == (__atomic_load_n(&ch->dmacount, __ATOMIC_ACQUIRE) & 0xFFFF)) {
				set_chansts(ch, (ch->chansts & AKVM_IOAT_CHANSTS_ADDR_MASK) | AKVM_IOAT_IDLE);
				return AKVM_IOAT_DONE;
			}
			if (round_bytes >= AKVM_IOAT_ROUND_BYTES ||
			    round_descriptors >= AKVM_IOAT_ROUND_DESCRIPTORS)
				return AKVM_IOAT_ROUND;
			int r = fetch(ch, slots, nslots);
			if (r)
				return r;
			round_descriptors++;
		}
		if (!(ch->ctl & AKVM_IOAT_CTL_NULL) && ch->done < ch->size) {
			const unsigned char *src = akvm_ram(slots, nslots, ch->src, ch->size);
			unsigned char *dst = akvm_ram(slots, nslots, ch->dst, ch->size);
			if (!src || !dst)
				return AKVM_IOAT_PYTHON;
			while (ch->done < ch->size) {
				if (stopping(ch))
					return AKVM_IOAT_STOPPED;
				uint64_t n = ch->size - ch->done;
				if (n > AKVM_IOAT_CHUNK)
					n = AKVM_IOAT_CHUNK;
				memmove(dst + ch->done, src + ch->done, n);
				ch->done += n;
				ch->bytes += n;
				round_bytes += n;
			}
		}
		unsigned int count = (ch->count + 1) & 0xFFFF;
		int more = count != (__atomic_load_n(&ch->dmacount, __ATOMIC_ACQUIRE) & 0xFFFF);
		uint64_t sts = ch->cur | (more ? AKVM_IOAT_ACTIVE : AKVM_IOAT_IDLE);
		if (ch->ctl & AKVM_IOAT_CTL_COMPL_WRITE) {
			unsigned char *p = akvm_ram(slots, nslots, ch->chancmp, 8);
			if (!p)
				return AKVM_IOAT_PYTHON;
			write_completion(p, sts);
		}
		set_chansts(ch, sts);
		ch->count = count;
		ch->next = ch->link;
		ch->from_chainaddr = 0;
		ch->loaded = 0;
		ch->descriptors++;
		if (ch->ctl & AKVM_IOAT_CTL_INT_EN)
			return AKVM_IOAT_INTERRUPT;
	}
}
