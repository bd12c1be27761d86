/*
 * Copy what we need out of the Multiboot 1 information at entry: the
 * loader's pages (often low memory) are reused later, e.g. by the AP
 * trampoline.
 */
#include "multiboot.h"
#include "lib.h"
#include "mm.h"

struct mb_info {
	uint32_t flags;
	uint32_t mem_lower, mem_upper;
	uint32_t boot_device;
	uint32_t cmdline;
	uint32_t mods_count, mods_addr;
	uint32_t syms[4];
	uint32_t mmap_length, mmap_addr;
	uint32_t drives_length, drives_addr;
	uint32_t config_table;
	uint32_t boot_loader_name;
} PACKED;

struct mb_mmap {
	uint32_t size;          /* of the rest of the entry */
	uint64_t addr, len;
	uint32_t type;
} PACKED;

struct bootinfo bootinfo;

static void copy_str(char *dst, size_t n, uint32_t pa)
{
	const char *s = PHYS_TO_VIRT(pa);
	size_t i;
	if (!pa)
		return;
	for (i = 0; i + 1 < n && s[i]; i++)
		dst[i] = s[i];
	dst[i] = 0;
}

void multiboot_save(uint32_t magic, uint32_t info_pa)
{
	bootinfo.magic = magic;
	if (magic != MB_BOOT_MAGIC || info_pa == 0)
		return;
	const struct mb_info *mbi = PHYS_TO_VIRT(info_pa);
	bootinfo.valid = true;
	bootinfo.flags = mbi->flags;
	if (mbi->flags & MB_INFO_MEM) {
		bootinfo.mem_lower = mbi->mem_lower;
		bootinfo.mem_upper = mbi->mem_upper;
	}
	if (mbi->flags & MB_INFO_CMDLINE)
		copy_str(bootinfo.cmdline, sizeof(bootinfo.cmdline), mbi->cmdline);
	if (mbi->flags & MB_INFO_LOADER)
		copy_str(bootinfo.loader, sizeof(bootinfo.loader), mbi->boot_loader_name);
	if (mbi->flags & MB_INFO_MMAP) {
		uint32_t off = 0;
		while (off + sizeof(struct mb_mmap) <= mbi->mmap_length) {
			const struct mb_mmap *e = PHYS_TO_VIRT(mbi->mmap_addr + off);
			if (e->size < 20)
				break;          /* malformed: would not advance sanely */
			if (bootinfo.nmmap == MB_MAX_MMAP) {
				bootinfo.mmap_truncated = true;
				break;
			}
			struct mmap_region *r = &bootinfo.mmap[bootinfo.nmmap++];
			r->addr = e->addr;
			r->len = e->len;
			r->type = e->type;
			off += e->size + 4;
		}
	}
}

const char *mmap_type_name(uint32_t type)
{
	switch (type) {
	case 1: return "available";
	case 2: return "reserved";
	case 3: return "ACPI reclaimable";
	case 4: return "ACPI NVS";
	case 5: return "bad";
	default: return "unknown";
	}
}
