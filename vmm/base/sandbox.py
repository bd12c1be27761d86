"""The system calls akvm may make once its VM is built: a seccomp filter.

A guest that found a bug in a device model (C or Python) would run with
akvm's privileges, often root's. Once the machine is built (KVM's VM and
vCPUs made, guest RAM mapped, images, sockets and consoles open), a run
needs far less than that: KVM and terminal ioctls, I/O on descriptors it
has or opens, threads, memory, sockets, time. apply() loads a filter
(libseccomp) that allows those for every thread, now and later, with
no_new_privs set; any other call fails with EPERM.

What it denies, among the rest: starting programs (execve), new processes
(fork, vfork, clone without CLONE_THREAD), signals to other processes,
ptrace and process_vm_*, namespaces and mounts, module and kexec loading,
bpf, perf_event_open, keyrings, privilege changes, userfaultfd, io_uring.
It does not confine the file system: a run may open and create files (a
snapshot, a log), so that stays with the user's permissions.

The allow-list is ALLOWED below, by purpose, and meant to cover normal
socket, file, mmap, poll, timer and thread use, so that device threads,
a gdb stub, user networking or snapshots need no change here; a call a
new feature needs goes into its group. `akvm run --sandbox off` runs
without the filter, to tell whether it is the cause of a failure.

libseccomp is called through ctypes, which the KVM bindings have loaded
already: a Python wrapper such as pyseccomp brings ctypes.util and
subprocess with it, 4-5 ms more on every start (README.md, Dependencies).
"""
from __future__ import annotations

import ctypes
import errno
import os

LIBSECCOMP = "libseccomp.so.2"      # by soname: the ABI this binding is written for
# From <seccomp.h>: actions, filter attributes (enum scmp_filter_attr) and
# argument comparisons (enum scmp_compare).
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_FLTATR_CTL_NNP, SCMP_FLTATR_CTL_TSYNC, SCMP_FLTATR_CTL_OPTIMIZE = 3, 4, 8
SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ = 4, 7
# CLONE_THREAD: a new thread of this process; clone without it is a new process.
CLONE_THREAD = 0x0001_0000
PR_SET_NAME, PR_GET_NAME = 15, 16
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10       # <sys/socket.h>
KVM_IOCTL_TYPE = 0xAE               # _IO(KVMIO, ...): bits 15:8 of the request
TERMINAL_IOCTLS = (0x5401, 0x5402, 0x5403, 0x5404,      # TCGETS, TCSETS, TCSETSW, TCSETSF
                   0x5413, 0x541B, 0x5421, 0x5451, 0x5450)  # TIOCGWINSZ, FIONREAD, FIONBIO,
                                                            # FIOCLEX, FIONCLEX

ALLOWED = {
    "memory": ("brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mlock",
               "munlock", "membarrier"),
    "threads and signals": ("futex", "set_robust_list", "get_robust_list", "rseq",
                            "set_tid_address", "sched_yield", "sched_getaffinity", "gettid",
                            "getpid", "getppid", "exit", "exit_group", "rt_sigaction",
                            "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "sigaltstack",
                            "restart_syscall"),
    "time": ("clock_gettime", "clock_getres", "gettimeofday", "nanosleep", "clock_nanosleep",
             "timerfd_create", "timerfd_settime", "timerfd_gettime", "times"),
    "descriptors": ("read", "write", "readv", "writev", "pread64", "pwrite64", "preadv",
                    "pwritev", "preadv2", "pwritev2", "lseek", "close", "close_range", "dup",
                    "dup2", "dup3", "fcntl", "fstat", "newfstatat", "statx", "statfs", "fstatfs",
                    "fdatasync", "fsync", "sync_file_range", "fallocate", "ftruncate", "flock",
                    "pipe2", "eventfd2", "getdents64", "copy_file_range", "sendfile", "splice"),
    "polling": ("poll", "ppoll", "select", "pselect6", "epoll_create1", "epoll_ctl",
                "epoll_wait", "epoll_pwait", "epoll_pwait2"),
    "files": ("openat", "unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir",
              "mkdirat", "rmdir", "readlink", "readlinkat", "access", "faccessat", "faccessat2",
              "getcwd", "fchmod", "umask"),
    "sockets": ("socketpair", "bind", "listen", "accept", "accept4", "connect", "getsockname",
                "getpeername", "getsockopt", "setsockopt", "sendto", "recvfrom", "sendmsg",
                "recvmsg", "sendmmsg", "recvmmsg", "shutdown"),
    "children": ("wait4", "waitid"),            # reaping the boot image's builder
    "process facts": ("uname", "sysinfo", "prlimit64", "getrlimit", "getrusage", "getuid",
                      "geteuid", "getgid", "getegid", "getrandom", "getcpu", "sched_getparam",
                      "sched_getscheduler", "getpriority"),
}


def SCMP_ACT_ERRNO(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class scmp_arg_cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _rules():
    """(syscall, (arg, op, datum_a[, datum_b])...) for the calls allowed only with
    some arguments."""
    rules = [("clone", (0, SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD)),  # threads only
             ("tgkill", (0, SCMP_CMP_EQ, os.getpid())),                       # this process's
             ("prctl", (0, SCMP_CMP_EQ, PR_SET_NAME)), ("prctl", (0, SCMP_CMP_EQ, PR_GET_NAME)),
             ("ioctl", (1, SCMP_CMP_MASKED_EQ, 0xFF00, KVM_IOCTL_TYPE << 8))]
    rules += [("ioctl", (1, SCMP_CMP_EQ, request)) for request in TERMINAL_IOCTLS]
    rules += [("socket", (0, SCMP_CMP_EQ, family))
              for family in (AF_UNIX, AF_INET, AF_INET6)]
    return rules


def _libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL(LIBSECCOMP, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_priority.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint8]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(scmp_arg_cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    return lib


class _Filter:
    """A libseccomp filter context; each call's negative errno becomes an OSError."""

    def __init__(self, lib: ctypes.CDLL, default_action: int):
        self.lib = lib
        self.ctx = lib.seccomp_init(default_action)
        if not self.ctx:
            raise OSError(errno.ENOMEM, "seccomp_init failed")

    def _check(self, rc: int, what: str) -> None:
        if rc < 0:
            raise OSError(-rc, f"{what}: {os.strerror(-rc)}")

    def _nr(self, name: str) -> int:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            raise RuntimeError(f"libseccomp does not know the system call {name}")
        return nr

    def attr(self, attr: int, value: int) -> None:
        self._check(self.lib.seccomp_attr_set(self.ctx, attr, value), "seccomp_attr_set")

    def priority(self, name: str, priority: int) -> None:
        self._check(self.lib.seccomp_syscall_priority(self.ctx, self._nr(name), priority),
                    f"seccomp_syscall_priority {name}")

    def add(self, action: int, name: str, *args: tuple) -> None:
        cmps = (scmp_arg_cmp * len(args))(*(scmp_arg_cmp(*a) for a in args))
        self._check(self.lib.seccomp_rule_add_array(self.ctx, action, self._nr(name),
                                                    len(args), cmps),
                    f"seccomp_rule_add {name}")

    def load(self) -> None:
        self._check(self.lib.seccomp_load(self.ctx), "seccomp_load")

    def release(self) -> None:
        self.lib.seccomp_release(self.ctx)


def apply() -> None:
    """Load the filter for every thread of the process (TSYNC), no_new_privs set.
    Raises OSError if libseccomp is missing or the kernel refuses the filter."""
    f = _Filter(_libseccomp(), SCMP_ACT_ERRNO(errno.EPERM))
    try:
        f.attr(SCMP_FLTATR_CTL_TSYNC, 1)
        f.attr(SCMP_FLTATR_CTL_NNP, 1)
        # Every exit C completes is one ioctl (KVM_RUN): test it first, the rest by a
        # binary search, so the filter costs an exit a few BPF instructions.
        f.attr(SCMP_FLTATR_CTL_OPTIMIZE, 2)
        f.priority("ioctl", 255)
        for names in ALLOWED.values():
            for name in names:
                f.add(SCMP_ACT_ALLOW, name)
        for name, *args in _rules():
            f.add(SCMP_ACT_ALLOW, name, *args)
        # glibc makes threads with clone3, whose flags a filter cannot see; told it is
        # missing, glibc uses clone, whose flags the rule above checks.
        f.add(SCMP_ACT_ERRNO(errno.ENOSYS), "clone3")
        f.load()
    finally:
        f.release()
