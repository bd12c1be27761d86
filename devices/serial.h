/* COM1's transmit path in C (serial.c): THR writes buffered while the UART
 * model says that is safe (tx_ok), LSR reads answered with the value it
 * published (0: ask Python). The buffer's first byte writes 1 to the
 * eventfd efd; akvm_serial_take() empties it in order. akvm.devices.uart
 * is the twin, akvm.devices.serial the Python handle. */
#ifndef AKVM_SERIAL_H
#define AKVM_SERIAL_H

#define AKVM_SERIAL_BUF 4096
struct akvm_serial;
struct akvm_serial_stats {
	unsigned long long tx_bytes;	/* THR writes buffered here */
	unsigned long long lsr_reads;	/* LSR reads answered here */
};
struct akvm_serial *akvm_serial_new(unsigned int port, int efd);
void akvm_serial_free(struct akvm_serial *s);
void akvm_serial_publish(struct akvm_serial *s, int tx_ok, unsigned int lsr);
unsigned int akvm_serial_take(struct akvm_serial *s, unsigned char *out, unsigned int max);
void akvm_serial_stats(struct akvm_serial *s, struct akvm_serial_stats *out);
/* An akvm_exit_fn (runloop.h) for the UART's eight ports; opaque is the akvm_serial. */
int akvm_serial_complete(void *opaque, void *kvm_run);

#endif
