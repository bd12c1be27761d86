#ifndef AKVM_NETQ_H
#define AKVM_NETQ_H

#include "guestram.h"
#include "nicport.h"

/* virtio-net's two queues served in C (netq.c) for a device whose DMA is
 * direct, on a backend's thread (devices/nicport.h): the twin of
 * VirtioNet.handle() and VirtioNet.receive() in akvm.devices.virtio.net.
 * Python hands the queues' state over (akvm_vnetq_new) and takes it back
 * (akvm_vnetq_state) after akvm_vnetq_stop(), which returns once C will
 * not touch guest memory again. What C cannot do as Python would (a broken
 * chain, a ring word outside RAM, a receive chain without room for its
 * frame's header) it leaves untouched and gives the queues back: tx/rx
 * return AKVM_NIC_PYTHON from then on. */
#define AKVM_NETQ_HDR 12		/* struct virtio_net_hdr with VIRTIO_F_VERSION_1 */
#define AKVM_NETQ_MAX_FRAME (65536 + 14)
#define AKVM_NETQ_MAX_SEGS 256
struct akvm_netq_ring {
	unsigned long long desc, driver, device;	/* an activated Virtqueue's */
	unsigned int size;
	unsigned int last_avail, used_idx;		/* in and out */
	int signalled_used;				/* in and out; -1: none yet */
	int irq;					/* out: the driver wants an interrupt */
};
struct akvm_netq_config {
	int indirect, event_idx;			/* VIRTIO_F_INDIRECT_DESC, _EVENT_IDX */
	struct akvm_netq_ring rx, tx;
};
struct akvm_netq_stats {
	unsigned long long tx_frames, rx_frames, rx_dropped, errors;
	unsigned long long notifies, direct;	/* notify exits in C; turns the vCPU ran */
};
struct akvm_netq;
struct akvm_netq *akvm_vnetq_new(const struct akvm_netq_config *config,
				 const struct akvm_mem_slot *slots, unsigned int nslots);
void akvm_vnetq_free(struct akvm_netq *q);
void akvm_vnetq_stop(struct akvm_netq *q);
/* The queues' state now (last_avail, used_idx, signalled_used, irq), the
 * counters since the last call, and whether C gave the queues back. */
int akvm_vnetq_state(struct akvm_netq *q, struct akvm_netq_config *out,
		     struct akvm_netq_stats *stats);
int akvm_vnetq_tx(void *q, akvm_nic_out_fn out, void *ctx, int polling);
int akvm_vnetq_rx(void *q, const uint8_t *frame, size_t len);
void akvm_vnetq_attach(void *q, akvm_nic_turn_fn turn, void *engine);
/* The transmit queue's notify address in C (the transport's choice, instead of
 * its ioeventfd): the vCPU runs the attached turn, or writes fd (its kick eventfd). */
void akvm_vnetq_set_kick(struct akvm_netq *q, int fd);
int akvm_vnetq_exit(void *q, void *kvm_run);

#endif
