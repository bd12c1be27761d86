/* Intel VT-d DMA remapping (legacy mode): driver state and interface. */
#ifndef IOMMU_H
#define IOMMU_H
#include "types.h"
#include "acpi.h"

/* Register offsets */
#define DMAR_VER        0x00
#define DMAR_CAP        0x08
#define DMAR_ECAP       0x10
#define DMAR_GCMD       0x18
#define DMAR_GSTS       0x1C
#define DMAR_RTADDR     0x20
#define DMAR_CCMD       0x28
#define DMAR_FSTS       0x34
#define DMAR_FECTL      0x38
#define DMAR_FEDATA     0x3C
#define DMAR_FEADDR     0x40
#define DMAR_FEUADDR    0x44
#define DMAR_IQH        0x80
#define DMAR_IQT        0x88
#define DMAR_IQA        0x90
#define DMAR_ICS        0x9C
#define DMAR_IECTL      0xA0
#define DMAR_IEDATA     0xA4
#define DMAR_IEADDR     0xA8
#define DMAR_IEUADDR    0xAC

/* GCMD / GSTS */
#define GCMD_TE         (1u << 31)
#define GCMD_SRTP       (1u << 30)
#define GCMD_WBF        (1u << 27)
#define GCMD_QIE        (1u << 26)
#define GCMD_IRE        (1u << 25)
#define GCMD_CFI        (1u << 23)
#define GSTS_PERSIST    (GCMD_TE | GCMD_QIE | GCMD_IRE | GCMD_CFI)

/* CAP fields */
#define CAP_ND(c)       ((c) & 7)
#define CAP_RWBF(c)     (((c) >> 4) & 1)
#define CAP_CM(c)       (((c) >> 7) & 1)
#define CAP_SAGAW(c)    (((c) >> 8) & 0x1F)
#define CAP_MGAW(c)     ((((c) >> 16) & 0x3F) + 1)
#define CAP_FRO(c)      ((((c) >> 24) & 0x3FF) * 16)
#define CAP_SLLPS(c)    (((c) >> 34) & 0xF)
#define CAP_PSI(c)      (((c) >> 39) & 1)
#define CAP_NFR(c)      ((((c) >> 40) & 0xFF) + 1)
#define CAP_MAMV(c)     (((c) >> 48) & 0x3F)
#define CAP_DWD(c)      (((c) >> 54) & 1)
#define CAP_DRD(c)      (((c) >> 55) & 1)

/* ECAP fields */
#define ECAP_C(e)       ((e) & 1)
#define ECAP_QI(e)      (((e) >> 1) & 1)
#define ECAP_DT(e)      (((e) >> 2) & 1)
#define ECAP_IR(e)      (((e) >> 3) & 1)
#define ECAP_EIM(e)     (((e) >> 4) & 1)
#define ECAP_PT(e)      (((e) >> 6) & 1)
#define ECAP_SC(e)      (((e) >> 7) & 1)
#define ECAP_IRO(e)     ((((e) >> 8) & 0x3FF) * 16)
#define ECAP_MHMV(e)    (((e) >> 20) & 0xF)

/* FSTS */
#define FSTS_PFO        (1u << 0)
#define FSTS_PPF        (1u << 1)
#define FSTS_AFO        (1u << 2)
#define FSTS_APF        (1u << 3)
#define FSTS_IQE        (1u << 4)
#define FSTS_ICE        (1u << 5)
#define FSTS_ITE        (1u << 6)
#define FSTS_W1C        (FSTS_PFO | FSTS_AFO | FSTS_APF | FSTS_IQE | FSTS_ICE | FSTS_ITE)

/* Invalidation granularities (CCMD.CIRG, IOTLB.IIRG, descriptor G) */
#define INV_GLOBAL      1
#define INV_DOMAIN      2
#define INV_DEVICE      3       /* context cache */
#define INV_PAGE        3       /* IOTLB */

/* Second-level paging entry bits; EPT tables use the same R/W/X */
#define SL_R            (1ULL << 0)
#define SL_W            (1ULL << 1)
#define SL_X            (1ULL << 2)         /* EPT execute: ignored by VT-d */
#define SL_EMT_WB       (6ULL << 3)         /* EPT memory type: ignored in legacy mode */
#define SL_PS           (1ULL << 7)

/* Context entry translation types */
#define TT_UNTRANSLATED 0
#define TT_PASSTHROUGH  2

struct iommu_fault {
	uint16_t sid;
	uint8_t reason;
	bool read;              /* T bit: 1 read request, 0 write */
	uint64_t addr;
	uint64_t tsc;
};

/* A second-level page table (one IOMMU domain). */
struct iodomain {
	uint16_t did;
	int levels;             /* 3 or 4 */
	uint64_t *top;
	bool ept_format;        /* leaves written with X and the EPT WB type, as Akaros does */
};

#define IOMMU_FAULT_LOG 16
#define IQ_ENTRIES      256     /* the invalidation queue: one page of 128-bit descriptors */

struct iommu {
	bool probed, present, enabled, qi;
	const char *absent_why;
	const struct dmar_drhd *drhd;
	int drhd_index;
	uintptr_t regs;
	uint32_t ver;
	uint64_t cap, ecap;
	unsigned fro, nfr, iro;
	uint64_t iotlb_drain;            /* DW/DR bits for IOTLB descriptors */
	int levels;                     /* default paging levels (4 if supported) */
	uint64_t *root;                 /* root table */
	uint64_t *ctx[256];             /* context tables by bus */
	uint64_t *iq;                   /* invalidation queue (256 descriptors) */
	unsigned iq_tail;
	volatile uint32_t *wait_status; /* status-write target */
	uint32_t wait_seq;
	struct iodomain identity;       /* used when ECAP.PT = 0 */
	/* fault-event and invalidation-event interrupt bookkeeping */
	volatile unsigned fault_irqs, inv_irqs, nfaults;
	volatile uint32_t last_fsts, last_ics;
	struct iommu_fault faults[IOMMU_FAULT_LOG];
	bool quiet;                     /* do not print faults from the handler */
	/* Lent to a process for a benchmark (iommu_lend): the kernel issues
	 * no invalidation and no GCMD command until it takes the unit back. */
	volatile int lent_to;           /* its pid, or 0 */
	bool lend_qi_was;               /* queued invalidation before the loan */
	/* counters */
	unsigned long inv_reg, inv_qi_desc, inv_qi_waits;
};

extern struct iommu iommu;

/* Finds the DRHD (covering `want` when given, else the first one), maps its
 * registers, reads CAP/ECAP.  Idempotent.  NULL on success, else why not. */
const char *iommu_probe(void);
/* Root + context tables, pass-through context entries (domain 1) for every
 * PCI function in scope, fault interrupts, then translation on. */
const char *iommu_enable(void);
void iommu_disable(void);
void iommu_print(void);
void iommu_print_faults(void);

uint32_t iommu_read32(unsigned off);
uint64_t iommu_read64(unsigned off);
void iommu_write32(unsigned off, uint32_t v);
void iommu_write64(unsigned off, uint64_t v);

/* True when the DRHD's device scope covers bus:dev.fn. */
bool iommu_covers(uint8_t bus, uint8_t dev, uint8_t fn);

/* Context entries.  Changing a present entry invalidates it first. */
const char *iommu_set_context(uint8_t bus, uint8_t devfn, int tt, const struct iodomain *d,
			      uint16_t did);
const char *iommu_set_passthrough(uint8_t bus, uint8_t devfn);

/* Domains: 3- or 4-level tables (0 = the default). */
const char *iodomain_init(struct iodomain *d, uint16_t did, int levels);
/* Leaf for iova -> pa with SL_R/SL_W flags (0 = not present); allocates tables. */
const char *iodomain_map(struct iodomain *d, uint64_t iova, uint64_t pa, uint64_t flags);
uint64_t *iodomain_pte(struct iodomain *d, uint64_t iova);

/* Invalidation through whichever interface is on (registers or the queue);
 * both wait for completion.  NULL or why it failed. */
const char *iommu_inv_context(int gran, uint16_t did, uint16_t sid);
const char *iommu_inv_iotlb(int gran, uint16_t did, uint64_t addr, unsigned am);

/* Register-based only (QI must be off). */
const char *iommu_reg_ccmd(int gran, uint16_t did, uint16_t sid, int *actual);
const char *iommu_reg_iotlb(int gran, uint16_t did, uint64_t addr, unsigned am, int *actual);

/* Queued invalidation. */
const char *iommu_qi_set(bool on);
bool iommu_qi_room(unsigned n);
void iommu_qi_push(uint64_t lo, uint64_t hi);
void iommu_qi_push_iotlb(int gran, uint16_t did, uint64_t addr, unsigned am);
void iommu_qi_push_pages(uint16_t did, uint64_t addr, uint64_t stride, unsigned n);
void iommu_qi_push_context(int gran, uint16_t did, uint16_t sid);
/* Appends a wait descriptor (status write; interrupt if intr), kicks the
 * queue and polls for the status.  NULL or why not. */
const char *iommu_qi_wait(bool intr);
void iommu_qi_kick(void);

/* Benchmark only (user.c, SYS_IOMMU_LEND): lend the unit to process pid
 * with queued invalidation on (qi) or off.  While lent, the invalidation,
 * context-entry and QI on/off paths above return IOMMU_LENT_ERR.
 * iommu_take_back waits for the queue to drain (recovering from a queue
 * error), takes IQT as the kernel's tail and restores the QI setting. */
const char *iommu_lend(int pid, bool qi);
const char *iommu_take_back(void);
extern const char IOMMU_LENT_ERR[];

/* Writes back CPU cache lines of table memory when ECAP.C = 0. */
void iommu_flush_cache(const void *p, size_t len);

#endif
