/* Virtio 1.x layouts from the specification (2.7 split virtqueues, 4.1.4
 * virtio-pci modern structures, 5.2 block device): the one copy the
 * kernel's drivers (virtio.c) and ring-3 drivers (user/vblk.c) compile
 * against.  Plain #defines: built freestanding on both sides. */
#ifndef VIRTIO_SPEC_H
#define VIRTIO_SPEC_H

/* Device types (PCI device id 0x1040 + type for modern functions). */
#define VIRTIO_ID_NET       1
#define VIRTIO_ID_BLOCK     2
#define VIRTIO_ID_CONSOLE   3
#define VIRTIO_ID_RNG       4
#define VIRTIO_PCI_VENDOR   0x1AF4
#define VIRTIO_PCI_MODERN   0x1040

/* Feature bits */
#define VIRTIO_F_VERSION_1          (1ULL << 32)
#define VIRTIO_F_ACCESS_PLATFORM    (1ULL << 33)
#define VIRTIO_BLK_F_RO             (1ULL << 5)
#define VIRTIO_BLK_F_BLK_SIZE       (1ULL << 6)
#define VIRTIO_BLK_F_FLUSH          (1ULL << 9)

/* Device status */
#define VIRTIO_STATUS_ACK           1
#define VIRTIO_STATUS_DRIVER        2
#define VIRTIO_STATUS_DRIVER_OK     4
#define VIRTIO_STATUS_FEATURES_OK   8
#define VIRTIO_STATUS_NEEDS_RESET   64
#define VIRTIO_STATUS_FAILED        128

/* virtio-pci capability kinds (cfg_type) and struct virtio_pci_cap fields */
#define VPCI_CAP_COMMON     1
#define VPCI_CAP_NOTIFY     2
#define VPCI_CAP_ISR        3
#define VPCI_CAP_DEVICE     4
#define VPCI_CAP_BAR        4       /* u8 bar */
#define VPCI_CAP_OFFSET     8       /* le32 offset within the BAR */
#define VPCI_CAP_LENGTH     12      /* le32 length */
#define VPCI_CAP_NOTIFY_MULT 16     /* notify capability: le32 notify_off_multiplier */

/* struct virtio_pci_common_cfg */
#define VPCI_DFSELECT   0x00
#define VPCI_DF         0x04
#define VPCI_GFSELECT   0x08
#define VPCI_GF         0x0C
#define VPCI_MSIX       0x10
#define VPCI_NUMQ       0x12
#define VPCI_STATUS     0x14
#define VPCI_CFGGEN     0x15
#define VPCI_QSELECT    0x16
#define VPCI_QSIZE      0x18
#define VPCI_QMSIX      0x1A
#define VPCI_QENABLE    0x1C
#define VPCI_QNOFF      0x1E
#define VPCI_QDESC      0x20
#define VPCI_QAVAIL     0x28
#define VPCI_QUSED      0x30
#define VPCI_NO_VECTOR  0xFFFF

/* Split virtqueues: descriptors are 16 bytes (le64 addr, le32 len, le16
 * flags, le16 next); avail = le16 flags, le16 idx, le16 ring[]; used =
 * le16 flags, le16 idx, {le32 id, le32 len}[]. */
#define VRING_DESC_F_NEXT           1
#define VRING_DESC_F_WRITE          2
#define VRING_AVAIL_F_NO_INTERRUPT  1

/* virtio-mmio registers (version 2; PAGESIZE, QALIGN and QPFN: legacy version 1) */
#define VMMIO_MAGIC     0x000
#define VMMIO_VERSION   0x004
#define VMMIO_DEVID     0x008
#define VMMIO_DF        0x010
#define VMMIO_DFSEL     0x014
#define VMMIO_GF        0x020
#define VMMIO_GFSEL     0x024
#define VMMIO_PAGESIZE  0x028   /* legacy */
#define VMMIO_QSEL      0x030
#define VMMIO_QNUMMAX   0x034
#define VMMIO_QNUM      0x038
#define VMMIO_QALIGN    0x03C   /* legacy */
#define VMMIO_QPFN      0x040   /* legacy */
#define VMMIO_QREADY    0x044
#define VMMIO_QNOTIFY   0x050
#define VMMIO_ISR       0x060
#define VMMIO_IACK      0x064
#define VMMIO_STATUS    0x070
#define VMMIO_QDESC     0x080
#define VMMIO_QAVAIL    0x090
#define VMMIO_QUSED     0x0A0
#define VMMIO_CFGGEN    0x0FC
#define VMMIO_CONFIG    0x100

#define VIRTIO_MMIO_MAGIC 0x74726976    /* "virt" */

/* virtio-net (5.1): features, configuration, and the header before every
 * frame (12 bytes with VIRTIO_F_VERSION_1: flags, gso_type, hdr_len,
 * gso_size, csum_start, csum_offset, num_buffers). */
#define VIRTIO_NET_F_MAC            (1ULL << 5)
#define VIRTIO_NET_F_STATUS         (1ULL << 16)
#define VIRTIO_NET_CFG_MAC          0       /* u8 mac[6] */
#define VIRTIO_NET_CFG_STATUS       6       /* le16; bit 0 link up */
#define VIRTIO_NET_HDR_LEN          12
#define VRING_USED_F_NO_NOTIFY      1

/* virtio-blk requests: 16-byte header (le32 type, le32 reserved, le64
 * sector), data, one status byte the device writes. */
#define VIRTIO_BLK_T_IN     0
#define VIRTIO_BLK_T_OUT    1
#define VIRTIO_BLK_T_FLUSH  4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_CFG_CAPACITY 0   /* le64, in 512-byte sectors */
#define VIRTIO_BLK_SECTOR   512

#endif
