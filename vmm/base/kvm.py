"""The KVM API through ctypes: ioctl numbers, structures and thin wrappers.

No policy lives here: System, Vm and Vcpu map one method to one ioctl so
that the rest of akvm reads like the KVM documentation. The structures are
pinned against <linux/kvm.h> by tests/unit/test_kvm_abi.py.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os

c_u8, c_u16, c_u32, c_u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
c_s32 = ctypes.c_int32


class KvmError(OSError):
    """An ioctl on /dev/kvm failed."""


# --- ioctl number encoding (asm-generic/ioctl.h) -------------------------

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr): return _ioc(_IOC_NONE, nr, 0)
def _ior(nr, t): return _ioc(_IOC_READ, nr, ctypes.sizeof(t))
def _iow(nr, t): return _ioc(_IOC_WRITE, nr, ctypes.sizeof(t))
def _iowr(nr, t): return _ioc(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(t))


class _Struct(ctypes.Structure):
    def __repr__(self):
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n, *_ in self._fields_)
        return f"{type(self).__name__}({fields})"


# --- structures (linux/kvm.h, asm/kvm.h) ---------------------------------

class kvm_userspace_memory_region(_Struct):
    _fields_ = [("slot", c_u32), ("flags", c_u32), ("guest_phys_addr", c_u64),
                ("memory_size", c_u64), ("userspace_addr", c_u64)]


class kvm_regs(_Struct):
    _fields_ = [(n, c_u64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(_Struct):
    _fields_ = [("base", c_u64), ("limit", c_u32), ("selector", c_u16), ("type", c_u8),
                ("present", c_u8), ("dpl", c_u8), ("db", c_u8), ("s", c_u8), ("l", c_u8),
                ("g", c_u8), ("avl", c_u8), ("unusable", c_u8), ("padding", c_u8)]


class kvm_dtable(_Struct):
    _fields_ = [("base", c_u64), ("limit", c_u16), ("padding", c_u16 * 3)]


class kvm_sregs(_Struct):
    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
                ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
                ("tr", kvm_segment), ("ldt", kvm_segment),
                ("gdt", kvm_dtable), ("idt", kvm_dtable),
                ("cr0", c_u64), ("cr2", c_u64), ("cr3", c_u64), ("cr4", c_u64),
                ("cr8", c_u64), ("efer", c_u64), ("apic_base", c_u64),
                ("interrupt_bitmap", c_u64 * 4)]


class kvm_fpu(_Struct):
    _fields_ = [("fpr", (c_u8 * 16) * 8), ("fcw", c_u16), ("fsw", c_u16), ("ftwx", c_u8),
                ("pad1", c_u8), ("last_opcode", c_u16), ("last_ip", c_u64), ("last_dp", c_u64),
                ("xmm", (c_u8 * 16) * 16), ("mxcsr", c_u32), ("pad2", c_u32)]


class kvm_msr_entry(_Struct):
    _fields_ = [("index", c_u32), ("reserved", c_u32), ("data", c_u64)]


class kvm_msrs(_Struct):
    _fields_ = [("nmsrs", c_u32), ("pad", c_u32)]


def kvm_msrs_n(n: int):
    """struct kvm_msrs followed by n entries."""
    class _msrs(_Struct):
        _fields_ = [("nmsrs", c_u32), ("pad", c_u32), ("entries", kvm_msr_entry * n)]
    return _msrs


class kvm_cpuid_entry2(_Struct):
    _fields_ = [("function", c_u32), ("index", c_u32), ("flags", c_u32), ("eax", c_u32),
                ("ebx", c_u32), ("ecx", c_u32), ("edx", c_u32), ("padding", c_u32 * 3)]


class kvm_cpuid2(_Struct):
    _fields_ = [("nent", c_u32), ("padding", c_u32)]


def kvm_cpuid2_n(n: int):
    class _cpuid2(_Struct):
        _fields_ = [("nent", c_u32), ("padding", c_u32), ("entries", kvm_cpuid_entry2 * n)]
    return _cpuid2


class kvm_lapic_state(_Struct):
    _fields_ = [("regs", ctypes.c_char * 1024)]


class kvm_mp_state(_Struct):
    _fields_ = [("mp_state", c_u32)]


class kvm_xsave(_Struct):
    _fields_ = [("region", c_u32 * 1024)]


class kvm_xcr(_Struct):
    _fields_ = [("xcr", c_u32), ("reserved", c_u32), ("value", c_u64)]


class kvm_xcrs(_Struct):
    _fields_ = [("nr_xcrs", c_u32), ("flags", c_u32), ("xcrs", kvm_xcr * 16),
                ("padding", c_u64 * 16)]


class _events_exception(_Struct):
    _fields_ = [("injected", c_u8), ("nr", c_u8), ("has_error_code", c_u8),
                ("pending", c_u8), ("error_code", c_u32)]


class _events_interrupt(_Struct):
    _fields_ = [("injected", c_u8), ("nr", c_u8), ("soft", c_u8), ("shadow", c_u8)]


class _events_nmi(_Struct):
    _fields_ = [("injected", c_u8), ("pending", c_u8), ("masked", c_u8), ("pad", c_u8)]


class _events_smi(_Struct):
    _fields_ = [("smm", c_u8), ("pending", c_u8), ("smm_inside_nmi", c_u8),
                ("latched_init", c_u8)]


class kvm_vcpu_events(_Struct):
    _fields_ = [("exception", _events_exception), ("interrupt", _events_interrupt),
                ("nmi", _events_nmi), ("sipi_vector", c_u32), ("flags", c_u32),
                ("smi", _events_smi), ("triple_fault_pending", c_u8), ("reserved", c_u8 * 26),
                ("exception_has_payload", c_u8), ("exception_payload", c_u64)]


class kvm_guest_debug_arch(_Struct):
    _fields_ = [("debugreg", c_u64 * 8)]


class kvm_guest_debug(_Struct):
    _fields_ = [("control", c_u32), ("pad", c_u32), ("arch", kvm_guest_debug_arch)]
class kvm_debugregs(_Struct):
    _fields_ = [("db", c_u64 * 4), ("dr6", c_u64), ("dr7", c_u64), ("flags", c_u64),
                ("reserved", c_u64 * 9)]


class kvm_pic_state(_Struct):
    _fields_ = [(n, c_u8) for n in (
        "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select", "poll",
        "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi",
        "special_fully_nested_mode", "init4", "elcr", "elcr_mask")]


class kvm_irqchip(_Struct):
    """KVM_GET/SET_IRQCHIP: chip 0/1 a kvm_pic_state, chip 2 a kvm_ioapic_state, in 512 bytes."""
    _fields_ = [("chip_id", c_u32), ("pad", c_u32), ("chip", ctypes.c_char * 512)]


class kvm_clock_data(_Struct):
    _fields_ = [("clock", c_u64), ("flags", c_u32), ("pad0", c_u32), ("realtime", c_u64),
                ("host_tsc", c_u64), ("pad", c_u32 * 4)]


class kvm_msr_list(_Struct):
    _fields_ = [("nmsrs", c_u32)]


class kvm_irq_level(_Struct):
    _fields_ = [("irq", c_u32), ("level", c_u32)]


class kvm_pit_config(_Struct):
    _fields_ = [("flags", c_u32), ("pad", c_u32 * 15)]


class kvm_pit_channel_state(_Struct):
    _fields_ = [("count", c_u32), ("latched_count", c_u16), ("count_latched", c_u8),
                ("status_latched", c_u8), ("status", c_u8), ("read_state", c_u8),
                ("write_state", c_u8), ("write_latch", c_u8), ("rw_mode", c_u8), ("mode", c_u8),
                ("bcd", c_u8), ("gate", c_u8), ("count_load_time", ctypes.c_int64)]


class kvm_pit_state2(_Struct):
    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", c_u32), ("reserved", c_u32 * 9)]


class kvm_msi(_Struct):
    _fields_ = [("address_lo", c_u32), ("address_hi", c_u32), ("data", c_u32),
                ("flags", c_u32), ("devid", c_u32), ("pad", c_u8 * 12)]


class kvm_irqfd(_Struct):
    _fields_ = [("fd", c_u32), ("gsi", c_u32), ("flags", c_u32), ("resamplefd", c_u32),
                ("pad", c_u8 * 16)]


class kvm_ioeventfd(_Struct):
    _fields_ = [("datamatch", c_u64), ("addr", c_u64), ("len", c_u32), ("fd", c_s32),
                ("flags", c_u32), ("pad", c_u8 * 36)]


class kvm_irq_routing_irqchip(_Struct):
    _fields_ = [("irqchip", c_u32), ("pin", c_u32)]


class kvm_irq_routing_msi(_Struct):
    _fields_ = [("address_lo", c_u32), ("address_hi", c_u32), ("data", c_u32), ("devid", c_u32)]


class _routing_u(ctypes.Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi),
                ("pad", c_u32 * 8)]


class kvm_irq_routing_entry(_Struct):
    _fields_ = [("gsi", c_u32), ("type", c_u32), ("flags", c_u32), ("pad", c_u32),
                ("u", _routing_u)]


class kvm_irq_routing(_Struct):
    _fields_ = [("nr", c_u32), ("flags", c_u32)]


def kvm_irq_routing_n(n: int):
    class _routing(_Struct):
        _fields_ = [("nr", c_u32), ("flags", c_u32), ("entries", kvm_irq_routing_entry * n)]
    return _routing


class kvm_enable_cap(_Struct):
    _fields_ = [("cap", c_u32), ("flags", c_u32), ("args", c_u64 * 4), ("pad", c_u8 * 64)]


# struct kvm_run: the page shared with the kernel for each vCPU.

class kvm_run_io(_Struct):
    _fields_ = [("direction", c_u8), ("size", c_u8), ("port", c_u16), ("count", c_u32),
                ("data_offset", c_u64)]


class kvm_run_mmio(_Struct):
    _fields_ = [("phys_addr", c_u64), ("data", c_u8 * 8), ("len", c_u32), ("is_write", c_u8)]


class kvm_run_fail_entry(_Struct):
    _fields_ = [("hardware_entry_failure_reason", c_u64), ("cpu", c_u32)]


class kvm_debug_exit_arch(_Struct):
    _fields_ = [("exception", c_u32), ("pad", c_u32), ("pc", c_u64), ("dr6", c_u64), ("dr7", c_u64)]


class kvm_run_internal(_Struct):
    _fields_ = [("suberror", c_u32), ("ndata", c_u32), ("data", c_u64 * 16)]


class kvm_run_system_event(_Struct):
    _fields_ = [("type", c_u32), ("ndata", c_u32), ("data", c_u64 * 16)]


class _run_exit(ctypes.Union):
    _fields_ = [("io", kvm_run_io), ("mmio", kvm_run_mmio), ("fail_entry", kvm_run_fail_entry),
                ("internal", kvm_run_internal), ("system_event", kvm_run_system_event),
                ("debug", kvm_debug_exit_arch),
                ("padding", ctypes.c_char * 256)]


class kvm_run(_Struct):
    _fields_ = [("request_interrupt_window", c_u8), ("immediate_exit", c_u8),
                ("padding1", c_u8 * 6), ("exit_reason", c_u32),
                ("ready_for_interrupt_injection", c_u8), ("if_flag", c_u8), ("flags", c_u16),
                ("cr8", c_u64), ("apic_base", c_u64), ("exit", _run_exit),
                ("kvm_valid_regs", c_u64), ("kvm_dirty_regs", c_u64)]


# --- ioctl numbers -------------------------------------------------------

KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, kvm_cpuid2)

KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, c_u64)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, kvm_irq_level)
KVM_SET_GSI_ROUTING = _iow(0x6A, kvm_irq_routing)
KVM_IRQFD = _iow(0x76, kvm_irqfd)
KVM_CREATE_PIT2 = _iow(0x77, kvm_pit_config)
KVM_IOEVENTFD = _iow(0x79, kvm_ioeventfd)
KVM_ENABLE_CAP = _iow(0xA3, kvm_enable_cap)
KVM_SIGNAL_MSI = _iow(0xA5, kvm_msi)

KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, kvm_regs)
KVM_SET_REGS = _iow(0x82, kvm_regs)
KVM_GET_SREGS = _ior(0x83, kvm_sregs)
KVM_SET_SREGS = _iow(0x84, kvm_sregs)
KVM_GET_MSRS = _iowr(0x88, kvm_msrs)
KVM_SET_MSRS = _iow(0x89, kvm_msrs)
KVM_GET_FPU = _ior(0x8C, kvm_fpu)
KVM_GET_LAPIC = _ior(0x8E, kvm_lapic_state)
KVM_SET_LAPIC = _iow(0x8F, kvm_lapic_state)
KVM_SET_CPUID2 = _iow(0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _iowr(0x91, kvm_cpuid2)
KVM_GET_MP_STATE = _ior(0x98, kvm_mp_state)
KVM_SET_MP_STATE = _iow(0x99, kvm_mp_state)
KVM_GET_VCPU_EVENTS = _ior(0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _iow(0xA0, kvm_vcpu_events)
KVM_GET_PIT2 = _ior(0x9F, kvm_pit_state2)
KVM_SET_PIT2 = _iow(0xA0, kvm_pit_state2)
KVM_GET_XSAVE = _ior(0xA4, kvm_xsave)
KVM_SET_XSAVE = _iow(0xA5, kvm_xsave)
KVM_GET_XCRS = _ior(0xA6, kvm_xcrs)
KVM_SET_XCRS = _iow(0xA7, kvm_xcrs)
KVM_GET_XSAVE2 = _ior(0xCF, kvm_xsave)
KVM_GET_TSC_KHZ = _io(0xA3)
KVM_SET_GUEST_DEBUG = _iow(0x9B, kvm_guest_debug)
KVM_SET_TSC_KHZ = _io(0xA2)
KVM_GET_DEBUGREGS = _ior(0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _iow(0xA2, kvm_debugregs)
KVM_GET_IRQCHIP = _iowr(0x62, kvm_irqchip)
KVM_SET_IRQCHIP = _ior(0x63, kvm_irqchip)
KVM_GET_CLOCK = _ior(0x7C, kvm_clock_data)
KVM_SET_CLOCK = _iow(0x7B, kvm_clock_data)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, kvm_msr_list)
KVM_KVMCLOCK_CTRL = _io(0xAD)

# --- constants -----------------------------------------------------------

KVM_API_VERSION = 12

KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MP_STATE = 14
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_IOEVENTFD = 36
KVM_CAP_PIT2 = 33
KVM_CAP_IRQFD = 32
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_XSAVE2 = 208
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_READONLY_MEM = 81
KVM_CAP_SET_GUEST_DEBUG2 = 195
KVM_CAP_DEBUGREGS = 50
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_KVMCLOCK_CTRL = 76

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

EXIT_REASON_NAMES = {v: k[len("KVM_EXIT_"):] for k, v in globals().items()
                     if k.startswith("KVM_EXIT_") and isinstance(v, int)}

KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4

KVM_PIT_SPEAKER_DUMMY = 1

KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC = 0, 1, 2

KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0

KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x2
KVM_VCPUEVENT_VALID_SHADOW = 0x4

KVM_MEM_READONLY = 1 << 1

KVM_GUESTDBG_ENABLE = 0x1
KVM_GUESTDBG_SINGLESTEP = 0x2
KVM_GUESTDBG_USE_SW_BP = 0x10000
KVM_GUESTDBG_USE_HW_BP = 0x20000
KVM_GUESTDBG_INJECT_DB = 0x40000
KVM_GUESTDBG_INJECT_BP = 0x80000
KVM_GUESTDBG_BLOCKIRQ = 0x100000
KVM_CLOCK_TSC_STABLE = 2


# --- wrappers ------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


def _ioctl(fd: int, request: int, arg=0) -> int:
    """ioctl(2) through libc: structures by address, integers by value (as unsigned long)."""
    ptr = ctypes.addressof(arg) if isinstance(arg, ctypes._SimpleCData | ctypes.Structure |
                                                   ctypes.Array | ctypes.Union) else arg
    ret = _libc.ioctl(fd, request, ptr)
    if ret < 0:
        err = ctypes.get_errno()
        raise KvmError(err, f"ioctl {request:#x}: {os.strerror(err)}")
    return ret


class _Fd:
    def __init__(self, fd: int):
        self.fd = fd

    def ioctl(self, request: int, arg=0) -> int:
        return _ioctl(self.fd, request, arg)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class System(_Fd):
    """/dev/kvm itself."""

    def __init__(self, path: str = "/dev/kvm"):
        super().__init__(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        version = self.ioctl(KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            self.close()
            raise KvmError(errno.EINVAL, f"KVM API version {version}, expected {KVM_API_VERSION}")

    def check_extension(self, cap: int) -> int:
        return self.ioctl(KVM_CHECK_EXTENSION, cap)

    def vcpu_mmap_size(self) -> int:
        return self.ioctl(KVM_GET_VCPU_MMAP_SIZE)

    def supported_cpuid(self) -> list[kvm_cpuid_entry2]:
        n = 256
        while True:
            buf = kvm_cpuid2_n(n)(nent=n)
            try:
                self.ioctl(KVM_GET_SUPPORTED_CPUID, buf)
            except KvmError as e:
                if e.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            return list(buf.entries[:buf.nent])

    def msr_index_list(self) -> list[int]:
        """The MSRs KVM saves and restores for a vCPU (KVM_GET_MSR_INDEX_LIST)."""
        probe = kvm_msr_list(nmsrs=0)
        try:
            self.ioctl(KVM_GET_MSR_INDEX_LIST, probe)
        except KvmError as e:
            if e.errno != errno.E2BIG:
                raise
        buf = (c_u32 * (1 + probe.nmsrs))(probe.nmsrs)
        _ioctl(self.fd, KVM_GET_MSR_INDEX_LIST, buf)
        return list(buf[1:1 + buf[0]])

    def create_vm(self) -> "Vm":
        return Vm(self, self.ioctl(KVM_CREATE_VM, 0))


class Vm(_Fd):
    def __init__(self, system: System, fd: int):
        super().__init__(fd)
        self.system = system

    def set_user_memory_region(self, slot: int, gpa: int, size: int, host_addr: int,
                               flags: int = 0) -> None:
        self.ioctl(KVM_SET_USER_MEMORY_REGION,
                   kvm_userspace_memory_region(slot, flags, gpa, size, host_addr))

    def set_tss_addr(self, addr: int) -> None:
        self.ioctl(KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        self.ioctl(KVM_SET_IDENTITY_MAP_ADDR, c_u64(addr))

    def create_irqchip(self) -> None:
        self.ioctl(KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = 0) -> None:
        self.ioctl(KVM_CREATE_PIT2, kvm_pit_config(flags=flags))

    def get_pit2(self) -> kvm_pit_state2:
        state = kvm_pit_state2()
        self.ioctl(KVM_GET_PIT2, state)
        return state

    def set_pit2(self, state: kvm_pit_state2) -> None:
        self.ioctl(KVM_SET_PIT2, state)

    def get_irqchip(self, chip: int) -> kvm_irqchip:
        state = kvm_irqchip(chip_id=chip)
        self.ioctl(KVM_GET_IRQCHIP, state)
        return state

    def set_irqchip(self, state: kvm_irqchip) -> None:
        self.ioctl(KVM_SET_IRQCHIP, state)

    def get_clock(self) -> kvm_clock_data:
        state = kvm_clock_data()
        self.ioctl(KVM_GET_CLOCK, state)
        return state

    def set_clock(self, state: kvm_clock_data) -> None:
        self.ioctl(KVM_SET_CLOCK, state)

    def irq_line(self, irq: int, level: int) -> None:
        self.ioctl(KVM_IRQ_LINE, kvm_irq_level(irq, level))

    def signal_msi(self, address: int, data: int) -> int:
        return self.ioctl(KVM_SIGNAL_MSI, kvm_msi(address_lo=address & 0xFFFFFFFF,
                                                   address_hi=address >> 32, data=data))

    def set_gsi_routing(self, entries: list[kvm_irq_routing_entry]) -> None:
        table = kvm_irq_routing_n(len(entries))(nr=len(entries))
        for i, e in enumerate(entries):
            table.entries[i] = e
        self.ioctl(KVM_SET_GSI_ROUTING, table)

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        self.ioctl(KVM_IRQFD, kvm_irqfd(fd=fd, gsi=gsi,
                                         flags=KVM_IRQFD_FLAG_DEASSIGN if deassign else 0))

    def ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool,
                  datamatch: int | None = None, deassign: bool = False) -> None:
        flags = (KVM_IOEVENTFD_FLAG_PIO if pio else 0) | \
                (KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0) | \
                (KVM_IOEVENTFD_FLAG_DATAMATCH if datamatch is not None else 0)
        self.ioctl(KVM_IOEVENTFD, kvm_ioeventfd(datamatch=datamatch or 0, addr=addr,
                                                 len=length, fd=fd, flags=flags))

    def create_vcpu(self, index: int) -> "Vcpu":
        return Vcpu(self, index, self.ioctl(KVM_CREATE_VCPU, index))


class Vcpu(_Fd):
    def __init__(self, vm: Vm, index: int, fd: int):
        super().__init__(fd)
        self.vm = vm
        self.index = index
        size = vm.system.vcpu_mmap_size()
        self.run_mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_address = ctypes.addressof(ctypes.c_char.from_buffer(self.run_mmap))
        self.kvm_run = kvm_run.from_address(self.run_address)
        self.xsave_size = max(ctypes.sizeof(kvm_xsave),
                              vm.system.check_extension(KVM_CAP_XSAVE2))

    def run(self) -> int:
        """KVM_RUN from Python (the C loop in akvm.base.native is the fast path)."""
        self.ioctl(KVM_RUN)
        return self.kvm_run.exit_reason

    def _get(self, request: int, struct):
        out = struct()
        self.ioctl(request, out)
        return out

    def get_regs(self) -> kvm_regs: return self._get(KVM_GET_REGS, kvm_regs)
    def set_regs(self, regs: kvm_regs) -> None: self.ioctl(KVM_SET_REGS, regs)
    def get_sregs(self) -> kvm_sregs: return self._get(KVM_GET_SREGS, kvm_sregs)
    def set_sregs(self, sregs: kvm_sregs) -> None: self.ioctl(KVM_SET_SREGS, sregs)
    def get_fpu(self) -> kvm_fpu: return self._get(KVM_GET_FPU, kvm_fpu)
    def get_lapic(self) -> kvm_lapic_state: return self._get(KVM_GET_LAPIC, kvm_lapic_state)
    def set_lapic(self, s: kvm_lapic_state) -> None: self.ioctl(KVM_SET_LAPIC, s)
    def get_xcrs(self) -> kvm_xcrs: return self._get(KVM_GET_XCRS, kvm_xcrs)
    def set_xcrs(self, x: kvm_xcrs) -> None: self.ioctl(KVM_SET_XCRS, x)
    def get_vcpu_events(self) -> kvm_vcpu_events: return self._get(KVM_GET_VCPU_EVENTS, kvm_vcpu_events)
    def set_vcpu_events(self, e: kvm_vcpu_events) -> None: self.ioctl(KVM_SET_VCPU_EVENTS, e)

    def set_guest_debug(self, control: int, debugreg: list[int] = ()) -> None:
        """KVM_SET_GUEST_DEBUG: KVM_GUESTDBG_* flags, and DR0-DR7 for USE_HW_BP."""
        arg = kvm_guest_debug(control=control)
        for i, value in enumerate(debugreg):
            arg.arch.debugreg[i] = value
        self.ioctl(KVM_SET_GUEST_DEBUG, arg)
    def get_debugregs(self) -> kvm_debugregs: return self._get(KVM_GET_DEBUGREGS, kvm_debugregs)
    def set_debugregs(self, d: kvm_debugregs) -> None: self.ioctl(KVM_SET_DEBUGREGS, d)

    def get_tsc_khz(self) -> int:
        return self.ioctl(KVM_GET_TSC_KHZ)

    def set_tsc_khz(self, khz: int) -> None:
        self.ioctl(KVM_SET_TSC_KHZ, khz)

    def kvmclock_ctrl(self) -> None:
        """Tell a guest using kvmclock that it was paused (EINVAL when it does not use it)."""
        self.ioctl(KVM_KVMCLOCK_CTRL)

    def get_cpuid2(self) -> list[kvm_cpuid_entry2]:
        """The CPUID table set with KVM_SET_CPUID2."""
        n = 256
        while True:
            buf = kvm_cpuid2_n(n)(nent=n)
            try:
                self.ioctl(KVM_GET_CPUID2, buf)
            except KvmError as e:
                if e.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            return list(buf.entries[:buf.nent])

    def get_mp_state(self) -> int:
        return self._get(KVM_GET_MP_STATE, kvm_mp_state).mp_state

    def set_mp_state(self, state: int) -> None:
        self.ioctl(KVM_SET_MP_STATE, kvm_mp_state(state))

    def get_xsave(self) -> bytearray:
        """The XSAVE area as KVM formats it (standard, non-compacted layout)."""
        buf = (ctypes.c_char * self.xsave_size)()
        request = KVM_GET_XSAVE if self.xsave_size == ctypes.sizeof(kvm_xsave) else KVM_GET_XSAVE2
        _ioctl(self.fd, request, buf)
        return bytearray(buf.raw)

    def set_xsave(self, data: bytes) -> None:
        buf = (ctypes.c_char * max(len(data), self.xsave_size)).from_buffer_copy(
            bytes(data).ljust(self.xsave_size, b"\0"))
        _ioctl(self.fd, KVM_SET_XSAVE, buf)

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        buf = kvm_msrs_n(len(indices))(nmsrs=len(indices))
        for i, idx in enumerate(indices):
            buf.entries[i].index = idx
        n = self.ioctl(KVM_GET_MSRS, buf)
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def set_msrs(self, values: dict[int, int]) -> int:
        buf = kvm_msrs_n(len(values))(nmsrs=len(values))
        for i, (idx, val) in enumerate(values.items()):
            buf.entries[i].index = idx
            buf.entries[i].data = val
        return self.ioctl(KVM_SET_MSRS, buf)

    def set_cpuid2(self, entries: list[kvm_cpuid_entry2]) -> None:
        buf = kvm_cpuid2_n(len(entries))(nent=len(entries))
        for i, e in enumerate(entries):
            buf.entries[i] = e
        self.ioctl(KVM_SET_CPUID2, buf)

    def close(self) -> None:
        self.kvm_run = None
        try:
            self.run_mmap.close()
        except BufferError:
            pass
        super().close()
