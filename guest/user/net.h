/*
 * The net program (user/net.c): a NIC driven from ring 3 (nic.c) and a
 * small IPv4 stack (netstack.c): Ethernet, ARP, IPv4, ICMP echo, UDP with
 * a DHCP client, and TCP good for one connection at a time.  Everything is
 * polled: no interrupts, no threads.
 */
#ifndef NET_H
#define NET_H
#include "ulib.h"

/* ---- time (rdtsc) ---- */
void clock_init(void);
uint64_t now_us(void);

/* ---- DMA memory: pages from mmap; dma_of() is what the device is given
 * (the IOVA behind the IOMMU, else the physical address: dma_addr()). ---- */
void *dma_pages(unsigned n);
uint64_t dma_of(const volatile void *p);

/* ---- a NIC ---- */
#define ETH_HLEN        14
#define ETH_FRAME_MAX   1514            /* without the FCS */
#define NIC_RX_BUF      2048

struct nic {
	char name[64];                  /* e.g. "virtio-net pci 00:03.0" */
	uint8_t mac[6];
	/* Queue one frame (copied); false when the transmit ring is full. */
	bool (*send)(struct nic *n, const void *frame, unsigned len);
	/* The next received frame or NULL; valid until the next recv(). */
	const uint8_t *(*recv)(struct nic *n, unsigned *len);
	/* Tell the device what send() queued and which receive buffers are free again. */
	void (*kick)(struct nic *n);
	unsigned long tx_frames, rx_frames, tx_full, kicks;
};

/* kind: "virtio-pci", "virtio-mmio", "e1000", or NULL for the first found in
 * that order.  The device is assigned to this process (assign_dev with
 * ASSIGN_PHYSICAL_OK): NULL and *err when there is none or it fails. */
struct nic *nic_open(const char *kind, const char **err);

/* ---- the stack ---- */
#define IP(a, b, c, d)  ((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (d))

struct net_config {
	uint32_t ip, mask, gateway, dns, server;  /* host byte order; 0: unknown */
	uint32_t lease_s;
};
extern struct net_config net_cfg;

void net_init(struct nic *n);
/* Take every received frame, answer ARP and pings, move TCP on, kick the NIC. */
void net_poll(void);
/* net_poll() until done() or timeout; false on timeout. */
bool net_wait(bool (*done)(void), uint64_t timeout_us);

const char *dhcp(void);                                 /* fills net_cfg; NULL or why not */
const char *arp_resolve(uint32_t ip, uint8_t mac[6]);
/* count echo requests of len bytes of data; *replies, *rtt_us (average) */
const char *ping(uint32_t ip, int count, unsigned len, int *replies, uint64_t *rtt_us);

bool udp_send(uint32_t dst, uint16_t sport, uint16_t dport, const void *data, unsigned len);
/* Datagrams to ports other than DHCP's go here (NULL: dropped). */
extern void (*udp_handler)(uint32_t src, uint16_t sport, uint16_t dport,
			   const uint8_t *data, unsigned len);

/* TCP: one connection at a time. */
enum tcp_state { TCP_CLOSED, TCP_LISTEN, TCP_SYN_SENT, TCP_SYN_RCVD, TCP_ESTABLISHED,
		 TCP_FIN_WAIT_1, TCP_FIN_WAIT_2, TCP_CLOSING, TCP_CLOSE_WAIT, TCP_LAST_ACK };
const char *tcp_connect(uint32_t ip, uint16_t port);    /* waits for ESTABLISHED */
void tcp_listen(uint16_t port);
const char *tcp_accept(uint64_t timeout_us);            /* waits for ESTABLISHED */
unsigned tcp_write(const void *data, unsigned len);     /* bytes taken into the send buffer */
int tcp_read(void *buf, unsigned len);                  /* bytes; 0 none yet; -1 end of stream */
const char *tcp_close(void);                            /* FIN, waits for the peer's */
enum tcp_state tcp_state(void);
uint32_t tcp_peer(uint16_t *port);
unsigned tcp_unsent(void);                              /* written, not yet acknowledged */
const char *tcp_error(void);                            /* why the connection ended, or NULL */

struct net_stats {
	unsigned long rx_frames, rx_dropped, rx_bad, tx_frames, tx_full;
	unsigned long tcp_retransmits, tcp_segs_in, tcp_segs_out, echo_answered;
};
extern struct net_stats net_stats;

void fmt_ip(char *buf, uint32_t ip);                    /* 16 bytes */
void fmt_mac(char *buf, const uint8_t *mac);            /* 18 bytes */
bool parse_ip(const char *s, uint32_t *ip);

#endif
