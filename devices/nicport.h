/* Where a NIC's data path in C (akvm.base._native: devices/virtio/netq.c,
 * devices/e1000.c) meets a network backend's loop in C (akvm.devices._slirp,
 * built from devices/slirp_build.py): two functions and the NIC's state,
 * passed as pointers, since the two live in different extension modules.
 * Both run on the backend's thread; the NIC's functions take its own lock. */
#ifndef AKVM_NICPORT_H
#define AKVM_NICPORT_H

#ifndef AKVM_CDEF
#include <stddef.h>
#include <stdint.h>
#endif

/* out(ctx, frame, len): one frame the guest sent, for the network. */
typedef void (*akvm_nic_out_fn)(void *ctx, const uint8_t *frame, size_t len);
/* tx(nic, out, ctx): take every frame the guest queued, each through out(). */
typedef int (*akvm_nic_tx_fn)(void *nic, akvm_nic_out_fn out, void *ctx);
/* rx(nic, frame, len): give the guest one frame from the network. */
typedef int (*akvm_nic_rx_fn)(void *nic, const uint8_t *frame, size_t len);

/* What tx() and rx() return (rx: placed, or dropped and counted; tx: done) */
#define AKVM_NIC_DONE 0
#define AKVM_NIC_FULL 1		/* rx: no room now: the caller holds the frame */
#define AKVM_NIC_PYTHON 2	/* Python's to do: the frame (rx), the rest of the ring (tx) */
#define AKVM_NIC_IRQ 4		/* ORed in: the guest wants an interrupt, Python sends it */
#define AKVM_NIC_AGAIN 8	/* ORed in by tx: call again soon, even unasked (the guest
				 * need not notify while it keeps sending) */

#endif
