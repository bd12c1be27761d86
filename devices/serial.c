/* COM1 transmit and line-status reads completed in C.
 *
 * A kernel printing to a 16550 costs one exit per byte, plus a line-status
 * poll every few bytes. When the UART is in its plain state (DLAB clear, no
 * loopback, no transmit-empty interrupt), a byte written to THR needs no
 * device model: it goes into a buffer here and an eventfd wakes the thread
 * that hands it to the console, in order with the bytes Python transmits.
 * LSR is answered from the value akvm.devices.uart last published, which is only
 * non-zero while the receiver is empty and error-free (reading LSR then has
 * no side effect). Everything else goes back to the Python model. */
#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "serial.h"

#define UART_THR 0
#define UART_LSR 5

struct akvm_serial {
	pthread_mutex_t lock;		/* guards everything below */
	unsigned int port;
	int efd;
	int tx_ok;
	unsigned int lsr;
	unsigned int len;
	unsigned char buf[AKVM_SERIAL_BUF];
	struct akvm_serial_stats stats;
};

struct akvm_serial *akvm_serial_new(unsigned int port, int efd)
{
	struct akvm_serial *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	pthread_mutex_init(&s->lock, NULL);
	s->port = port;
	s->efd = efd;
	return s;
}

void akvm_serial_free(struct akvm_serial *s)
{
	if (!s)
		return;
	pthread_mutex_destroy(&s->lock);
	free(s);
}

void akvm_serial_publish(struct akvm_serial *s, int tx_ok, unsigned int lsr)
{
	pthread_mutex_lock(&s->lock);
	s->tx_ok = tx_ok;
	s->lsr = lsr & 0xff;
	pthread_mutex_unlock(&s->lock);
}

unsigned int akvm_serial_take(struct akvm_serial *s, unsigned char *out, unsigned int max)
{
	unsigned int n;

	pthread_mutex_lock(&s->lock);
	n = s->len < max ? s->len : max;
	memcpy(out, s->buf, n);
	memmove(s->buf, s->buf + n, s->len - n);
	s->len -= n;
	pthread_mutex_unlock(&s->lock);
	return n;
}

void akvm_serial_stats(struct akvm_serial *s, struct akvm_serial_stats *out)
{
	pthread_mutex_lock(&s->lock);
	*out = s->stats;
	pthread_mutex_unlock(&s->lock);
}

int akvm_serial_complete(void *opaque, void *kvm_run)
{
	struct akvm_serial *s = opaque;
	struct kvm_run *run = kvm_run;
	unsigned int port = run->io.port, count = run->io.count;
	unsigned char *data = (unsigned char *)run + run->io.data_offset;
	int done = 0;

	if (run->exit_reason != KVM_EXIT_IO || run->io.size != 1 ||
	    port < s->port + UART_THR || port > s->port + UART_LSR)
		return 0;
	pthread_mutex_lock(&s->lock);
	if (run->io.direction == KVM_EXIT_IO_OUT && port == s->port + UART_THR) {
		if (s->tx_ok && count <= AKVM_SERIAL_BUF - s->len) {
			int wake = s->len == 0;

			memcpy(s->buf + s->len, data, count);
			s->len += count;
			s->stats.tx_bytes += count;
			if (wake && s->efd >= 0) {
				uint64_t one = 1;
				/* A full eventfd counter already means "wake up". */
				(void)!write(s->efd, &one, sizeof(one));
			}
			done = 1;
		}
	} else if (run->io.direction == KVM_EXIT_IO_IN && port == s->port + UART_LSR) {
		if (s->lsr) {
			memset(data, (int)s->lsr, count);
			s->stats.lsr_reads += count;
			done = 1;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return done;
}
