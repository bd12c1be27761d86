"""A vCPU's whole state, saved from KVM and put back into a new vCPU (snapshots).

Saved in the order KVM wants: MP state first (reading it may accept pending
INIT/SIPI), VCPU_EVENTS last. XSAVE carries the FPU and SSE state
(KVM_SET_FPU would leave XSTATE_BV alone and the SSE registers would be
lost). The MSRs are those KVM_GET_MSR_INDEX_LIST names plus TSC_AUX, which
the list leaves out where the host has no RDTSCP but akvm's completer
serves RDTSCP from.

Restored, after the vCPU's CPUID (XCR0 and the XSAVE features depend on
it), in the order Firecracker uses: MP state, registers, special
registers, XSAVE, XCRs, debug registers, LAPIC (after SREGS, which carry
the APIC base), MSRs with TSC_DEADLINE last (it needs the LAPIC and the
TSC), pending events last (SET_REGS would drop a pending exception).
kvm_pvm cannot move the guest's TSC: it is the host's, so a restored guest
sees the time the snapshot spent on disk pass at once.
"""
from __future__ import annotations

import ctypes
import logging
import struct

from akvm.base import kvm
from akvm.base.snapdata import pack, unpack

log = logging.getLogger("akvm.cpu")

MSR_IA32_TSC = 0x10
MSR_IA32_TSC_DEADLINE = 0x6E0
MSR_TSC_AUX = 0xC000_0103
# Local APIC registers (offsets into the 1 KiB KVM_GET_LAPIC page)
APIC_LVTT = 0x320
APIC_TMICT = 0x380
APIC_TMCCT = 0x390
LVTT_MODE_SHIFT, LVTT_MODE_MASK, LVTT_ONE_SHOT = 17, 0x3, 0
# KVM_SET_TSC_KHZ only when the rate differs by more than this (it cannot be done exactly).
TSC_KHZ_TOLERANCE_PPM = 250


class VcpuStateError(Exception):
    """KVM would not give or take part of a vCPU's state."""


def _raw(struct_obj) -> str:
    return pack(bytes(struct_obj))


def _struct(cls, text: str):
    return cls.from_buffer_copy(unpack(text, ctypes.sizeof(cls)))


def msr_indices(system: kvm.System) -> list[int]:
    """What to save of every vCPU: KVM's list, IA32_TSC left out (kvm_pvm ignores writes to
    it, and elsewhere a restored TSC that goes back would hurt more), TSC_AUX added."""
    indices = [i for i in system.msr_index_list() if i != MSR_IA32_TSC]
    return indices if MSR_TSC_AUX in indices else indices + [MSR_TSC_AUX]


def save(vcpu: kvm.Vcpu, msrs: list[int]) -> dict:
    """Everything KVM holds of a paused vCPU (not inside KVM_RUN)."""
    mp_state = vcpu.get_mp_state()
    values = vcpu.get_msrs(msrs)
    if len(values) != len(msrs):
        missing = [f"{i:#x}" for i in msrs if i not in values]
        raise VcpuStateError(f"vcpu{vcpu.index}: KVM would not read MSRs {', '.join(missing)}")
    cpuid = vcpu.get_cpuid2()
    return {
        "mp_state": mp_state,
        "regs": _raw(vcpu.get_regs()),
        "sregs": _raw(vcpu.get_sregs()),
        "xsave": pack(vcpu.get_xsave()),
        "xcrs": _raw(vcpu.get_xcrs()),
        "debugregs": _raw(vcpu.get_debugregs()),
        "lapic": _raw(vcpu.get_lapic()),
        "tsc_khz": vcpu.get_tsc_khz(),
        "cpuid": pack(b"".join(bytes(e) for e in cpuid)),
        "msrs": [[index, values[index]] for index in msrs],
        "events": _raw(vcpu.get_vcpu_events()),
    }


def cpuid_of(state: dict) -> list[kvm.kvm_cpuid_entry2]:
    """The CPUID table the vCPU had, to set before anything else."""
    data = unpack(state["cpuid"])
    size = ctypes.sizeof(kvm.kvm_cpuid_entry2)
    if len(data) % size:
        raise ValueError(f"a CPUID table of {len(data)} bytes")
    return [kvm.kvm_cpuid_entry2.from_buffer_copy(data, i) for i in range(0, len(data), size)]


def restore(vcpu: kvm.Vcpu, state: dict) -> None:
    """Put a saved state into `vcpu`, whose CPUID is already set (cpuid_of())."""
    khz = int(state["tsc_khz"])
    current = vcpu.get_tsc_khz()
    if abs(khz - current) * 1_000_000 > TSC_KHZ_TOLERANCE_PPM * current:
        try:
            vcpu.set_tsc_khz(khz)
        except kvm.KvmError as e:         # no TSC scaling here: the guest's clock runs off
            log.warning("vcpu%d: the snapshot's TSC ran at %d kHz, this host's at %d kHz, "
                        "and KVM cannot scale it (%s)", vcpu.index, khz, current, e.strerror)
    steps = [
        ("MP state", lambda: vcpu.set_mp_state(int(state["mp_state"]))),
        ("registers", lambda: vcpu.set_regs(_struct(kvm.kvm_regs, state["regs"]))),
        ("special registers", lambda: vcpu.set_sregs(_struct(kvm.kvm_sregs, state["sregs"]))),
        ("XSAVE", lambda: vcpu.set_xsave(unpack(state["xsave"]))),
        ("XCRs", lambda: vcpu.set_xcrs(_struct(kvm.kvm_xcrs, state["xcrs"]))),
        ("debug registers", lambda: vcpu.set_debugregs(_struct(kvm.kvm_debugregs,
                                                               state["debugregs"]))),
        ("LAPIC", lambda: vcpu.set_lapic(_lapic(state["lapic"]))),
        ("MSRs", lambda: _set_msrs(vcpu, {int(i): int(v) for i, v in state["msrs"]
                                          if int(i) != MSR_IA32_TSC_DEADLINE})),
        ("TSC_DEADLINE", lambda: _set_msrs(vcpu, {int(i): int(v) for i, v in state["msrs"]
                                                  if int(i) == MSR_IA32_TSC_DEADLINE})),
        ("pending events", lambda: vcpu.set_vcpu_events(_struct(kvm.kvm_vcpu_events,
                                                                state["events"]))),
    ]
    for what, step in steps:
        try:
            step()
        except kvm.KvmError as e:
            raise VcpuStateError(f"vcpu{vcpu.index}: KVM refused its {what}: {e.strerror}") from None


def _lapic(text: str) -> kvm.kvm_lapic_state:
    """The saved LAPIC page; a one-shot timer that had already fired is disarmed (KVM
    restarts the timer from the current count, and a zero count would fire again)."""
    raw = bytearray(unpack(text, ctypes.sizeof(kvm.kvm_lapic_state)))
    lvtt, = struct.unpack_from("<I", raw, APIC_LVTT)
    tmcct, = struct.unpack_from("<I", raw, APIC_TMCCT)
    if (lvtt >> LVTT_MODE_SHIFT) & LVTT_MODE_MASK == LVTT_ONE_SHOT and tmcct == 0:
        struct.pack_into("<I", raw, APIC_TMICT, 0)
    return kvm.kvm_lapic_state.from_buffer_copy(raw)


def _set_msrs(vcpu: kvm.Vcpu, values: dict[int, int]) -> None:
    if not values:
        return
    done = vcpu.set_msrs(values)
    if done != len(values):
        bad = list(values)[done]
        raise kvm.KvmError(22, f"MSR {bad:#x} was refused")
