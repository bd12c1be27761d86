/* The parts of the Multiboot 1 information we keep (copied at entry). */
#ifndef MULTIBOOT_H
#define MULTIBOOT_H
#include "types.h"

#define MB_BOOT_MAGIC 0x2BADB002
#define MB_MAX_MMAP   64

#define MB_INFO_MEM     (1u << 0)
#define MB_INFO_CMDLINE (1u << 2)
#define MB_INFO_MMAP    (1u << 6)
#define MB_INFO_LOADER  (1u << 9)

struct mmap_region {
	uint64_t addr, len;
	uint32_t type;          /* 1 = available RAM */
};

struct bootinfo {
	uint32_t magic;
	bool valid;             /* magic matched and info pointer usable */
	uint32_t flags;
	uint32_t mem_lower, mem_upper;  /* KiB */
	char cmdline[256];
	char loader[64];
	int nmmap;
	bool mmap_truncated;
	struct mmap_region mmap[MB_MAX_MMAP];
};

extern struct bootinfo bootinfo;
void multiboot_save(uint32_t magic, uint32_t info_pa);
const char *mmap_type_name(uint32_t type);

#endif
