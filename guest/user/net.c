/*
 * net [-d KIND] MODE ...: a NIC driven from ring 3 (nic.c) with a small
 * IPv4 stack (netstack.c).  KIND: virtio-pci, virtio-mmio or e1000 (default:
 * the first found).  Modes:
 *
 *   check [HOSTPORT [FWDPORT]]
 *       DHCP lease, ARP for the gateway, three pings to it; then, with
 *       HOSTPORT, a TCP exchange with the host's 127.0.0.1:HOSTPORT through
 *       the gateway (a line out, a line back); with FWDPORT, listen on it
 *       (a host forward's guest port), take one connection, answer the line
 *       it sends with "echo: LINE".  Prints "net: ok" at the end.
 *   peer MYIP PEERIP COUNT      static address MYIP; COUNT pings to PEERIP
 *   answer MYIP COUNT           static address MYIP; answer ARP, and pings until
 *                               COUNT were answered (at most 60 s)
 *   pingloop SECONDS            after DHCP, a ping to the gateway every 100 ms for
 *                               SECONDS (the device keeps working across a snapshot)
 *   bench UDPPORT SINKPORT SOURCEPORT BYTES ROUNDS
 *       after DHCP, against the host's 127.0.0.1 through the gateway: ROUNDS
 *       UDP round trips of 64 bytes with an echo server on UDPPORT
 *       (BENCH net-udp-rr), BYTES over TCP to a sink on SINKPORT
 *       (BENCH net-tcp-tx) and from a source on SOURCEPORT, which sends
 *       BYTES and closes (BENCH net-tcp-rx); timed with the TSC.
 *
 * Every step prints one "net: ..." line; a failure prints "net: FAIL step:
 * why" and exits with a status that names the step.
 */
#include "net.h"

static const char *kind;

static int fail(int status, const char *step, const char *why)
{
	printf("net: FAIL %s: %s\n", step, why);
	return status;
}

static struct nic *open_nic(void)
{
	const char *err;
	clock_init();
	struct nic *n = nic_open(kind, &err);
	if (!n) {
		fail(2, "device", err);
		return NULL;
	}
	char mac[18];
	fmt_mac(mac, n->mac);
	void *probe = dma_pages(1);
	if (!probe) {
		fail(2, "device", "no DMA memory");
		return NULL;
	}
	printf("net: %s mac %s, DMA %s\n", n->name, mac,
	       dma_of(probe) == iova_of(probe) ? "through the IOMMU" : "to physical addresses");
	net_init(n);
	return n;
}

/* A line from the connection (without its newline), waiting up to timeout. */
static const char *read_line(char *buf, unsigned size, uint64_t timeout_us)
{
	unsigned n = 0;
	uint64_t end = now_us() + timeout_us;
	while (n + 1 < size) {
		int r = tcp_read(buf + n, 1);
		if (r < 0)
			break;
		if (r == 0) {
			if (now_us() > end)
				return "no line came";
			net_poll();
			continue;
		}
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = 0;
	return n ? NULL : "the connection ended without a line";
}

static const char *write_all(const char *s)
{
	unsigned len = strlen(s), done = 0;
	uint64_t end = now_us() + 10000000;
	while (done < len) {
		done += tcp_write(s + done, len - done);
		net_poll();
		if (now_us() > end)
			return "the peer took nothing for 10 s";
		if (tcp_state() != TCP_ESTABLISHED && tcp_state() != TCP_CLOSE_WAIT)
			return tcp_error() ? tcp_error() : "connection closed";
	}
	return NULL;
}

static int check(int argc, char **argv)
{
	struct nic *n = open_nic();
	if (!n)
		return 2;
	char a[16], b[16], c[16], d[16], mac[18];
	const char *err = dhcp();
	if (err)
		return fail(3, "dhcp", err);
	fmt_ip(a, net_cfg.ip), fmt_ip(b, net_cfg.mask), fmt_ip(c, net_cfg.gateway), fmt_ip(d, net_cfg.dns);
	printf("net: dhcp %s mask %s gateway %s dns %s lease %u s\n", a, b, c, d, net_cfg.lease_s);
	uint8_t gw[6];
	if ((err = arp_resolve(net_cfg.gateway, gw)))
		return fail(4, "arp", err);
	fmt_mac(mac, gw);
	printf("net: arp %s is-at %s\n", c, mac);
	int replies;
	uint64_t rtt;
	if ((err = ping(net_cfg.gateway, 3, 56, &replies, &rtt)))
		return fail(5, "ping", err);
	printf("net: ping %s: %d/3 replies, %lu us average\n", c, replies, rtt);

	if (argc > 0) {
		uint16_t port = atol(argv[0]);
		if ((err = tcp_connect(net_cfg.gateway, port)))
			return fail(6, "tcp connect", err);
		char line[128], reply[128];
		snprintf(line, sizeof(line), "hello from %s over %s\n", a, n->name);
		if ((err = write_all(line)) || (err = read_line(reply, sizeof(reply), 10000000)))
			return fail(7, "tcp exchange", err);
		if ((err = tcp_close()))
			return fail(8, "tcp close", err);
		printf("net: tcp %s:%u: sent %u bytes, got '%s', closed\n", c, port,
		       (unsigned)strlen(line), reply);
	}
	if (argc > 1) {
		uint16_t port = atol(argv[1]);
		tcp_listen(port);
		printf("net: tcp listening on %s:%u\n", a, port);
		if ((err = tcp_accept(60000000)))
			return fail(9, "tcp accept", err);
		uint16_t rport;
		fmt_ip(b, tcp_peer(&rport));
		char line[128], reply[160];
		if ((err = read_line(line, sizeof(line), 10000000)))
			return fail(10, "tcp receive", err);
		snprintf(reply, sizeof(reply), "echo: %s\n", line);
		if ((err = write_all(reply)))
			return fail(10, "tcp answer", err);
		if ((err = tcp_close()))
			return fail(11, "tcp close", err);
		printf("net: tcp accepted %s:%u, got '%s', answered, closed\n", b, rport, line);
	}
	printf("net: %lu frames out, %lu in, %lu dropped, %lu bad; ok\n", net_stats.tx_frames,
	       net_stats.rx_frames, net_stats.rx_dropped, net_stats.rx_bad);
	printf("net: ok\n");
	return 0;
}

static bool static_address(const char *ip)
{
	if (!parse_ip(ip, &net_cfg.ip))
		return false;
	net_cfg.mask = 0xFFFFFF00;
	return true;
}

static int peer(int argc, char **argv)
{
	uint32_t them;
	if (argc < 3 || !static_address(argv[0]) || !parse_ip(argv[1], &them))
		return fail(1, "usage", "peer MYIP PEERIP COUNT");
	if (!open_nic())
		return 2;
	int count = atol(argv[2]), replies;
	uint64_t rtt;
	const char *err = ping(them, count, 56, &replies, &rtt);
	if (err)
		return fail(5, "ping", err);
	printf("net: ping %s: %d/%d replies, %lu us average\n", argv[1], replies, count, rtt);
	return replies == count ? 0 : 5;
}

static unsigned long answers_wanted;

static bool never(void) { return false; }

static bool answered(void) { return net_stats.echo_answered >= answers_wanted; }

static int answer(int argc, char **argv)
{
	if (argc < 2 || !static_address(argv[0]))
		return fail(1, "usage", "answer MYIP COUNT");
	if (!open_nic())
		return 2;
	answers_wanted = atol(argv[1]);
	printf("net: answering on %s\n", argv[0]);
	bool all = net_wait(answered, 60000000);
	net_wait(never, 200000);        /* the last answer out of the device before it is reset */
	printf("net: answered %lu pings; %lu frames out, %lu in\n", net_stats.echo_answered,
	       net_stats.tx_frames, net_stats.rx_frames);
	return all ? 0 : fail(5, "answer", "not all the pings came");
}

static int pingloop(int argc, char **argv)
{
	if (argc < 1)
		return fail(1, "usage", "pingloop SECONDS");
	if (!open_nic())
		return 2;
	const char *err = dhcp();
	if (err)
		return fail(3, "dhcp", err);
	char gw[16];
	fmt_ip(gw, net_cfg.gateway);
	uint64_t start = now_us(), end = start + atol(argv[0]) * 1000000ULL, last = 0;
	int sent = 0, answered = 0;
	printf("net: pinging %s for %ld s\n", gw, atol(argv[0]));
	while (now_us() < end) {
		int replies;
		uint64_t rtt;
		sent++;
		if (!ping(net_cfg.gateway, 1, 56, &replies, &rtt)) {
			answered++;
			last = now_us();
		}
		uint64_t pause = now_us() + 100000;
		while (now_us() < pause)
			net_poll();
	}
	printf("net: ping %s: %d/%d replies, the last %lu ms before the end\n", gw, answered, sent,
	       last ? (unsigned long)((end - last) / 1000) : 0);
	return answered && end - last < 1000000 ? 0 : 5;
}

/* ---- bench ---- */

static volatile bool udp_answered;
static uint16_t udp_expect_port;

static void udp_echo_reply(uint32_t src, uint16_t sport, uint16_t dport, const uint8_t *d,
			   unsigned len)
{
	if (sport == udp_expect_port)
		udp_answered = true;
}

static bool udp_done(void) { return udp_answered; }

static void bench_line(const char *name, uint64_t ops, uint64_t ns, const char *extra)
{
	printf("BENCH %s iterations=%lu ns_per_op=%lu %s\n", name, ops, ops ? ns / ops : 0, extra);
}

static const char *bench_udp(uint16_t port, unsigned rounds)
{
	uint8_t payload[64];
	memset(payload, 'u', sizeof(payload));
	udp_handler = udp_echo_reply;
	udp_expect_port = port;
	unsigned lost = 0;
	uint64_t t0 = now_us();
	for (unsigned i = 0; i < rounds; i++) {
		udp_answered = false;
		udp_send(net_cfg.gateway, 40000, port, payload, sizeof(payload));
		if (!net_wait(udp_done, 1000000) && ++lost > 10)
			return "more than 10 datagrams lost";
	}
	uint64_t us = now_us() - t0;
	char extra[80];
	snprintf(extra, sizeof(extra), "frames_per_s=%lu lost=%u",
		 (unsigned long)(2ULL * rounds * 1000000 / (us ? us : 1)), lost);
	bench_line("net-udp-rr", rounds, us * 1000, extra);
	return NULL;
}

static uint8_t pattern[16384];

static const char *bench_tcp_tx(uint16_t port, uint64_t bytes)
{
	const char *err = tcp_connect(net_cfg.gateway, port);
	if (err)
		return err;
	for (unsigned i = 0; i < sizeof(pattern); i++)
		pattern[i] = (uint8_t)(i * 7);
	uint64_t t0 = now_us(), sent = 0;
	while (sent < bytes) {
		uint64_t n = bytes - sent < sizeof(pattern) ? bytes - sent : sizeof(pattern);
		sent += tcp_write(pattern, n);
		net_poll();
		if (tcp_state() != TCP_ESTABLISHED)
			return tcp_error() ? tcp_error() : "connection closed";
	}
	if ((err = tcp_close()))
		return err;
	uint64_t us = now_us() - t0;
	char extra[80];
	snprintf(extra, sizeof(extra), "bytes=%lu MBps=%lu retransmits=%lu", bytes,
		 bytes / (us ? us : 1), net_stats.tcp_retransmits);
	bench_line("net-tcp-tx", 1, us * 1000, extra);
	return NULL;
}

static const char *bench_tcp_rx(uint16_t port, uint64_t bytes)
{
	const char *err = tcp_connect(net_cfg.gateway, port);
	if (err)
		return err;
	uint64_t t0 = now_us(), got = 0;
	for (;;) {
		int n = tcp_read(pattern, sizeof(pattern));
		if (n < 0)
			break;
		got += n;
		if (!n)
			net_poll();
	}
	uint64_t us = now_us() - t0;
	tcp_close();
	if (got != bytes)
		return "the stream ended early";
	char extra[80];
	snprintf(extra, sizeof(extra), "bytes=%lu MBps=%lu", got, got / (us ? us : 1));
	bench_line("net-tcp-rx", 1, us * 1000, extra);
	return NULL;
}

static int bench(int argc, char **argv)
{
	if (argc < 5)
		return fail(1, "usage", "bench UDPPORT SINKPORT SOURCEPORT BYTES ROUNDS");
	if (!open_nic())
		return 2;
	const char *err = dhcp();
	if (err)
		return fail(3, "dhcp", err);
	uint8_t gw[6];
	if ((err = arp_resolve(net_cfg.gateway, gw)))
		return fail(4, "arp", err);
	if ((err = bench_udp(atol(argv[0]), atol(argv[4]))))
		return fail(12, "bench udp", err);
	if ((err = bench_tcp_tx(atol(argv[1]), atol(argv[3]))))
		return fail(13, "bench tcp-tx", err);
	if ((err = bench_tcp_rx(atol(argv[2]), atol(argv[3]))))
		return fail(14, "bench tcp-rx", err);
	return 0;
}

int main(int argc, char **argv)
{
	argc--, argv++;
	if (argc >= 2 && !strcmp(argv[0], "-d")) {
		kind = argv[1];
		argc -= 2, argv += 2;
	}
	if (argc < 1)
		return fail(1, "usage", "net [-d KIND] check|peer|answer ...");
	if (!strcmp(argv[0], "check"))
		return check(argc - 1, argv + 1);
	if (!strcmp(argv[0], "peer"))
		return peer(argc - 1, argv + 1);
	if (!strcmp(argv[0], "answer"))
		return answer(argc - 1, argv + 1);
	if (!strcmp(argv[0], "bench"))
		return bench(argc - 1, argv + 1);
	if (!strcmp(argv[0], "pingloop"))
		return pingloop(argc - 1, argv + 1);
	return fail(1, "usage", "net [-d KIND] check|peer|answer ...");
}
