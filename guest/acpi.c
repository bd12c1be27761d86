/*
 * ACPI table discovery the way Akaros does it: RSDP in the BIOS area
 * 0xE0000-0xFFFFF (then the EBDA), XSDT preferred over RSDT, checksums
 * verified (a table with a bad checksum is listed but not used).  We
 * record the MADT (cores, IOAPICs, ISA overrides), MCFG (ECAM), DMAR
 * (DRHD register bases) and FADT (PM1 control, DSDT).
 */
#include "acpi.h"
#include "lib.h"
#include "mm.h"

struct rsdp {
	char sig[8];
	uint8_t csum;
	char oem[6];
	uint8_t rev;
	uint32_t rsdt;
	uint32_t len;
	uint64_t xsdt;
	uint8_t xcsum;
	uint8_t res[3];
} PACKED;

struct sdt {
	char sig[4];
	uint32_t len;
	uint8_t rev, csum;
	char oem[6], oem_table[8];
	uint32_t oem_rev, creator, creator_rev;
} PACKED;

#define RSDP_SIG  0x2052545020445352ULL         /* "RSD PTR " */
#define SDT_HDR   36
#define MAX_TABLE_LEN (16u << 20)

struct acpi_info acpi;

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; __builtin_memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; __builtin_memcpy(&v, p, 8); return v; }

/*
 * Byte sum mod 256, 32 bytes per step: ring-0 instructions are expensive
 * when emulated.  Even and odd bytes are added into 16-bit lanes, which
 * are folded every 1 KiB, before a lane can overflow (32 steps * 4 words
 * * 510 < 65536).
 */
uint8_t acpi_checksum(const void *p, size_t len)
{
	const uint8_t *b = p, *end = b + len;
	const uint64_t m = 0x00FF00FF00FF00FFULL;
	uint64_t total = 0;

	while (end - b >= 32) {
		const uint8_t *stop = b + MIN((size_t)(end - b) & ~(size_t)31, 1024);
		uint64_t lanes = 0;
		for (; b < stop; b += 32) {
			uint64_t w0 = rd64(b), w1 = rd64(b + 8), w2 = rd64(b + 16), w3 = rd64(b + 24);
			lanes += (w0 & m) + ((w0 >> 8) & m) + (w1 & m) + ((w1 >> 8) & m) +
				 (w2 & m) + ((w2 >> 8) & m) + (w3 & m) + ((w3 >> 8) & m);
		}
		total += (lanes & 0xFFFF) + ((lanes >> 16) & 0xFFFF) +
			 ((lanes >> 32) & 0xFFFF) + (lanes >> 48);
	}
	while (b < end)
		total += *b++;
	return (uint8_t)total;
}

/* Next 8-byte-aligned "RSD PTR " in [a, end), or end.  One REPNE SCASQ
 * is a single (emulated) instruction, far cheaper than a C loop. */
static uint64_t find_sig(uint64_t a, uint64_t end)
{
	uint64_t n = (end - a) / 8;
	if (!n)
		return end;
	asm volatile("repne scasq"
		     : "+D"(a), "+c"(n)
		     : "a"(RSDP_SIG)
		     : "cc", "memory");
	/* RDI is one past the last word compared. */
	return *(const volatile uint64_t *)(a - 8) == RSDP_SIG ? a - 8 : end;
}

static const struct rsdp *scan_rsdp(uint64_t start, uint64_t end)
{
	for (uint64_t a = (start + 15) & ~15ULL; a + 20 <= end; a += 16) {
		a = find_sig(a, end);
		if (a + 20 > end)
			break;
		if (a & 15)
			continue;               /* RSDPs are 16-byte aligned */
		const struct rsdp *r = PHYS_TO_VIRT(a);
		if (acpi_checksum(r, 20) != 0)
			continue;
		if (r->rev >= 2 && (r->len < sizeof(*r) || r->len > 4096 ||
				    acpi_checksum(r, r->len) != 0))
			continue;
		return r;
	}
	return NULL;
}

static const struct rsdp *find_rsdp(void)
{
	const struct rsdp *r = scan_rsdp(0xE0000, 0x100000);
	if (r)
		return r;
	/* SeaBIOS may also put it in the first KiB of the EBDA. */
	uintptr_t bda = 0x40E;          /* BIOS data area: EBDA segment */
	asm("" : "+r"(bda));            /* a real address, not a null deref */
	uint64_t ebda = (uint64_t)*(volatile uint16_t *)bda << 4;
	if (ebda >= 0x80000 && ebda < 0xA0000)
		return scan_rsdp(ebda, ebda + 1024);
	return NULL;
}

/* A header we can safely read: mapped, sane length. */
static const struct sdt *map_sdt(uint64_t pa)
{
	if (!pa || pa + SDT_HDR > PHYS_LIMIT)
		return NULL;
	const struct sdt *t = PHYS_TO_VIRT(pa);
	if (t->len < SDT_HDR || t->len > MAX_TABLE_LEN || pa + t->len > PHYS_LIMIT)
		return NULL;
	return t;
}

/*
 * Records a table.  With verify, the checksum is checked now and a bad
 * table is not returned for parsing; otherwise (the large DSDT, only
 * needed for poweroff) it is checked on first use by acpi_table_ok().
 */
static const struct sdt *add_table(uint64_t pa, bool verify)
{
	const struct sdt *t = map_sdt(pa);
	if (!t || acpi.ntables == ACPI_MAX_TABLES)
		return NULL;
	struct acpi_table *e = &acpi.tables[acpi.ntables++];
	memcpy(e->sig, t->sig, 4);
	e->sig[4] = 0;
	e->pa = pa;
	e->len = t->len;
	e->rev = t->rev;
	if (verify && !acpi_table_ok(e)) {
		kprintf("ACPI: %s at 0x%lx has a bad checksum, ignored\n", e->sig, pa);
		return NULL;
	}
	return t;
}

bool acpi_table_ok(struct acpi_table *t)
{
	if (!t->checked) {
		t->csum_ok = acpi_checksum(PHYS_TO_VIRT(t->pa), t->len) == 0;
		t->checked = true;
	}
	return t->csum_ok;
}

static void parse_madt(const struct sdt *t)
{
	const uint8_t *base = (const uint8_t *)t;
	const uint8_t *p = base + 44, *end = base + t->len;

	acpi.have_madt = true;
	acpi.lapic_pa = rd32(base + 36);
	for (; p + 2 <= end; p += p[1]) {
		uint8_t type = p[0], len = p[1];
		if (len < 2 || p + len > end)
			break;
		switch (type) {
		case 0:         /* processor local APIC */
		case 9: {       /* processor local x2APIC */
			if ((type == 0 && len < 8) || (type == 9 && len < 16))
				break;
			uint32_t id = type == 0 ? p[3] : rd32(p + 4);
			uint32_t flags = type == 0 ? rd32(p + 4) : rd32(p + 8);
			uint32_t uid = type == 0 ? p[2] : rd32(p + 12);
			if (!(flags & 1))
				break;          /* disabled (maybe online-capable) */
			bool dup = false;
			for (int i = 0; i < acpi.nlapic; i++)
				dup |= acpi.lapics[i].apic_id == id;
			if (!dup && acpi.nlapic < MAX_CPUS)
				acpi.lapics[acpi.nlapic++] = (struct madt_lapic){ id, uid, flags };
			break;
		}
		case 1:         /* I/O APIC */
			if (len >= 12 && acpi.nioapic < (int)ARRAY_SIZE(acpi.ioapics))
				acpi.ioapics[acpi.nioapic++] = (struct madt_ioapic){
					p[2], rd32(p + 4), rd32(p + 8) };
			break;
		case 2:         /* interrupt source override */
			if (len >= 10 && acpi.niso < (int)ARRAY_SIZE(acpi.isos))
				acpi.isos[acpi.niso++] = (struct madt_iso){
					p[2], p[3], rd32(p + 4), rd16(p + 8) };
			break;
		case 5:         /* local APIC address override */
			if (len >= 12 && rd64(p + 4) < PHYS_LIMIT)
				acpi.lapic_pa = (uint32_t)rd64(p + 4);
			break;
		}
	}
}

static void parse_mcfg(const struct sdt *t)
{
	const uint8_t *base = (const uint8_t *)t;
	for (uint32_t off = 44; off + 16 <= t->len; off += 16) {
		if (acpi.nmcfg == (int)ARRAY_SIZE(acpi.mcfg))
			break;
		const uint8_t *e = base + off;
		acpi.mcfg[acpi.nmcfg++] = (struct mcfg_region){
			rd64(e), rd16(e + 8), e[10], e[11] };
	}
}

static void parse_dmar(const struct sdt *t)
{
	const uint8_t *base = (const uint8_t *)t;
	const uint8_t *p = base + 48, *end = base + t->len;

	if (t->len < 48)
		return;
	acpi.have_dmar = true;
	acpi.dmar_haw = base[36] + 1;
	acpi.dmar_flags = base[37];
	for (; p + 4 <= end; p += rd16(p + 2)) {
		uint16_t type = rd16(p), len = rd16(p + 2);
		if (len < 4 || p + len > end)
			break;
		/* DRHDs and their device scopes; RMRR/ATSR/RHSA/ANDD are skipped. */
		if (type == 0 && len >= 16 && acpi.ndrhd < (int)ARRAY_SIZE(acpi.drhd)) {
			struct dmar_drhd *d = &acpi.drhd[acpi.ndrhd++];
			d->base = rd64(p + 8);
			d->seg = rd16(p + 6);
			d->flags = p[4];
			d->nscopes = d->nkept = 0;
			for (const uint8_t *sc = p + 16; sc + 6 <= p + len && sc[1] >= 6 &&
			     sc + sc[1] <= p + len; sc += sc[1]) {
				d->nscopes++;
				if (d->nkept == DMAR_MAX_SCOPES)
					continue;
				struct dmar_scope *s = &d->scopes[d->nkept++];
				s->type = sc[0];
				s->enum_id = sc[4];
				s->start_bus = sc[5];
				s->npath = 0;
				for (int i = 6; i + 2 <= sc[1] && s->npath < DMAR_MAX_PATH; i += 2) {
					s->path[s->npath][0] = sc[i];
					s->path[s->npath][1] = sc[i + 1];
					s->npath++;
				}
			}
		}
	}
}

/* A System I/O generic address structure's port, or 0. */
static uint32_t gas_port(const uint8_t *gas)
{
	return gas[0] == 1 && rd64(gas + 4) < 0x10000 ? (uint32_t)rd64(gas + 4) : 0;
}

static void parse_fadt(const struct sdt *t)
{
	const uint8_t *b = (const uint8_t *)t;
	uint32_t len = t->len;

	if (len < 116)
		return;
	acpi.have_fadt = true;
	acpi.smi_cmd = rd32(b + 48);
	acpi.acpi_enable = b[52];
	acpi.pm1a_cnt = rd32(b + 64);
	acpi.pm1b_cnt = rd32(b + 68);
	if (!acpi.pm1a_cnt && len >= 184)
		acpi.pm1a_cnt = gas_port(b + 172);
	if (!acpi.pm1b_cnt && len >= 196)
		acpi.pm1b_cnt = gas_port(b + 184);
	/* Hardware-reduced platforms sleep through SLEEP_CONTROL_REG. */
	if (len >= 256 && (b[244] == 0 || b[244] == 1) && rd64(b + 248)) {
		acpi.sleep_ctl_io = b[244] == 1;
		acpi.sleep_ctl = rd64(b + 248);
	}
	acpi.dsdt_pa = rd32(b + 40);
	if (len >= 148 && rd64(b + 140))
		acpi.dsdt_pa = rd64(b + 140);
	add_table(acpi.dsdt_pa, false);
}

void acpi_init(void)
{
	const struct rsdp *r = find_rsdp();
	if (!r) {
		kprintf("ACPI: no ACPI (no RSDP found)\n");
		return;
	}
	acpi.present = true;
	acpi.rsdp_pa = (uint64_t)(uintptr_t)r;
	acpi.rsdp_rev = r->rev;
	memcpy(acpi.oem, r->oem, 6);

	const struct sdt *root = NULL;
	if (r->rev >= 2 && r->xsdt) {
		root = map_sdt(r->xsdt);
		if (root && memcmp(root->sig, "XSDT", 4) == 0) {
			acpi.use_xsdt = true;
			acpi.root_pa = r->xsdt;
		} else {
			root = NULL;
		}
	}
	if (!root) {
		root = map_sdt(r->rsdt);
		if (!root || memcmp(root->sig, "RSDT", 4) != 0) {
			kprintf("ACPI: RSDP at 0x%lx but no usable XSDT/RSDT\n", acpi.rsdp_pa);
			return;
		}
		acpi.root_pa = r->rsdt;
	}
	if (!add_table(acpi.root_pa, true))
		return;

	unsigned esize = acpi.use_xsdt ? 8 : 4;
	unsigned n = (root->len - SDT_HDR) / esize;
	const uint8_t *ents = (const uint8_t *)root + SDT_HDR;
	for (unsigned i = 0; i < n; i++) {
		uint64_t pa = esize == 8 ? rd64(ents + 8 * i) : rd32(ents + 4 * i);
		const struct sdt *t = add_table(pa, true);
		if (!t)
			continue;
		if (!memcmp(t->sig, "APIC", 4))
			parse_madt(t);
		else if (!memcmp(t->sig, "MCFG", 4))
			parse_mcfg(t);
		else if (!memcmp(t->sig, "DMAR", 4))
			parse_dmar(t);
		else if (!memcmp(t->sig, "FACP", 4))
			parse_fadt(t);
	}

	/* One kprintf: each call costs about 100 instructions before its
	 * first byte, and ring 0 may be emulated. */
	char sigs[ACPI_MAX_TABLES * 5 + 1], *p = sigs;
	for (int i = 1; i < acpi.ntables; i++) {
		*p++ = ' ';
		memcpy(p, acpi.tables[i].sig, 4);
		p += 4;
	}
	*p = 0;
	kprintf("ACPI: RSDP rev %u at 0x%lx, %s:%s\n", acpi.rsdp_rev, acpi.rsdp_pa,
		acpi.use_xsdt ? "XSDT" : "RSDT", sigs);
}

const struct acpi_table *acpi_find(const char *sig)
{
	for (int i = 0; i < acpi.ntables; i++)
		if (!memcmp(acpi.tables[i].sig, sig, 4))
			return &acpi.tables[i];
	return NULL;
}

uint32_t acpi_isa_irq_to_gsi(uint8_t irq, uint16_t *flags)
{
	*flags = 0;             /* conforms to ISA: edge, active high */
	for (int i = 0; i < acpi.niso; i++) {
		if (acpi.isos[i].bus == 0 && acpi.isos[i].irq == irq) {
			*flags = acpi.isos[i].flags;
			return acpi.isos[i].gsi;
		}
	}
	return irq;
}

/* AML: one package element holding an integer; false if not a constant. */
static bool aml_int(const uint8_t *p, const uint8_t *end, uint8_t *v, int *used)
{
	if (p >= end)
		return false;
	switch (p[0]) {
	case 0x00: *v = 0; *used = 1; return true;      /* ZeroOp */
	case 0x01: *v = 1; *used = 1; return true;      /* OneOp */
	case 0x0A:                                      /* BytePrefix */
		if (p + 1 >= end)
			return false;
		*v = p[1]; *used = 2; return true;
	case 0x0B:                                      /* WordPrefix */
		if (p + 2 >= end)
			return false;
		*v = p[1]; *used = 3; return true;
	default:
		return false;
	}
}

/* Finds Name(_S5, Package(){a, b, ...}) in one definition block. */
static bool s5_in(const struct acpi_table *tab, uint8_t *a, uint8_t *b)
{
	const uint8_t *t = PHYS_TO_VIRT(tab->pa), *end = t + tab->len;
	const uint32_t s5 = 0x5F35535F;        /* "_S5_" */

	for (const uint8_t *p = t + SDT_HDR; p + 8 <= end; p++) {
		if (rd32(p) != s5)
			continue;
		if (!(p[-1] == 0x08 || (p[-1] == '\\' && p[-2] == 0x08)))
			continue;               /* not a NameOp */
		const uint8_t *q = p + 4;
		if (*q++ != 0x12)               /* PackageOp */
			continue;
		q += 1 + (*q >> 6);             /* PkgLength */
		q++;                            /* NumElements */
		int u;
		if (!aml_int(q, end, a, &u))
			continue;
		q += u;
		if (!aml_int(q, end, b, &u))
			*b = 0;
		return true;
	}
	return false;
}

bool acpi_s5(uint8_t *typa, uint8_t *typb)
{
	for (int i = 0; i < acpi.ntables; i++) {
		struct acpi_table *t = &acpi.tables[i];
		if (acpi_table_ok(t) && (!memcmp(t->sig, "DSDT", 4) || !memcmp(t->sig, "SSDT", 4)) &&
		    s5_in(t, typa, typb))
			return true;
	}
	return false;
}

void acpi_print(void)
{
	if (!acpi.present) {
		kprintf("no ACPI\n");
		return;
	}
	kprintf("RSDP at 0x%lx rev %u OEM '%.6s', using %s at 0x%lx\n", acpi.rsdp_pa,
		acpi.rsdp_rev, acpi.oem, acpi.use_xsdt ? "XSDT" : "RSDT", acpi.root_pa);
	for (int i = 0; i < acpi.ntables; i++) {
		struct acpi_table *t = &acpi.tables[i];
		kprintf("  %s at 0x%08lx len %5u rev %u checksum %s\n", t->sig, t->pa,
			t->len, t->rev, acpi_table_ok(t) ? "ok" : "BAD");
	}
	if (acpi.have_madt) {
		kprintf("MADT: local APIC at 0x%x, %d enabled CPUs (APIC ids", acpi.lapic_pa, acpi.nlapic);
		for (int i = 0; i < acpi.nlapic; i++)
			kprintf(" %u", acpi.lapics[i].apic_id);
		kprintf(")\n");
		for (int i = 0; i < acpi.nioapic; i++)
			kprintf("  IOAPIC id %u at 0x%x GSI base %u\n", acpi.ioapics[i].id,
				acpi.ioapics[i].pa, acpi.ioapics[i].gsi_base);
		for (int i = 0; i < acpi.niso; i++)
			kprintf("  override: ISA IRQ %u -> GSI %u flags 0x%x\n", acpi.isos[i].irq,
				acpi.isos[i].gsi, acpi.isos[i].flags);
	} else {
		kprintf("MADT: none\n");
	}
	if (acpi.nmcfg)
		for (int i = 0; i < acpi.nmcfg; i++)
			kprintf("MCFG: ECAM at 0x%lx segment %u buses %u-%u\n", acpi.mcfg[i].base,
				acpi.mcfg[i].seg, acpi.mcfg[i].bus_start, acpi.mcfg[i].bus_end);
	else
		kprintf("MCFG: none\n");
	if (acpi.have_dmar) {
		kprintf("DMAR: host address width %u, flags 0x%x, %d DRHD\n", acpi.dmar_haw,
			acpi.dmar_flags, acpi.ndrhd);
		for (int i = 0; i < acpi.ndrhd; i++) {
			const struct dmar_drhd *d = &acpi.drhd[i];
			kprintf("  DRHD registers at 0x%lx segment %u flags 0x%x%s, %u device scopes\n",
				d->base, d->seg, d->flags, d->flags & 1 ? " (INCLUDE_PCI_ALL)" : "",
				d->nscopes);
			static const char *const kinds[] = { "?", "endpoint", "bridge", "IOAPIC",
							     "HPET", "namespace" };
			for (int j = 0; j < d->nkept; j++) {
				const struct dmar_scope *s = &d->scopes[j];
				kprintf("    scope %s id %u bus %u path", kinds[s->type < 6 ? s->type : 0],
					s->enum_id, s->start_bus);
				for (int k = 0; k < s->npath; k++)
					kprintf(" %02x.%x", s->path[k][0], s->path[k][1]);
				kprintf("\n");
			}
		}
	} else {
		kprintf("DMAR: none\n");
	}
	if (acpi.have_fadt) {
		uint8_t a, b;
		kprintf("FADT: PM1a_CNT 0x%x PM1b_CNT 0x%x SMI_CMD 0x%x DSDT 0x%lx\n",
			acpi.pm1a_cnt, acpi.pm1b_cnt, acpi.smi_cmd, acpi.dsdt_pa);
		if (acpi.sleep_ctl)
			kprintf("  SLEEP_CONTROL_REG %s 0x%lx\n", acpi.sleep_ctl_io ? "port" : "MMIO",
				acpi.sleep_ctl);
		if (acpi_s5(&a, &b))
			kprintf("  \\_S5: SLP_TYPa %u SLP_TYPb %u\n", a, b);
		else
			kprintf("  \\_S5: not found\n");
	} else {
		kprintf("FADT: none\n");
	}
}
