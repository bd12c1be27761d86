/* The C side of akvm. This header is read both by the C compiler and by
 * cffi's cdef parser, so it holds plain declarations only. */

/* Install a no-op handler for signo (without SA_RESTART), so that a signal
 * sent to a vCPU thread makes a blocked KVM_RUN return -EINTR instead of
 * killing the process. Safe to call from any thread. Returns 0 or -errno. */
int akvm_install_kick_signal(int signo);

/* The exits C completes without Python: accesses nothing claims on a bus
 * (reads all ones, writes dropped, as vmm.bus.Bus does) and the port-0x80
 * debug port (as devices.debugport.DebugPort does). The claimed ranges
 * are a copy of the Python buses, replaced whenever a bus changes. */
struct akvm_fastpath;

struct akvm_fastpath *akvm_fastpath_new(unsigned int debug_port);
void akvm_fastpath_free(struct akvm_fastpath *fp);
/* Replace the claimed ranges of one bus (0 = port I/O, 1 = MMIO): n
 * [base, end) pairs sorted by base. Returns 0 or -ENOMEM. */
int akvm_fastpath_set_ranges(struct akvm_fastpath *fp, int bus,
			     const unsigned long long *bases,
			     const unsigned long long *ends, unsigned int n);

struct akvm_fast_stats {
	unsigned long long unclaimed_reads[2];	/* by bus */
	unsigned long long unclaimed_writes[2];
	unsigned long long debug_writes;
	unsigned long long fast_exits;		/* completed here */
	unsigned int debug_last;
};
void akvm_fastpath_stats(struct akvm_fastpath *fp, struct akvm_fast_stats *out);

/* COM1 in C (serial.c): THR writes buffered while the UART model says
 * that is safe (tx_ok), LSR reads answered with the value it published
 * (0: ask Python). The buffer's first byte writes 1 to the eventfd efd;
 * akvm_serial_take() empties it in order. devices.uart is the twin. */
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
/* 1 when the exit was completed, 0 when it belongs to Python. */
int akvm_serial_complete(struct akvm_serial *s, void *kvm_run);
/* PCI configuration in C (pciconf.c): the mechanism #1 latch (0xCF8,
 * dword accesses) and every CONFIG_DATA or ECAM access that reaches no
 * function in the `present` bitmap (bit bus << 8 | device << 3 | function),
 * as devices.pci.host.PciRoot answers them. */
struct akvm_pci_conf;
struct akvm_pci_conf_stats {
	unsigned long long latch_accesses;
	unsigned long long absent_reads;
	unsigned long long absent_writes;
};
struct akvm_pci_conf *akvm_pci_conf_new(unsigned long long ecam_base, unsigned long long ecam_size);
void akvm_pci_conf_free(struct akvm_pci_conf *c);
void akvm_pci_conf_set_present(struct akvm_pci_conf *c, unsigned int bdf, int present);
unsigned int akvm_pci_conf_latch(struct akvm_pci_conf *c);
void akvm_pci_conf_set_latch(struct akvm_pci_conf *c, unsigned int value);
void akvm_pci_conf_stats(struct akvm_pci_conf *c, struct akvm_pci_conf_stats *out);
int akvm_pci_conf_complete(struct akvm_pci_conf *c, void *kvm_run);
/* Let the fast path complete configuration exits through c (NULL: stop). */
void akvm_fastpath_set_pci_conf(struct akvm_fastpath *fp, struct akvm_pci_conf *c);

/* Let the fast path complete COM1 exits through s (NULL: stop). */
void akvm_fastpath_set_serial(struct akvm_fastpath *fp, struct akvm_serial *s);

/* Complete the exit described by kvm_run if the fast path owns it: 1 when
 * done, 0 when it belongs to Python. */
int akvm_fastpath_complete(struct akvm_fastpath *fp, void *kvm_run);

/* Run the vCPU until an exit C does not complete: returns its exit reason,
 * or -errno when KVM_RUN failed (-EINTR after a kick). *fast_exits counts
 * this vCPU's exits completed here. */
int akvm_vcpu_loop(int vcpu_fd, void *kvm_run, struct akvm_fastpath *fp,
		   unsigned long long *fast_exits);

/* Split virtqueues (virtq.c): walk the descriptor chain that starts at
 * `head` of the table at guest-physical `desc` (`size` entries), reading
 * guest memory through the host mappings of its slots. Non-empty buffers
 * go to out[] in chain order (write = device-writable); the byte totals to
 * *readable_len / *writable_len. Returns the number of buffers, or one of
 * the negative codes below; devices.virtio.queue is the Python twin. */
struct akvm_mem_slot {
	unsigned long long gpa;
	unsigned long long size;
	unsigned char *host;
};
struct akvm_vq_seg {
	unsigned long long addr;
	unsigned int len;
	unsigned int write;
};
#define AKVM_VQ_E_HEAD -1		/* head outside the table */
#define AKVM_VQ_E_NEXT -2		/* next outside the table */
#define AKVM_VQ_E_LOOP -3		/* loop, or longer than the table */
#define AKVM_VQ_E_MEMORY -4		/* a descriptor outside guest RAM */
#define AKVM_VQ_E_INDIRECT_FEATURE -5	/* VIRTIO_F_INDIRECT_DESC not negotiated */
#define AKVM_VQ_E_INDIRECT_NESTED -6
#define AKVM_VQ_E_INDIRECT_NEXT -7	/* INDIRECT together with NEXT */
#define AKVM_VQ_E_INDIRECT_SIZE -8
#define AKVM_VQ_E_INDIRECT_ADDR -9
#define AKVM_VQ_E_WRAPS -10		/* a buffer wrapping the address space */
#define AKVM_VQ_E_READ_AFTER_WRITE -11
#define AKVM_VQ_E_TOO_LONG -12		/* more than 4 GiB one way */
#define AKVM_VQ_E_TOO_MANY -13		/* more buffers than out[] holds */
int akvm_vq_walk(const struct akvm_mem_slot *slots, unsigned int nslots,
		 unsigned long long desc, unsigned int size, unsigned int head,
		 int indirect_ok, struct akvm_vq_seg *out, unsigned int max_out,
		 unsigned long long *readable_len, unsigned long long *writable_len);

/* virtio-blk's request queue (blkq.c): one round of serving a queue with
 * direct DMA, as VirtioDevice.serve() does with VirtioBlk.handle() (the
 * Python twin): notifications off, every available IN, OUT, FLUSH, GET_ID
 * or unsupported request done in order and put on the used ring, then
 * notifications on. It stops, leaving the request unpopped, at one for
 * Python: any other type, or anything Python reports or refuses. The
 * queue's state travels in akvm_blkq_run, in and out. akvm_blkq_stop()
 * (a reset) returns once the queue will not touch guest memory again. */
#define AKVM_BLKQ_MAX_SEGS 1024		/* buffers per chain (IOV_MAX); more: Python */
#define AKVM_BLKQ_ID_BYTES 20
struct akvm_blkq_config {
	unsigned long long desc, driver, device;	/* an activated Virtqueue's */
	unsigned int size;
	int indirect, event_idx;		/* VIRTIO_F_INDIRECT_DESC, _EVENT_IDX */
	int fd;					/* the image */
	unsigned long long capacity;		/* in 512-byte sectors */
	int readonly;
	int write_through;			/* fdatasync each write: no VIRTIO_BLK_F_FLUSH */
	unsigned char id[AKVM_BLKQ_ID_BYTES];	/* GET_ID's answer, zero-padded */
};
struct akvm_blkq_run {
	unsigned int last_avail, used_idx;	/* in and out, as in Virtqueue */
	int signalled_used;			/* in and out; -1: none yet */
	unsigned int completed;			/* out: requests put on the used ring */
	int notify;				/* out: the driver wants an interrupt */
	int error;				/* out: errno of the last failed I/O */
	unsigned long long io_errors, reads, writes, flushes, bytes_read, bytes_written;
};
#define AKVM_BLKQ_DONE 0	/* no request left, notifications on */
#define AKVM_BLKQ_AGAIN 1	/* more came in during the round: call again */
#define AKVM_BLKQ_REQUEST 2	/* the next available request is Python's */
#define AKVM_BLKQ_RING 3	/* a ring word is out of reach: Python serves the queue */
#define AKVM_BLKQ_STOPPED 4	/* akvm_blkq_stop() was called */
struct akvm_blkq;
struct akvm_blkq *akvm_blkq_new(const struct akvm_blkq_config *config,
				const struct akvm_mem_slot *slots, unsigned int nslots);
void akvm_blkq_free(struct akvm_blkq *q);
void akvm_blkq_stop(struct akvm_blkq *q);
int akvm_blkq_serve(struct akvm_blkq *q, struct akvm_blkq_run *run);

/* VT-d second-level walk (slwalk.c): walk the `levels`-level table at
 * `table` for `address`, reading entries through the slots above. Returns
 * 0 with the page in *out, or the VT-d fault reason (4, 5, 6, 7 or 0xC);
 * on a fault out->level / pte / entry say where (entry only once read).
 * iommu.translate.walk_python() is the Python twin. */
struct akvm_sl_leaf {
	unsigned long long iova;	/* first byte of the page, device side */
	unsigned long long frame;	/* first byte of the page, guest-physical */
	unsigned long long pte;		/* address of the last entry looked at */
	unsigned long long entry;	/* its value */
	unsigned int shift;		/* 12, 21 or 30 */
	unsigned int read, write;
	unsigned int level;		/* level of the last entry looked at */
};
#define AKVM_SL_MAX_LEVELS 6
#define AKVM_SL_E_ARGS -1		/* levels outside 1..AKVM_SL_MAX_LEVELS */
int akvm_sl_walk(const struct akvm_mem_slot *slots, unsigned int nslots,
		 unsigned long long table, unsigned int levels, unsigned int width,
		 unsigned int haw, unsigned int large_pages,
		 unsigned long long address, int write, struct akvm_sl_leaf *out);

/* The IOTLB's table (iotlb.c): which (domain, page size, page number)
 * entries exist, in which slot (0..capacity-1), in LRU order; the caller
 * keeps what each slot holds. iommu.cache.PyIotlb is the Python twin.
 * lookup() tries 4 KiB, 2 MiB then 1 GiB pages and returns a slot or -1;
 * insert() returns the slot (and in *evicted the one it evicted, or -1);
 * invalidate() writes the slots it emptied to removed[] and returns their
 * number (-ENOSPC when max is too small); order() lists slots LRU first. */
#define AKVM_IOTLB_GLOBAL 1
#define AKVM_IOTLB_DOMAIN 2
#define AKVM_IOTLB_PAGE 3
struct akvm_iotlb;
struct akvm_iotlb *akvm_iotlb_new(unsigned int capacity);
void akvm_iotlb_free(struct akvm_iotlb *t);
int akvm_iotlb_lookup(struct akvm_iotlb *t, unsigned int did, unsigned long long iova);
int akvm_iotlb_insert(struct akvm_iotlb *t, unsigned int did, unsigned long long iova,
		      unsigned int shift, int *evicted);
int akvm_iotlb_invalidate(struct akvm_iotlb *t, int granularity, unsigned int did,
			  unsigned long long address, unsigned int address_mask,
			  int *removed, unsigned int max);
/* One invalidation request as the unit carries it out (iommu.invalidation.
 * Invalidator.iotlb's twin): without PSI a page request is done for the
 * domain, an address mask above MAMV is invalid. Returns the granularity
 * done, 0 when invalid, -1 when it would empty more than max slots; the
 * slots emptied are removed[0 .. *emptied). */
int akvm_iotlb_request(struct akvm_iotlb *t, unsigned int granularity, unsigned int did,
		       unsigned long long address, unsigned int address_mask, int psi,
		       unsigned int mamv, int *removed, unsigned int max, unsigned int *emptied);
int akvm_iotlb_order(const struct akvm_iotlb *t, int *out, unsigned int max);

/* Queued invalidation (qi.c): carry out descriptors from head towards tail
 * of the `entries`-entry queue at guest-physical `base`, as long as they
 * are well-formed IOTLB descriptors (on tlb; psi = CAP.PSI, mamv =
 * CAP.MAMV) or wait descriptors without IF; stop at the first other one.
 * out->head is where it stopped; the IOTLB slots emptied are in removed[]
 * (out->removed of them); iotlb[g] counts IOTLB descriptors by the
 * granularity done. iommu.invalidation.Invalidator is the twin. */
struct akvm_qi_result {
	unsigned int head;
	unsigned int removed;
	unsigned long long descriptors;
	unsigned long long iotlb[4];
	unsigned long long waits_status;
	unsigned long long waits_none;
};
void akvm_qi_process(const struct akvm_mem_slot *slots, unsigned int nslots,
		     struct akvm_iotlb *tlb, unsigned long long base, unsigned int entries,
		     unsigned int head, unsigned int tail, int psi, unsigned int mamv,
		     int *removed, unsigned int max_removed, struct akvm_qi_result *out);

/* The VT-d unit's invalidation in C (vtddoor.c): IQT writes carried out by
 * qi.c while Python has armed the queue, and the IVA and IOTLB registers
 * (writes, and the IOTLB register's reads a driver polls) while it has
 * armed the registers; on the unit's RAM view and IOTLB table, with its
 * CAP.PSI and MAMV. Its lock is the unit's lock: Python holds it for
 * publish and take (iommu.doorbell.QueueDoorbell); lock returns 1 if C did
 * work since the last take. take copies C's state and the work summed
 * since (emptied IOTLB slots are removed[0 .. sum.removed); register
 * invalidations by granularity in reg_iotlb, which take resets). */
struct akvm_vtd_door;
struct akvm_vtd_queue {
	int armed;			/* the queue */
	unsigned long long base;	/* guest-physical */
	unsigned int entries;
	unsigned int head;		/* IQH's index */
	unsigned long long iqt;		/* IQT's value */
	int regs_armed;			/* IVA and IOTLB */
	unsigned long long iva;
	unsigned long long iotlb;
	unsigned long long reg_iotlb[4];
};
struct akvm_vtd_door *akvm_vtd_door_new(unsigned long long iqt_gpa, unsigned long long iva_gpa,
					 const struct akvm_mem_slot *slots, unsigned int nslots,
					 struct akvm_iotlb *tlb, int *removed, unsigned int capacity,
					 int psi, unsigned int mamv);
void akvm_vtd_door_free(struct akvm_vtd_door *d);
int akvm_vtd_door_lock(struct akvm_vtd_door *d);
void akvm_vtd_door_unlock(struct akvm_vtd_door *d);
void akvm_vtd_door_publish(struct akvm_vtd_door *d, const struct akvm_vtd_queue *q);
void akvm_vtd_door_take(struct akvm_vtd_door *d, struct akvm_vtd_queue *q,
			struct akvm_qi_result *sum);
int akvm_vtd_door_complete(struct akvm_vtd_door *d, void *kvm_run);
void akvm_fastpath_set_vtd(struct akvm_fastpath *fp, struct akvm_vtd_door *d);
