"""Pin every ctypes structure in akvm.base.kvm to <linux/kvm.h>: sizes, field offsets, ioctl numbers."""
import ctypes
import shutil
import subprocess

import pytest

from akvm.base import kvm

# ctypes name -> C type; every field of the ctypes structure is checked against the C one.
STRUCTS = {
    "kvm_userspace_memory_region": "struct kvm_userspace_memory_region",
    "kvm_regs": "struct kvm_regs",
    "kvm_segment": "struct kvm_segment",
    "kvm_dtable": "struct kvm_dtable",
    "kvm_sregs": "struct kvm_sregs",
    "kvm_fpu": "struct kvm_fpu",
    "kvm_msr_entry": "struct kvm_msr_entry",
    "kvm_msrs": "struct kvm_msrs",
    "kvm_cpuid_entry2": "struct kvm_cpuid_entry2",
    "kvm_cpuid2": "struct kvm_cpuid2",
    "kvm_lapic_state": "struct kvm_lapic_state",
    "kvm_mp_state": "struct kvm_mp_state",
    "kvm_xsave": "struct kvm_xsave",
    "kvm_xcr": "struct kvm_xcr",
    "kvm_xcrs": "struct kvm_xcrs",
    "kvm_vcpu_events": "struct kvm_vcpu_events",
    "kvm_irq_level": "struct kvm_irq_level",
    "kvm_pit_config": "struct kvm_pit_config",
    "kvm_pit_channel_state": "struct kvm_pit_channel_state",
    "kvm_pit_state2": "struct kvm_pit_state2",
    "kvm_msi": "struct kvm_msi",
    "kvm_irqfd": "struct kvm_irqfd",
    "kvm_ioeventfd": "struct kvm_ioeventfd",
    "kvm_irq_routing_entry": "struct kvm_irq_routing_entry",
    "kvm_irq_routing": "struct kvm_irq_routing",
    "kvm_enable_cap": "struct kvm_enable_cap",
    "kvm_run": "struct kvm_run",
    "kvm_guest_debug": "struct kvm_guest_debug",
    "kvm_debug_exit_arch": "struct kvm_debug_exit_arch",
    "kvm_debugregs": "struct kvm_debugregs",
    "kvm_pic_state": "struct kvm_pic_state",
    "kvm_irqchip": "struct kvm_irqchip",
    "kvm_clock_data": "struct kvm_clock_data",
    "kvm_msr_list": "struct kvm_msr_list",
}
# C spellings of fields that sit inside anonymous unions or are named differently.
FIELD_ALIASES = {
    ("kvm_irq_routing_entry", "u"): "u",
    ("kvm_run", "exit"): "io",
    ("kvm_vcpu_events", "triple_fault_pending"): "triple_fault.pending",
    ("kvm_irqchip", "chip"): "chip",
}
IOCTLS = ["KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
          "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION",
          "KVM_SET_TSS_ADDR", "KVM_SET_IDENTITY_MAP_ADDR", "KVM_CREATE_IRQCHIP", "KVM_IRQ_LINE",
          "KVM_SET_GSI_ROUTING", "KVM_IRQFD", "KVM_CREATE_PIT2", "KVM_IOEVENTFD", "KVM_ENABLE_CAP",
          "KVM_SIGNAL_MSI", "KVM_RUN", "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS",
          "KVM_SET_SREGS", "KVM_GET_MSRS", "KVM_SET_MSRS", "KVM_GET_FPU",
          "KVM_GET_LAPIC", "KVM_SET_LAPIC", "KVM_SET_CPUID2", "KVM_GET_CPUID2",
          "KVM_GET_MP_STATE", "KVM_SET_MP_STATE", "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS",
          "KVM_GET_PIT2", "KVM_SET_PIT2", "KVM_GET_XSAVE", "KVM_SET_XSAVE", "KVM_GET_XCRS", "KVM_SET_XCRS", "KVM_GET_XSAVE2", "KVM_GET_TSC_KHZ",
          "KVM_SET_TSC_KHZ", "KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS", "KVM_GET_IRQCHIP",
          "KVM_SET_IRQCHIP", "KVM_GET_CLOCK", "KVM_SET_CLOCK", "KVM_GET_MSR_INDEX_LIST",
          "KVM_KVMCLOCK_CTRL", "KVM_CLOCK_TSC_STABLE", "KVM_SET_GUEST_DEBUG"]
CONSTANTS = [n for n in dir(kvm) if n.startswith(("KVM_EXIT_", "KVM_CAP_", "KVM_MP_STATE_",
                                                   "KVM_SYSTEM_EVENT_", "KVM_IRQ_ROUTING_",
                                                   "KVM_IOEVENTFD_FLAG_", "KVM_INTERNAL_ERROR_",
                                                   "KVM_GUESTDBG_"))]


def _c_program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for py, c in STRUCTS.items():
        lines.append(f'printf("size {py} %zu\\n", sizeof({c}));')
        for name, *_ in getattr(kvm, py)._fields_:
            cname = FIELD_ALIASES.get((py, name), name)
            if name.startswith("pad") and (py, name) not in FIELD_ALIASES:
                continue
            lines.append(f'printf("offset {py}.{name} %zu\\n", offsetof({c}, {cname}));')
    for n in IOCTLS + CONSTANTS:
        lines.append(f'printf("const {n} %llu\\n", (unsigned long long)({n}));')
    lines.append("return 0; }")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    d = tmp_path_factory.mktemp("abi")
    (d / "abi.c").write_text(_c_program())
    subprocess.run(["gcc", "-o", str(d / "abi"), str(d / "abi.c")], check=True)
    out = subprocess.run([str(d / "abi")], check=True, capture_output=True, text=True).stdout
    return {tuple(line.split()[:2]): int(line.split()[2]) for line in out.splitlines()}


@pytest.mark.parametrize("name", STRUCTS)
def test_struct_layout(c_layout, name):
    struct = getattr(kvm, name)
    if name == "kvm_run":  # the C struct also carries the sync-regs area after our fields
        assert ctypes.sizeof(struct) <= c_layout[("size", name)]
    else:
        assert ctypes.sizeof(struct) == c_layout[("size", name)]
    for field, *_ in struct._fields_:
        key = ("offset", f"{name}.{field}")
        if key in c_layout:
            assert getattr(struct, field).offset == c_layout[key], field


def test_every_struct_field_checked(c_layout):
    checked = {k[1] for k in c_layout if k[0] == "offset"}
    assert len(checked) > 100


@pytest.mark.parametrize("name", IOCTLS + CONSTANTS)
def test_constant(c_layout, name):
    assert getattr(kvm, name) == c_layout[("const", name)]
