"""The registers GDB sees: the target description, and KVM's structures to and from its bytes.

One description for every mode: i386:x86-64, as GDB debugs a kernel that
starts in 32-bit code (Multiboot) with a 64-bit ELF. The features GDB knows
by name carry the registers it requires under their expected names
(org.gnu.gdb.i386.core, .sse, .segments); the control registers and EFER
are in a feature of akvm's own, which GDB shows in `info registers`.
Register numbers are positions in REGISTERS (the `g` packet's order).
"""
from __future__ import annotations

from dataclasses import dataclass

from akvm.base import kvm

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
CONTROL = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")


@dataclass(frozen=True)
class Register:
    name: str
    bits: int
    type: str
    feature: str
    group: str | None = None


def _registers() -> list[Register]:
    core, sse = "org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse"
    regs = [Register(n, 64, {"rbp": "data_ptr", "rsp": "data_ptr"}.get(n, "int64"), core)
            for n in GPRS]
    regs.append(Register("rip", 64, "code_ptr", core))
    regs.append(Register("eflags", 32, "x86_eflags", core))
    regs += [Register(n, 32, "int32", core) for n in SEGMENTS]
    regs += [Register(f"st{i}", 80, "i387_ext", core, "float") for i in range(8)]
    regs += [Register(n, 32, "int", core, "float") for n in X87_CONTROL]
    regs += [Register(f"xmm{i}", 128, "vec128", sse, "vector") for i in range(16)]
    regs.append(Register("mxcsr", 32, "x86_mxcsr", sse, "vector"))
    regs += [Register(n, 64, "int64", "org.gnu.gdb.i386.segments", "system")
             for n in ("fs_base", "gs_base")]
    regs += [Register(n, 64, {"cr0": "x86_cr0", "cr4": "x86_cr4", "efer": "x86_efer"}.get(n, "int64"),
                      "org.akvm.x86.control", "system") for n in CONTROL]
    return regs


REGISTERS = _registers()
NUMBER = {r.name: i for i, r in enumerate(REGISTERS)}
# Sent with every stop reply, so GDB need not ask for them to show where it stopped.
EXPEDITED = (NUMBER["rbp"], NUMBER["rsp"], NUMBER["rip"])

_FLAGS = {
    "x86_eflags": (4, "CF:0 PF:2 AF:4 ZF:6 SF:7 TF:8 IF:9 DF:10 OF:11 NT:14 RF:16 VM:17 "
                      "AC:18 VIF:19 VIP:20 ID:21"),
    "x86_mxcsr": (4, "IE:0 DE:1 ZE:2 OE:3 UE:4 PE:5 DAZ:6 IM:7 DM:8 ZM:9 OM:10 UM:11 PM:12 FZ:15"),
    "x86_cr0": (8, "PE:0 MP:1 EM:2 TS:3 ET:4 NE:5 WP:16 AM:18 NW:29 CD:30 PG:31"),
    "x86_cr4": (8, "VME:0 PVI:1 TSD:2 DE:3 PSE:4 PAE:5 MCE:6 PGE:7 PCE:8 OSFXSR:9 "
                   "OSXMMEXCPT:10 UMIP:11 LA57:12 VMXE:13 SMXE:14 FSGSBASE:16 PCIDE:17 "
                   "OSXSAVE:18 SMEP:20 SMAP:21 PKE:22 CET:23 PKS:24"),
    "x86_efer": (8, "SCE:0 LME:8 LMA:10 NXE:11 SVME:12 LMSLE:13 FFXSR:14 TCE:15"),
}


_VECTORS = (("v8bf16", "bfloat16", 8), ("v8h", "ieee_half", 8), ("v4f", "ieee_single", 4),
            ("v2d", "ieee_double", 2), ("v16i8", "int8", 16), ("v8i16", "int16", 8),
            ("v4i32", "int32", 4), ("v2i64", "int64", 2))
_VEC128 = (("v4_float", "v4f"), ("v2_double", "v2d"), ("v16_int8", "v16i8"), ("v8_int16", "v8i16"),
           ("v4_int32", "v4i32"), ("v2_int64", "v2i64"), ("uint128", "uint128"))


def _type_xml(name: str) -> list[str]:
    """The definition of a type of ours (GDB scopes types to the feature using them)."""
    if name in _FLAGS:
        size, fields = _FLAGS[name]
        lines = [f'  <flags id="{name}" size="{size}">']
        for field in fields.split():
            label, _, bit = field.partition(":")
            lines.append(f'    <field name="{label}" start="{bit}" end="{bit}"/>')
        return lines + ["  </flags>"]
    if name == "vec128":
        lines = [f'  <vector id="{v}" type="{elem}" count="{count}"/>' for v, elem, count in _VECTORS]
        lines.append('  <union id="vec128">')
        lines += [f'    <field name="{f}" type="{t}"/>' for f, t in _VEC128]
        return lines + ["  </union>"]
    return []


def target_xml() -> str:
    """The target description GDB reads with qXfer:features:read:target.xml."""
    lines = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', "<target>",
             "<architecture>i386:x86-64</architecture>"]
    features: dict[str, list[int]] = {}
    for number, r in enumerate(REGISTERS):
        features.setdefault(r.feature, []).append(number)
    for feature, numbers in features.items():
        lines.append(f'<feature name="{feature}">')
        for type_ in dict.fromkeys(REGISTERS[n].type for n in numbers):
            lines += _type_xml(type_)
        for number in numbers:
            r = REGISTERS[number]
            group = f' group="{r.group}"' if r.group else ""
            lines.append(f'  <reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" '
                         f'regnum="{number}"{group}/>')
        lines.append("</feature>")
    lines.append("</target>")
    return "\n".join(lines) + "\n"


# --- values --------------------------------------------------------------------

def _tag_of(reg: bytes) -> int:
    """The full x87 tag (0 valid, 1 zero, 2 special) of a non-empty 80-bit register."""
    mantissa, exponent = int.from_bytes(reg[:8], "little"), int.from_bytes(reg[8:10], "little") & 0x7FFF
    if exponent == 0x7FFF or (exponent and not mantissa >> 63):
        return 2
    if exponent == 0:
        return 1 if mantissa == 0 else 2
    return 0


def full_tag_word(fpu: kvm.kvm_fpu) -> int:
    """GDB's ftag from FXSAVE's abridged one (a bit per physical register: empty or not).

    KVM gives ST0-ST7 in stack order; physical register p is ST((p - TOP) mod 8).
    """
    top = (fpu.fsw >> 11) & 7
    tag = 0
    for p in range(8):
        value = 3 if not fpu.ftwx >> p & 1 else _tag_of(bytes(fpu.fpr[(p - top) % 8])[:10])
        tag |= value << (2 * p)
    return tag


def abridged_tag(tag: int) -> int:
    return sum(1 << p for p in range(8) if (tag >> (2 * p)) & 3 != 3)


class VcpuRegisters:
    """One vCPU's registers as KVM holds them, each structure read when first wanted
    (a stop reply needs only kvm_regs)."""

    def __init__(self, vcpu=None, *, regs: kvm.kvm_regs | None = None,
                 sregs: kvm.kvm_sregs | None = None, fpu: kvm.kvm_fpu | None = None):
        self._vcpu = vcpu
        self._regs, self._sregs, self._fpu = regs, sregs, fpu

    @property
    def regs(self) -> kvm.kvm_regs:
        if self._regs is None:
            self._regs = self._vcpu.get_regs()
        return self._regs

    @property
    def sregs(self) -> kvm.kvm_sregs:
        if self._sregs is None:
            self._sregs = self._vcpu.get_sregs()
        return self._sregs

    @property
    def fpu(self) -> kvm.kvm_fpu:
        if self._fpu is None:
            self._fpu = self._vcpu.get_fpu()
        return self._fpu

    def get(self, number: int) -> bytes:
        r = REGISTERS[number]
        name = r.name
        if name in GPRS or name == "rip":
            return getattr(self.regs, name).to_bytes(8, "little")
        if name == "eflags":
            return (self.regs.rflags & 0xFFFF_FFFF).to_bytes(4, "little")
        if name in SEGMENTS:
            return getattr(self.sregs, name).selector.to_bytes(4, "little")
        if name in ("fs_base", "gs_base"):
            return getattr(self.sregs, name[:2]).base.to_bytes(8, "little")
        if name in CONTROL:
            return getattr(self.sregs, name).to_bytes(8, "little")
        fpu = self.fpu
        if name.startswith("st"):
            return bytes(fpu.fpr[int(name[2:])])[:10]
        if name.startswith("xmm"):
            return bytes(fpu.xmm[int(name[3:])])
        value = {"fctrl": fpu.fcw, "fstat": fpu.fsw, "ftag": full_tag_word(fpu), "fiseg": 0,
                 "fioff": fpu.last_ip & 0xFFFF_FFFF, "foseg": 0,
                 "fooff": fpu.last_dp & 0xFFFF_FFFF, "fop": fpu.last_opcode,
                 "mxcsr": fpu.mxcsr}[name]
        return value.to_bytes(4, "little")

    def set(self, number: int, data: bytes) -> str:
        """Change one register; returns which KVM structure changed: regs, sregs or fpu."""
        r = REGISTERS[number]
        name = r.name
        if len(data) != r.bits // 8:
            raise ValueError(f"{name} is {r.bits // 8} bytes, got {len(data)}")
        value = int.from_bytes(data, "little")
        if name in GPRS or name == "rip":
            setattr(self.regs, name, value)
            return "regs"
        if name == "eflags":
            self.regs.rflags = (self.regs.rflags & ~0xFFFF_FFFF) | value
            return "regs"
        if name in SEGMENTS:       # the selector only: the descriptor cache stays as it was
            getattr(self.sregs, name).selector = value & 0xFFFF
            return "sregs"
        if name in ("fs_base", "gs_base"):
            getattr(self.sregs, name[:2]).base = value
            return "sregs"
        if name in CONTROL:
            setattr(self.sregs, name, value)
            return "sregs"
        fpu = self.fpu
        if name.startswith("st"):
            reg = fpu.fpr[int(name[2:])]
            for i, b in enumerate(data):
                reg[i] = b
        elif name.startswith("xmm"):
            reg = fpu.xmm[int(name[3:])]
            for i, b in enumerate(data):
                reg[i] = b
        elif name == "fctrl":
            fpu.fcw = value & 0xFFFF
        elif name == "fstat":
            fpu.fsw = value & 0xFFFF
        elif name == "ftag":
            fpu.ftwx = abridged_tag(value)
        elif name == "fioff":
            fpu.last_ip = (fpu.last_ip & ~0xFFFF_FFFF) | value
        elif name == "fooff":
            fpu.last_dp = (fpu.last_dp & ~0xFFFF_FFFF) | value
        elif name == "fop":
            fpu.last_opcode = value & 0x7FF
        elif name == "mxcsr":
            fpu.mxcsr = value
        # fiseg, foseg: KVM keeps no x87 selectors; a write is dropped
        return "fpu"


SIZES = [r.bits // 8 for r in REGISTERS]
G_SIZE = sum(SIZES)
