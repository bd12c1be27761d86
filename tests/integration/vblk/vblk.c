/*
 * vblk: drive akvm's virtio-blk over virtio-mmio version 2 (virtio 1.2, 4.2)
 * from a bare 32-bit kernel, for the data-safety test.  The command line is
 * "SEED SECTORS": it writes SECTORS sectors of a pattern made from SEED at
 * sector 0, flushes, reads them back, prints "vblk: flushed SEED" (or what
 * went wrong) on COM1, and halts; the test then kills akvm with SIGKILL.
 * One split virtqueue of 8 entries, completion polled on the used ring.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define MMIO_BASE 0xF0000000u           /* layout.VIRTIO_MMIO_BASE: the first slot */
#define COM1 0x3F8

enum {
	MagicValue = 0x000, Version = 0x004, DeviceID = 0x008, DeviceFeatures = 0x010,
	DeviceFeaturesSel = 0x014, DriverFeatures = 0x020, DriverFeaturesSel = 0x024,
	QueueSel = 0x030, QueueNumMax = 0x034, QueueNum = 0x038, QueueReady = 0x044,
	QueueNotify = 0x050, Status = 0x070, QueueDescLow = 0x080, QueueDescHigh = 0x084,
	QueueDriverLow = 0x090, QueueDriverHigh = 0x094, QueueDeviceLow = 0x0A0,
	QueueDeviceHigh = 0x0A4,
};
#define ACKNOWLEDGE 1
#define DRIVER 2
#define DRIVER_OK 4
#define FEATURES_OK 8
#define VIRTIO_BLK_F_FLUSH 9            /* word 0 */
#define VIRTIO_F_VERSION_1 0            /* bit 32: word 1, bit 0 */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define QSIZE 8
#define MAX_SECTORS 64

struct virtq_desc { u64 addr; u32 len; u16 flags; u16 next; };
struct virtq_avail { u16 flags, idx, ring[QSIZE], used_event; };
struct virtq_used_elem { u32 id, len; };
struct virtq_used { u16 flags, idx; struct virtq_used_elem ring[QSIZE]; u16 avail_event; };
struct blk_req { u32 type, reserved; u64 sector; };

static struct virtq_desc desc[QSIZE] __attribute__((aligned(16)));
static struct virtq_avail avail __attribute__((aligned(2)));
static struct virtq_used used __attribute__((aligned(4)));
static struct blk_req hdr;
static volatile u8 status;
static u8 data[MAX_SECTORS * 512], back[MAX_SECTORS * 512];

static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 rd(u32 reg) { return *(volatile u32 *)(MMIO_BASE + reg); }
static inline void wr(u32 reg, u32 v) { *(volatile u32 *)(MMIO_BASE + reg) = v; }

static void putc(char c) { while (!(inb(COM1 + 5) & 0x20)) ; outb(COM1, c); }
static void puts(const char *s) { while (*s) putc(*s++); }
static void putn(u32 n) { char b[12]; int i = 0; do b[i++] = '0' + n % 10; while (n /= 10); while (i) putc(b[--i]); }

static u32 parse(const char **s)
{
	u32 v = 0;
	while (**s == ' ') (*s)++;
	while (**s >= '0' && **s <= '9') v = v * 10 + (u32)(*(*s)++ - '0');
	return v;
}

static int fail(const char *why) { puts("vblk: FAIL "); puts(why); putc('\n'); return 1; }

/* One request: header, optional data, status; waits for the used ring. */
static int request(u32 type, u64 sector, u8 *buf, u32 len)
{
	static u16 next_avail;
	int n = 0;
	hdr.type = type;
	hdr.reserved = 0;
	hdr.sector = sector;
	status = 0xFF;
	desc[n] = (struct virtq_desc){ (u32)&hdr, sizeof hdr, VIRTQ_DESC_F_NEXT, 1 }; n++;
	if (len) {
		desc[n] = (struct virtq_desc){ (u32)buf, len,
			VIRTQ_DESC_F_NEXT | (type == VIRTIO_BLK_T_IN ? VIRTQ_DESC_F_WRITE : 0), 2 };
		n++;
	}
	desc[n] = (struct virtq_desc){ (u32)&status, 1, VIRTQ_DESC_F_WRITE, 0 };
	avail.ring[next_avail % QSIZE] = 0;
	asm volatile("" ::: "memory");
	avail.idx = ++next_avail;
	asm volatile("mfence" ::: "memory");
	wr(QueueNotify, 0);
	while (*(volatile u16 *)&used.idx != next_avail)
		asm volatile("pause");
	return status;
}

int main(const u32 *mbi)
{
	const char *cmdline = (mbi[0] & 4) ? (const char *)mbi[4] : "";
	u32 seed = parse(&cmdline), sectors = parse(&cmdline);
	if (!sectors || sectors > MAX_SECTORS)
		sectors = 8;
	if (rd(MagicValue) != 0x74726976 || rd(Version) != 2 || rd(DeviceID) != 2)
		return fail("no virtio-blk on virtio-mmio at 0xf0000000");
	wr(Status, 0);
	wr(Status, ACKNOWLEDGE | DRIVER);
	wr(DeviceFeaturesSel, 0);
	if (!(rd(DeviceFeatures) & (1u << VIRTIO_BLK_F_FLUSH)))
		return fail("no VIRTIO_BLK_F_FLUSH");
	wr(DriverFeaturesSel, 0);
	wr(DriverFeatures, 1u << VIRTIO_BLK_F_FLUSH);
	wr(DriverFeaturesSel, 1);
	wr(DriverFeatures, 1u << VIRTIO_F_VERSION_1);
	wr(Status, ACKNOWLEDGE | DRIVER | FEATURES_OK);
	if (!(rd(Status) & FEATURES_OK))
		return fail("FEATURES_OK refused");
	wr(QueueSel, 0);
	if (rd(QueueNumMax) < QSIZE)
		return fail("queue too small");
	wr(QueueNum, QSIZE);
	avail.flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
	wr(QueueDescLow, (u32)desc); wr(QueueDescHigh, 0);
	wr(QueueDriverLow, (u32)&avail); wr(QueueDriverHigh, 0);
	wr(QueueDeviceLow, (u32)&used); wr(QueueDeviceHigh, 0);
	wr(QueueReady, 1);
	wr(Status, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);

	for (u32 i = 0; i < sectors * 512; i++)
		data[i] = (u8)(seed + (i / 512) * 31 + i);
	if (request(VIRTIO_BLK_T_OUT, 0, data, sectors * 512))
		return fail("write");
	if (request(VIRTIO_BLK_T_FLUSH, 0, 0, 0))
		return fail("flush");
	if (request(VIRTIO_BLK_T_IN, 0, back, sectors * 512))
		return fail("read");
	for (u32 i = 0; i < sectors * 512; i++)
		if (back[i] != data[i])
			return fail("read back differs");
	puts("vblk: flushed ");
	putn(seed);
	putc('\n');
	return 0;
}
