/* Where a NIC's data path in C (akvm.base._native: devices/virtio/netq.c,
 * devices/e1000.c) meets a network backend's loop in C (akvm.devices._slirp,
 * built from devices/slirp_build.py): two functions and the NIC's state,
 * passed as pointers, since the two live in different extension modules.
 * Both run on the backend's thread; the NIC's functions take its own lock.
 *
 * A NIC whose guest writes a doorbell (e1000's TDT) may also run the
 * backend's turn on the vCPU thread that wrote it (turn(), handed over by
 * attach()), as QEMU calls libslirp on its vCPU thread: a frame then reaches
 * the network, and what the network answers at once (a TCP ACK) the guest's
 * ring, without waking a second thread. The backend serialises turn() with
 * its own thread by a lock it only tries, so a vCPU never waits for it.
 * Lock order: the backend's lock, then the NIC's; a NIC calls turn() with
 * its own lock held (the backend then only tries its lock), and attach()
 * takes the NIC's lock, so once it returns no vCPU is inside the old turn(). */
#ifndef AKVM_NICPORT_H
#define AKVM_NICPORT_H

#ifndef AKVM_CDEF
#include <stddef.h>
#include <stdint.h>
#endif

/* out(ctx, frame, len): one frame the guest sent, for the network. */
typedef void (*akvm_nic_out_fn)(void *ctx, const uint8_t *frame, size_t len);
/* tx(nic, out, ctx, polling): take every frame the guest queued, each through
 * out(). polling: the caller polls on for a while, notified or not, so a NIC
 * whose guest need not notify (virtio's notification suppression) may leave
 * notifications off when its queue is empty (and say AKVM_NIC_POLL). */
typedef int (*akvm_nic_tx_fn)(void *nic, akvm_nic_out_fn out, void *ctx, int polling);
/* rx(nic, frame, len): give the guest one frame from the network. */
typedef int (*akvm_nic_rx_fn)(void *nic, const uint8_t *frame, size_t len);

/* turn(engine): the backend's turn for the NIC now, on a vCPU thread, with
 * the NIC's lock held: its tx() and what the network answers at once. 0: done;
 * -1: not now (the backend's thread is busy or held): the NIC leaves the
 * work to that thread as it would without turn(). */
typedef int (*akvm_nic_turn_fn)(void *engine);
/* attach(nic, turn, engine): the turn a vCPU may call (turn NULL: none). */
typedef void (*akvm_nic_attach_fn)(void *nic, akvm_nic_turn_fn turn, void *engine);

/* What tx() and rx() return (rx: placed, or dropped and counted; tx: done) */
#define AKVM_NIC_DONE 0
#define AKVM_NIC_FULL 1		/* rx: no room now: the caller holds the frame */
#define AKVM_NIC_PYTHON 2	/* Python's to do: the frame (rx), the rest of the ring (tx) */
#define AKVM_NIC_IRQ 4		/* ORed in: the guest wants an interrupt, Python sends it */
#define AKVM_NIC_AGAIN 8	/* ORed in by tx: call again soon, even unasked (the guest
				 * need not notify while it keeps sending) */
#define AKVM_NIC_POLL 16	/* ORed in by tx(polling): nothing queued, and the guest
				 * was told not to notify: before the caller stops
				 * polling, one more tx() without polling turns
				 * notifications back on */

#endif
