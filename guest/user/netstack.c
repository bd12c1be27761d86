/*
 * A small IPv4 stack over one polled NIC (net.h): enough to get a DHCP
 * lease, answer ARP and pings, ping, exchange UDP datagrams and run one TCP
 * connection (active or passive open, in-order receive, go-back-N
 * retransmission, no congestion control).  Written from RFC 791, 792, 826,
 * 768, 793 and 2131.
 */
#include "net.h"

#define ETH_P_IP        0x0800
#define ETH_P_ARP       0x0806
#define IPPROTO_ICMP    1
#define IPPROTO_TCP     6
#define IPPROTO_UDP     17
#define DHCP_CLIENT     68
#define DHCP_SERVER     67

#define TCP_FIN         0x01
#define TCP_SYN         0x02
#define TCP_RST         0x04
#define TCP_PSH         0x08
#define TCP_ACK         0x10
#define TCP_MSS         1460
#define TCP_BUF         (64 * 1024)     /* each way; a power of two */
#define TCP_RTO_US      200000
#define TCP_RTO_MAX_US  3000000
#define TCP_TRIES       12

#define SEQ_LT(a, b)    ((int32_t)((a) - (b)) < 0)
#define SEQ_LEQ(a, b)   ((int32_t)((a) - (b)) <= 0)

struct net_config net_cfg;
struct net_stats net_stats;
void (*udp_handler)(uint32_t, uint16_t, uint16_t, const uint8_t *, unsigned);

static struct nic *nic;
static const uint8_t broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
static uint16_t ip_ident;

/* ---- byte order and checksums ---- */

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24; p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static uint32_t sum16(const uint8_t *p, unsigned len, uint32_t sum)
{
	for (; len > 1; p += 2, len -= 2)
		sum += get16(p);
	if (len)
		sum += p[0] << 8;
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xFFFF) + (sum >> 16);
	return (uint16_t)~sum;
}

/* The TCP/UDP pseudo-header's sum. */
static uint32_t pseudo(uint32_t src, uint32_t dst, uint8_t proto, unsigned len)
{
	return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + len;
}

static bool differ(const uint8_t *a, const uint8_t *b, unsigned n)
{
	while (n--)
		if (*a++ != *b++)
			return true;
	return false;
}

/* ---- formatting ---- */

void fmt_ip(char *buf, uint32_t ip)
{
	snprintf(buf, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

void fmt_mac(char *buf, const uint8_t *m)
{
	snprintf(buf, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

bool parse_ip(const char *s, uint32_t *ip)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++) {
		unsigned b = 0, digits = 0;
		while (*s >= '0' && *s <= '9' && digits < 4)
			b = b * 10 + (*s++ - '0'), digits++;
		if (!digits || b > 255 || (i < 3 ? *s++ != '.' : *s != 0))
			return false;
		v = v << 8 | b;
	}
	*ip = v;
	return true;
}

/* ---- Ethernet and ARP ---- */

#define ARP_SLOTS 8
static struct { uint32_t ip; uint8_t mac[6]; } arp_cache[ARP_SLOTS];
static unsigned arp_next;

static void arp_learn(uint32_t ip, const uint8_t *mac)
{
	if (!ip)
		return;
	for (int i = 0; i < ARP_SLOTS; i++) {
		if (arp_cache[i].ip == ip) {
			memcpy(arp_cache[i].mac, mac, 6);
			return;
		}
	}
	arp_cache[arp_next % ARP_SLOTS].ip = ip;
	memcpy(arp_cache[arp_next % ARP_SLOTS].mac, mac, 6);
	arp_next++;
}

static bool arp_lookup(uint32_t ip, uint8_t *mac)
{
	for (int i = 0; i < ARP_SLOTS; i++) {
		if (arp_cache[i].ip == ip && ip) {
			memcpy(mac, arp_cache[i].mac, 6);
			return true;
		}
	}
	return false;
}

static bool eth_send(const uint8_t *dst, uint16_t type, uint8_t *frame, unsigned len)
{
	memcpy(frame, dst, 6);
	memcpy(frame + 6, nic->mac, 6);
	put16(frame + 12, type);
	if (len < 60) {                 /* the minimum frame, without the FCS */
		memset(frame + len, 0, 60 - len);
		len = 60;
	}
	bool ok = nic->send(nic, frame, len);
	if (!ok) {
		/* The ring is full: hand the device what it has, and try once more. */
		nic->kick(nic);
		ok = nic->send(nic, frame, len);
	}
	if (ok)
		net_stats.tx_frames++;
	else
		net_stats.tx_full++;
	return ok;
}

static void arp_send(uint16_t op, const uint8_t *dst_mac, uint32_t target_ip,
		     const uint8_t *target_mac)
{
	uint8_t f[60];
	uint8_t *a = f + ETH_HLEN;
	put16(a, 1);                    /* Ethernet */
	put16(a + 2, ETH_P_IP);
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, op);
	memcpy(a + 8, nic->mac, 6);
	put32(a + 14, net_cfg.ip);
	memcpy(a + 18, target_mac, 6);
	put32(a + 24, target_ip);
	eth_send(dst_mac, ETH_P_ARP, f, ETH_HLEN + 28);
}

static void arp_input(const uint8_t *a, unsigned len)
{
	if (len < 28 || get16(a) != 1 || get16(a + 2) != ETH_P_IP || a[4] != 6 || a[5] != 4)
		return;
	uint16_t op = get16(a + 6);
	uint32_t sip = get32(a + 14), tip = get32(a + 24);
	if (net_cfg.ip && tip == net_cfg.ip) {
		arp_learn(sip, a + 8);
		if (op == 1)
			arp_send(2, a + 8, sip, a + 8);
	} else if (op == 2) {
		arp_learn(sip, a + 8);
	}
}

/* The next hop's MAC: on our subnet the address itself, else the gateway.
 * Not known yet: ask (the packet is lost, as with any ARP miss here). */
static bool next_hop(uint32_t ip, uint8_t *mac)
{
	static const uint8_t zero[6];
	if (ip == 0xFFFFFFFF) {
		memcpy(mac, broadcast, 6);
		return true;
	}
	uint32_t hop = (ip & net_cfg.mask) == (net_cfg.ip & net_cfg.mask) ? ip : net_cfg.gateway;
	if (arp_lookup(hop, mac))
		return true;
	arp_send(1, broadcast, hop, zero);
	return false;
}

static uint32_t arp_want;

static bool arp_known(void)
{
	uint8_t m[6];
	return arp_lookup(arp_want, m);
}

const char *arp_resolve(uint32_t ip, uint8_t mac[6])
{
	for (int tries = 0; tries < 5; tries++) {
		if (arp_lookup(ip, mac))
			return NULL;
		static const uint8_t zero[6];
		arp_send(1, broadcast, ip, zero);
		arp_want = ip;
		net_wait(arp_known, 500000);
	}
	return arp_lookup(ip, mac) ? NULL : "no ARP reply";
}

/* ---- IPv4 ---- */

#define IP_HLEN 20

/* frame has room for the Ethernet and IP headers before the payload (len bytes). */
static bool ip_send(uint32_t dst, uint8_t proto, uint8_t *frame, unsigned len)
{
	uint8_t mac[6];
	if (!next_hop(dst, mac))
		return false;
	uint8_t *ip = frame + ETH_HLEN;
	ip[0] = 0x45;
	ip[1] = 0;
	put16(ip + 2, IP_HLEN + len);
	put16(ip + 4, ip_ident++);
	put16(ip + 6, 0x4000);          /* don't fragment */
	ip[8] = 64;
	ip[9] = proto;
	put16(ip + 10, 0);
	put32(ip + 12, net_cfg.ip);
	put32(ip + 16, dst);
	put16(ip + 10, fold(sum16(ip, IP_HLEN, 0)));
	return eth_send(mac, ETH_P_IP, frame, ETH_HLEN + IP_HLEN + len);
}

/* ---- ICMP ---- */

static struct { uint16_t id, seq; bool got; uint64_t rtt_sum; uint64_t sent_at; } pinger;

static void icmp_input(uint32_t src, const uint8_t *m, unsigned len)
{
	if (len < 8 || fold(sum16(m, len, 0)))
		return;
	if (m[0] == 8 && len <= ETH_FRAME_MAX - ETH_HLEN - IP_HLEN) {   /* echo request */
		uint8_t f[ETH_FRAME_MAX];
		uint8_t *r = f + ETH_HLEN + IP_HLEN;
		memcpy(r, m, len);
		r[0] = 0;
		put16(r + 2, 0);
		put16(r + 2, fold(sum16(r, len, 0)));
		if (ip_send(src, IPPROTO_ICMP, f, len))
			net_stats.echo_answered++;
	} else if (m[0] == 0 && get16(m + 4) == pinger.id && get16(m + 6) == pinger.seq) {
		pinger.got = true;
		pinger.rtt_sum += now_us() - pinger.sent_at;
	}
}

static bool ping_answered(void) { return pinger.got; }

const char *ping(uint32_t ip, int count, unsigned len, int *replies, uint64_t *rtt_us)
{
	if (len > ETH_FRAME_MAX - ETH_HLEN - IP_HLEN - 8)
		return "too long";
	uint8_t mac[6];
	uint32_t hop = (ip & net_cfg.mask) == (net_cfg.ip & net_cfg.mask) ? ip : net_cfg.gateway;
	const char *err = arp_resolve(hop, mac);
	if (err)
		return err;
	*replies = 0;
	pinger.id = (uint16_t)rdtsc();
	pinger.rtt_sum = 0;
	for (int i = 1; i <= count; i++) {
		uint8_t f[ETH_FRAME_MAX];
		uint8_t *m = f + ETH_HLEN + IP_HLEN;
		m[0] = 8;
		m[1] = 0;
		put16(m + 2, 0);
		put16(m + 4, pinger.id);
		put16(m + 6, i);
		for (unsigned j = 0; j < len; j++)
			m[8 + j] = (uint8_t)('a' + j % 26);
		put16(m + 2, fold(sum16(m, 8 + len, 0)));
		pinger.seq = i;
		pinger.got = false;
		pinger.sent_at = now_us();
		ip_send(ip, IPPROTO_ICMP, f, 8 + len);
		if (net_wait(ping_answered, 1000000))
			(*replies)++;
	}
	*rtt_us = *replies ? pinger.rtt_sum / *replies : 0;
	return *replies ? NULL : "no echo reply";
}

/* ---- UDP and DHCP ---- */

#define UDP_HLEN 8

bool udp_send(uint32_t dst, uint16_t sport, uint16_t dport, const void *data, unsigned len)
{
	uint8_t f[ETH_FRAME_MAX];
	if (len > ETH_FRAME_MAX - ETH_HLEN - IP_HLEN - UDP_HLEN)
		return false;
	uint8_t *u = f + ETH_HLEN + IP_HLEN;
	put16(u, sport);
	put16(u + 2, dport);
	put16(u + 4, UDP_HLEN + len);
	put16(u + 6, 0);
	memcpy(u + UDP_HLEN, data, len);
	uint16_t c = fold(sum16(u, UDP_HLEN + len,
				pseudo(net_cfg.ip, dst, IPPROTO_UDP, UDP_HLEN + len)));
	put16(u + 6, c ? c : 0xFFFF);
	return ip_send(dst, IPPROTO_UDP, f, UDP_HLEN + len);
}

#define BOOTP_LEN       236
#define DHCP_MAGIC      0x63825363
enum { DHCPDISCOVER = 1, DHCPOFFER, DHCPREQUEST, DHCPDECLINE, DHCPACK, DHCPNAK };

static struct { uint32_t xid; int want; bool got; struct net_config offer; } dhcpc;

static void dhcp_input(const uint8_t *b, unsigned len)
{
	if (len < BOOTP_LEN + 4 || b[0] != 2 || get32(b + 4) != dhcpc.xid ||
	    differ(b + 28, nic->mac, 6) || get32(b + BOOTP_LEN) != DHCP_MAGIC)
		return;
	struct net_config c = { .ip = get32(b + 16) };
	int type = 0;
	for (unsigned i = BOOTP_LEN + 4; i < len && b[i] != 255;) {
		if (b[i] == 0) {
			i++;
			continue;
		}
		if (i + 2 > len || i + 2 + b[i + 1] > len)
			break;
		uint8_t code = b[i], n = b[i + 1];
		const uint8_t *v = b + i + 2;
		if (code == 53 && n >= 1)
			type = v[0];
		else if (code == 1 && n >= 4)
			c.mask = get32(v);
		else if (code == 3 && n >= 4)
			c.gateway = get32(v);
		else if (code == 6 && n >= 4)
			c.dns = get32(v);
		else if (code == 51 && n >= 4)
			c.lease_s = get32(v);
		else if (code == 54 && n >= 4)
			c.server = get32(v);
		i += 2 + n;
	}
	if (type == DHCPNAK && dhcpc.want == DHCPACK) {
		dhcpc.got = true;
		dhcpc.offer.ip = 0;
	} else if (type == dhcpc.want && c.ip) {
		dhcpc.got = true;
		dhcpc.offer = c;
	}
}

static void dhcp_send(int type)
{
	uint8_t b[BOOTP_LEN + 4 + 32];
	memset(b, 0, sizeof(b));
	b[0] = 1;                       /* BOOTREQUEST */
	b[1] = 1;                       /* Ethernet */
	b[2] = 6;
	put32(b + 4, dhcpc.xid);
	put16(b + 10, 0x8000);          /* broadcast the reply: we have no address yet */
	memcpy(b + 28, nic->mac, 6);
	put32(b + BOOTP_LEN, DHCP_MAGIC);
	uint8_t *o = b + BOOTP_LEN + 4;
	*o++ = 53; *o++ = 1; *o++ = type;
	if (type == DHCPREQUEST) {
		*o++ = 50; *o++ = 4; put32(o, dhcpc.offer.ip); o += 4;
		*o++ = 54; *o++ = 4; put32(o, dhcpc.offer.server); o += 4;
	}
	*o++ = 55; *o++ = 4; *o++ = 1; *o++ = 3; *o++ = 6; *o++ = 51;   /* what we want to know */
	*o++ = 255;
	udp_send(0xFFFFFFFF, DHCP_CLIENT, DHCP_SERVER, b, o - b);
}

static bool dhcp_answered(void) { return dhcpc.got; }

const char *dhcp(void)
{
	net_cfg.ip = 0;
	dhcpc.xid = (uint32_t)rdtsc();
	for (int phase = DHCPOFFER; phase <= DHCPACK; phase += DHCPACK - DHCPOFFER) {
		int tries = 0;
		dhcpc.want = phase;
		do {
			if (++tries > 4)
				return phase == DHCPOFFER ? "no DHCPOFFER" : "no DHCPACK";
			dhcpc.got = false;
			dhcp_send(phase == DHCPOFFER ? DHCPDISCOVER : DHCPREQUEST);
		} while (!net_wait(dhcp_answered, 1000000));
		if (!dhcpc.offer.ip)
			return "DHCPNAK";
	}
	net_cfg = dhcpc.offer;
	if (!net_cfg.mask)
		net_cfg.mask = 0xFFFFFF00;
	return NULL;
}

static void udp_input(uint32_t src, uint32_t dst, const uint8_t *u, unsigned len)
{
	if (len < UDP_HLEN || get16(u + 4) < UDP_HLEN || get16(u + 4) > len)
		return;
	len = get16(u + 4);
	if (get16(u + 6) && fold(sum16(u, len, pseudo(src, dst, IPPROTO_UDP, len)))) {
		net_stats.rx_bad++;
		return;
	}
	uint16_t sport = get16(u), dport = get16(u + 2);
	if (dport == DHCP_CLIENT && sport == DHCP_SERVER)
		dhcp_input(u + UDP_HLEN, len - UDP_HLEN);
	else if (udp_handler)
		udp_handler(src, sport, dport, u + UDP_HLEN, len - UDP_HLEN);
}

/* ---- TCP: one connection ---- */

static struct tcb {
	enum tcp_state state;
	uint32_t rip;
	uint16_t lport, rport;
	uint32_t iss, snd_una, snd_nxt, snd_max, snd_wnd;   /* snd_max: after the last byte written */
	uint32_t irs, rcv_nxt, rcv_read;
	uint16_t mss;
	bool fin_queued, fin_rcvd, ack_due;
	uint64_t rto_at, rto;
	int tries;
	const char *error;
} tcb;
static uint8_t sbuf[TCP_BUF], rbuf[TCP_BUF];    /* by sequence number, modulo TCP_BUF */

enum tcp_state tcp_state(void) { return tcb.state; }
const char *tcp_error(void) { return tcb.error; }

uint32_t tcp_peer(uint16_t *port)
{
	*port = tcb.rport;
	return tcb.rip;
}

unsigned tcp_unsent(void) { return tcb.snd_max - tcb.snd_una - (tcb.state == TCP_SYN_SENT); }

static uint32_t rcv_window(void)
{
	uint32_t used = tcb.rcv_nxt - tcb.rcv_read - (tcb.fin_rcvd ? 1 : 0);
	uint32_t w = TCP_BUF - 1 - used;
	return w > 0xFFFF ? 0xFFFF : w;
}

/* One segment: flags, seq, and len bytes of the send buffer from seq. */
static bool tcp_segment(uint8_t flags, uint32_t seq, unsigned len)
{
	uint8_t f[ETH_FRAME_MAX];
	uint8_t *t = f + ETH_HLEN + IP_HLEN;
	unsigned hlen = flags & TCP_SYN ? 24 : 20;
	put16(t, tcb.lport);
	put16(t + 2, tcb.rport);
	put32(t + 4, seq);
	put32(t + 8, flags & TCP_ACK ? tcb.rcv_nxt : 0);
	t[12] = hlen / 4 << 4;
	t[13] = flags;
	put16(t + 14, rcv_window());
	put32(t + 16, 0);               /* checksum, urgent pointer */
	if (flags & TCP_SYN) {
		t[20] = 2;              /* MSS */
		t[21] = 4;
		put16(t + 22, TCP_MSS);
	}
	uint32_t off = seq - tcb.iss - 1;
	for (unsigned i = 0; i < len; i++)
		t[hlen + i] = sbuf[(off + i) & (TCP_BUF - 1)];
	put16(t + 16, fold(sum16(t, hlen + len, pseudo(net_cfg.ip, tcb.rip, IPPROTO_TCP, hlen + len))));
	if (!ip_send(tcb.rip, IPPROTO_TCP, f, hlen + len))
		return false;
	net_stats.tcp_segs_out++;
	if (flags & TCP_ACK)
		tcb.ack_due = false;
	return true;
}

static void tcp_reset_to(uint32_t rip, uint16_t lport, uint16_t rport, uint32_t seq, uint32_t ack,
			 uint8_t flags)
{
	uint8_t f[ETH_HLEN + IP_HLEN + 20 + 6];
	uint8_t *t = f + ETH_HLEN + IP_HLEN;
	put16(t, lport);
	put16(t + 2, rport);
	put32(t + 4, seq);
	put32(t + 8, ack);
	t[12] = 5 << 4;
	t[13] = flags;
	put32(t + 14, 0);
	put16(t + 18, 0);
	put16(t + 16, fold(sum16(t, 20, pseudo(net_cfg.ip, rip, IPPROTO_TCP, 20))));
	ip_send(rip, IPPROTO_TCP, f, 20);
}

static void tcp_arm(void)
{
	tcb.rto_at = now_us() + tcb.rto;
}

static void tcp_drop(const char *why)
{
	tcb.state = TCP_CLOSED;
	if (!tcb.error)
		tcb.error = why;
}

/* Send what the window allows (and SYN, FIN or an ACK that is due). */
static void tcp_output(void)
{
	switch (tcb.state) {
	case TCP_CLOSED:
	case TCP_LISTEN:
		return;
	case TCP_SYN_SENT:
		if (tcb.snd_nxt == tcb.iss) {
			tcp_segment(TCP_SYN, tcb.iss, 0);
			tcb.snd_nxt = tcb.iss + 1;
			tcp_arm();
		}
		return;
	case TCP_SYN_RCVD:
		if (tcb.snd_nxt == tcb.iss) {
			tcp_segment(TCP_SYN | TCP_ACK, tcb.iss, 0);
			tcb.snd_nxt = tcb.iss + 1;
			tcp_arm();
		}
		return;
	default:
		break;
	}
	uint32_t data_end = tcb.snd_max;        /* FIN, when queued, is at data_end */
	while (SEQ_LT(tcb.snd_nxt, data_end)) {
		uint32_t wnd_end = tcb.snd_una + (tcb.snd_wnd ? tcb.snd_wnd : 1);
		if (!SEQ_LT(tcb.snd_nxt, wnd_end))
			break;
		uint32_t n = data_end - tcb.snd_nxt;
		if (n > tcb.mss)
			n = tcb.mss;
		if (n > wnd_end - tcb.snd_nxt)
			n = wnd_end - tcb.snd_nxt;
		bool last = tcb.snd_nxt + n == data_end;
		if (!tcp_segment(TCP_ACK | (last ? TCP_PSH : 0), tcb.snd_nxt, n))
			break;
		if (tcb.snd_una == tcb.snd_nxt)
			tcp_arm();
		tcb.snd_nxt += n;
	}
	if (tcb.fin_queued && tcb.snd_nxt == data_end &&
	    (tcb.state == TCP_FIN_WAIT_1 || tcb.state == TCP_LAST_ACK || tcb.state == TCP_CLOSING)) {
		if (tcp_segment(TCP_FIN | TCP_ACK, data_end, 0)) {
			if (tcb.snd_una == tcb.snd_nxt)
				tcp_arm();
			tcb.snd_nxt = data_end + 1;
		}
	}
	if (tcb.ack_due)
		tcp_segment(TCP_ACK, tcb.snd_nxt, 0);
}

static void tcp_timers(void)
{
	if (tcb.state == TCP_CLOSED || tcb.state == TCP_LISTEN || tcb.snd_una == tcb.snd_nxt ||
	    now_us() < tcb.rto_at)
		return;
	if (++tcb.tries > TCP_TRIES) {
		tcp_drop("no acknowledgement: connection timed out");
		return;
	}
	net_stats.tcp_retransmits++;
	tcb.snd_nxt = tcb.snd_una;              /* go back N */
	if (tcb.state == TCP_SYN_SENT || tcb.state == TCP_SYN_RCVD)
		tcb.snd_nxt = tcb.iss;
	tcb.rto = tcb.rto * 2 > TCP_RTO_MAX_US ? TCP_RTO_MAX_US : tcb.rto * 2;
	tcp_output();
	tcp_arm();
}

static void tcp_established(const uint8_t *t)
{
	tcb.state = TCP_ESTABLISHED;
	tcb.snd_wnd = get16(t + 14);
}

/* A SYN's options: the peer's MSS (kind 2, length 4), if it gives one. */
static void tcp_options(const uint8_t *t, unsigned hlen)
{
	for (unsigned i = 20; i + 3 < hlen; i += t[i] <= 1 ? 1 : t[i + 1]) {
		if (t[i] == 0)
			break;
		if (t[i] == 2 && t[i + 1] == 4)
			tcb.mss = get16(t + i + 2);
		if (t[i] > 1 && t[i + 1] < 2)
			break;
	}
}

static void tcp_input(uint32_t src, uint32_t dst, const uint8_t *t, unsigned len)
{
	if (len < 20 || fold(sum16(t, len, pseudo(src, dst, IPPROTO_TCP, len)))) {
		net_stats.rx_bad++;
		return;
	}
	unsigned hlen = (t[12] >> 4) * 4;
	if (hlen < 20 || hlen > len)
		return;
	net_stats.tcp_segs_in++;
	uint16_t sport = get16(t), dport = get16(t + 2);
	uint32_t seq = get32(t + 4), ack = get32(t + 8);
	uint8_t flags = t[13];
	const uint8_t *data = t + hlen;
	unsigned dlen = len - hlen;

	bool ours = tcb.state != TCP_CLOSED && dport == tcb.lport &&
		    (tcb.state == TCP_LISTEN || (src == tcb.rip && sport == tcb.rport));
	if (!ours) {
		if (!(flags & TCP_RST))
			tcp_reset_to(src, dport, sport, flags & TCP_ACK ? ack : 0,
				     seq + dlen + !!(flags & TCP_SYN) + !!(flags & TCP_FIN),
				     flags & TCP_ACK ? TCP_RST : TCP_RST | TCP_ACK);
		return;
	}
	if (tcb.state == TCP_LISTEN) {
		if (!(flags & TCP_SYN) || (flags & (TCP_ACK | TCP_RST)))
			return;
		tcb.rip = src;
		tcb.rport = sport;
		tcb.irs = seq;
		tcb.rcv_nxt = tcb.rcv_read = seq + 1;
		tcb.iss = (uint32_t)rdtsc();
		tcb.snd_una = tcb.snd_nxt = tcb.iss;
		tcb.snd_max = tcb.iss + 1;
		tcb.snd_wnd = get16(t + 14);
		tcp_options(t, hlen);
		tcb.state = TCP_SYN_RCVD;
		return;
	}
	if (tcb.state == TCP_SYN_SENT) {
		if ((flags & TCP_ACK) && ack != tcb.iss + 1) {
			if (!(flags & TCP_RST))
				tcp_reset_to(src, dport, sport, ack, 0, TCP_RST);
			return;
		}
		if (flags & TCP_RST) {
			if (flags & TCP_ACK)
				tcp_drop("connection refused");
			return;
		}
		if (!(flags & TCP_SYN) || !(flags & TCP_ACK))
			return;
		tcb.irs = seq;
		tcb.rcv_nxt = tcb.rcv_read = seq + 1;
		tcb.snd_una = ack;
		tcp_options(t, hlen);
		tcp_established(t);
		tcb.ack_due = true;
		tcb.tries = 0;
		return;
	}
	/* Synchronized states. */
	if (flags & TCP_RST) {
		if (SEQ_LEQ(tcb.rcv_nxt, seq) && SEQ_LT(seq, tcb.rcv_nxt + rcv_window() + 1))
			tcp_drop("connection reset by peer");
		return;
	}
	if (flags & TCP_SYN) {                  /* a retransmitted SYN(-ACK): our ACK was lost */
		tcb.ack_due = true;
		return;
	}
	if (!(flags & TCP_ACK))
		return;
	if (tcb.state == TCP_SYN_RCVD) {
		if (ack != tcb.iss + 1)
			return;
		tcb.snd_una = ack;
		tcb.tries = 0;
		tcp_established(t);
	}
	if (SEQ_LT(tcb.snd_una, ack) && SEQ_LEQ(ack, tcb.snd_nxt)) {
		tcb.snd_una = ack;
		tcb.tries = 0;
		tcb.rto = TCP_RTO_US;
		if (tcb.snd_una != tcb.snd_nxt)
			tcp_arm();
		bool fin_acked = tcb.fin_queued && ack == tcb.snd_max + 1;
		if (fin_acked && tcb.state == TCP_FIN_WAIT_1)
			tcb.state = TCP_FIN_WAIT_2;
		else if (fin_acked && (tcb.state == TCP_CLOSING || tcb.state == TCP_LAST_ACK))
			tcb.state = TCP_CLOSED;
	}
	if (SEQ_LEQ(tcb.snd_una, ack))
		tcb.snd_wnd = get16(t + 14);
	if (tcb.state == TCP_CLOSED)
		return;
	/* Data in order only; anything else is answered with our ACK. */
	if (dlen || (flags & TCP_FIN)) {
		if (seq != tcb.rcv_nxt || tcb.fin_rcvd) {
			tcb.ack_due = true;
			return;
		}
		unsigned room = TCP_BUF - 1 - (tcb.rcv_nxt - tcb.rcv_read);
		unsigned take = dlen < room ? dlen : room;
		if (tcb.state == TCP_ESTABLISHED || tcb.state == TCP_FIN_WAIT_1 ||
		    tcb.state == TCP_FIN_WAIT_2) {
			for (unsigned i = 0; i < take; i++)
				rbuf[(tcb.rcv_nxt + i) & (TCP_BUF - 1)] = data[i];
			tcb.rcv_nxt += take;
		} else {
			take = dlen;            /* after their FIN: nothing more is data */
		}
		tcb.ack_due = true;
		if ((flags & TCP_FIN) && take == dlen) {
			tcb.rcv_nxt++;
			tcb.fin_rcvd = true;
			if (tcb.state == TCP_ESTABLISHED)
				tcb.state = TCP_CLOSE_WAIT;
			else if (tcb.state == TCP_FIN_WAIT_1)
				tcb.state = TCP_CLOSING;
			else if (tcb.state == TCP_FIN_WAIT_2)
				tcb.state = TCP_CLOSED;     /* no TIME_WAIT: this stack never reuses the port */
		}
	}
}

static void tcp_reset(uint16_t lport)
{
	memset(&tcb, 0, sizeof(tcb));
	tcb.lport = lport;
	tcb.mss = 536;
	tcb.rto = TCP_RTO_US;
}

static bool tcp_settled(void)
{
	return tcb.state != TCP_SYN_SENT && tcb.state != TCP_SYN_RCVD && tcb.state != TCP_LISTEN;
}

const char *tcp_connect(uint32_t ip, uint16_t port)
{
	uint8_t mac[6];
	uint32_t hop = (ip & net_cfg.mask) == (net_cfg.ip & net_cfg.mask) ? ip : net_cfg.gateway;
	const char *err = arp_resolve(hop, mac);
	if (err)
		return err;
	tcp_reset(49152 + (uint16_t)(rdtsc() % 16384));
	tcb.rip = ip;
	tcb.rport = port;
	tcb.iss = (uint32_t)rdtsc();
	tcb.snd_una = tcb.snd_nxt = tcb.iss;
	tcb.snd_max = tcb.iss + 1;
	tcb.state = TCP_SYN_SENT;
	tcp_output();
	if (!net_wait(tcp_settled, 30000000))
		tcp_drop("connection timed out");
	return tcb.state == TCP_ESTABLISHED ? NULL : tcb.error ? tcb.error : "not connected";
}

void tcp_listen(uint16_t port)
{
	tcp_reset(port);
	tcb.state = TCP_LISTEN;
}

const char *tcp_accept(uint64_t timeout_us)
{
	if (!net_wait(tcp_settled, timeout_us))
		return tcb.state == TCP_LISTEN ? "nobody connected" : "handshake did not finish";
	return tcb.state == TCP_ESTABLISHED ? NULL : tcb.error ? tcb.error : "not connected";
}

unsigned tcp_write(const void *data, unsigned len)
{
	if (tcb.state != TCP_ESTABLISHED && tcb.state != TCP_CLOSE_WAIT)
		return 0;
	unsigned room = TCP_BUF - 1 - (tcb.snd_max - tcb.snd_una);
	if (len > room)
		len = room;
	uint32_t off = tcb.snd_max - tcb.iss - 1;
	const uint8_t *d = data;
	for (unsigned i = 0; i < len; i++)
		sbuf[(off + i) & (TCP_BUF - 1)] = d[i];
	tcb.snd_max += len;
	return len;
}

int tcp_read(void *buf, unsigned len)
{
	uint32_t avail = tcb.rcv_nxt - tcb.rcv_read - (tcb.fin_rcvd ? 1 : 0);
	if (!avail)
		return tcb.fin_rcvd || tcb.state == TCP_CLOSED ? -1 : 0;
	bool was_closed = rcv_window() < tcb.mss;
	if (len > avail)
		len = avail;
	uint8_t *b = buf;
	for (unsigned i = 0; i < len; i++)
		b[i] = rbuf[(tcb.rcv_read + i) & (TCP_BUF - 1)];
	tcb.rcv_read += len;
	if (was_closed && rcv_window() >= tcb.mss)
		tcb.ack_due = true;     /* the window opened again: say so */
	return len;
}

static bool tcp_done(void) { return tcb.state == TCP_CLOSED; }

const char *tcp_close(void)
{
	if (tcb.state == TCP_ESTABLISHED)
		tcb.state = TCP_FIN_WAIT_1;
	else if (tcb.state == TCP_CLOSE_WAIT)
		tcb.state = TCP_LAST_ACK;
	else if (tcb.state != TCP_CLOSED) {
		tcb.state = TCP_CLOSED;
		return "closed before it was established";
	}
	tcb.fin_queued = true;
	if (!net_wait(tcp_done, 10000000))
		return "the peer did not close";
	return tcb.error;
}

/* ---- input and the poll loop ---- */

static void ip_input(const uint8_t *ip, unsigned len)
{
	if (len < IP_HLEN || ip[0] >> 4 != 4)
		return;
	unsigned hlen = (ip[0] & 15) * 4, total = get16(ip + 2);
	if (hlen < IP_HLEN || total < hlen || total > len || fold(sum16(ip, hlen, 0))) {
		net_stats.rx_bad++;
		return;
	}
	if (get16(ip + 6) & 0x3FFF)
		return;                 /* fragments: not here */
	uint32_t src = get32(ip + 12), dst = get32(ip + 16);
	bool bcast = dst == 0xFFFFFFFF || (net_cfg.mask && dst == (net_cfg.ip | ~net_cfg.mask));
	if (dst != net_cfg.ip && !bcast && !(net_cfg.ip == 0 && ip[9] == IPPROTO_UDP))
		return;
	const uint8_t *p = ip + hlen;
	unsigned n = total - hlen;
	if (ip[9] == IPPROTO_ICMP && !bcast)
		icmp_input(src, p, n);
	else if (ip[9] == IPPROTO_UDP)
		udp_input(src, dst, p, n);
	else if (ip[9] == IPPROTO_TCP && !bcast)
		tcp_input(src, dst, p, n);
}

void net_init(struct nic *n)
{
	nic = n;
	ip_ident = (uint16_t)rdtsc();
}

void net_poll(void)
{
	const uint8_t *f;
	unsigned len;
	while ((f = nic->recv(nic, &len))) {
		net_stats.rx_frames++;
		if (len < ETH_HLEN || (differ(f, nic->mac, 6) && differ(f, broadcast, 6))) {
			net_stats.rx_dropped++;
			continue;
		}
		uint16_t type = get16(f + 12);
		if (type == ETH_P_ARP)
			arp_input(f + ETH_HLEN, len - ETH_HLEN);
		else if (type == ETH_P_IP)
			ip_input(f + ETH_HLEN, len - ETH_HLEN);
		else
			net_stats.rx_dropped++;
	}
	tcp_timers();
	tcp_output();
	nic->kick(nic);
}

bool net_wait(bool (*done)(void), uint64_t timeout_us)
{
	uint64_t end = now_us() + timeout_us;
	for (;;) {
		net_poll();
		if (done())
			return true;
		if (now_us() > end)
			return false;
		cpu_pause();
	}
}
