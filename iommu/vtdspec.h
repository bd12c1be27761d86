/* VT-d register fields, descriptor types and fault reasons that C and
 * Python share, named as in Intel's VT-d specification (chapters 6, 7, 9
 * and 10). akvm.iommu reads them through cffi; nothing repeats them. */
#ifndef AKVM_VTDSPEC_H
#define AKVM_VTDSPEC_H

/* IOTLB_REG (10.4.8.1) and IVA_REG (10.4.8.2) */
#define VTD_IOTLB_IVT (1ULL << 63)
#define VTD_IOTLB_IIRG_SHIFT 60
#define VTD_IOTLB_IAIG_SHIFT 57
#define VTD_IOTLB_IAIG_MASK (3ULL << VTD_IOTLB_IAIG_SHIFT)
#define VTD_IOTLB_DR (1ULL << 49)
#define VTD_IOTLB_DW (1ULL << 48)
#define VTD_IOTLB_DID_SHIFT 32
#define VTD_IOTLB_WRITABLE (VTD_IOTLB_IVT | 3ULL << VTD_IOTLB_IIRG_SHIFT | VTD_IOTLB_DR | \
			    VTD_IOTLB_DW | 0xFFFFULL << VTD_IOTLB_DID_SHIFT)
#define VTD_IVA_AM_MASK 0x3FULL
#define VTD_IVA_IH (1ULL << 6)
#define VTD_IVA_WRITABLE (~0xFFFULL | VTD_IVA_IH | VTD_IVA_AM_MASK)

/* IQA_REG, IQH_REG, IQT_REG (10.4.23-25) and the descriptors (6.5.2) */
#define VTD_IQA_QS_MASK 0x7
#define VTD_IQ_INDEX_MASK (0x7FFFULL << 4)
#define VTD_DESC_IOTLB 0x2
#define VTD_DESC_WAIT 0x5
#define VTD_WAIT_IF (1ULL << 4)
#define VTD_WAIT_SW (1ULL << 5)

/* Second-level paging entries (9.8) and the fault reasons a walk gives (7.1.3) */
#define VTD_SL_R (1ULL << 0)
#define VTD_SL_W (1ULL << 1)
#define VTD_SL_PS (1ULL << 7)
#define VTD_FR_ADDRESS_BEYOND_MGAW 0x4
#define VTD_FR_WRITE 0x5
#define VTD_FR_READ 0x6
#define VTD_FR_PAGING_ACCESS 0x7
#define VTD_FR_PAGING_RESERVED 0xC

#endif
