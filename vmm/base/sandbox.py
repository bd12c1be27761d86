"""The system calls akvm may make once its VM is built: a seccomp filter.

A guest that found a bug in a device model (C or Python) would run with
akvm's privileges, often root's. Once the machine is built (KVM's VM and
vCPUs made, guest RAM mapped, images, sockets and consoles open), a run
needs far less than that: KVM and terminal ioctls, I/O on descriptors it
has or opens, threads, memory, sockets, time. apply() loads a filter
(libseccomp, through pyseccomp) that allows those for every thread, now
and later, with no_new_privs set; any other call fails with EPERM.

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
"""
from __future__ import annotations

import errno
import os
import threading

IMPORT_S = 10.0         # how long apply() waits for prepare()'s import of pyseccomp
# CLONE_THREAD: a new thread of this process; clone without it is a new process.
CLONE_THREAD = 0x0001_0000
PR_SET_NAME, PR_GET_NAME = 15, 16
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
    "process facts": ("uname", "sysinfo", "prlimit64", "getrlimit", "getuid", "geteuid",
                      "getgid", "getegid", "getrandom", "getcpu", "sched_getparam",
                      "sched_getscheduler", "getpriority"),
}


def _rules():
    """(syscall, *args) for the calls allowed only with some arguments."""
    import socket

    from pyseccomp import EQ, MASKED_EQ, Arg
    rules = [("clone", Arg(0, MASKED_EQ, CLONE_THREAD, CLONE_THREAD)),     # threads only
             ("tgkill", Arg(0, EQ, os.getpid())),                          # this process's
             ("prctl", Arg(0, EQ, PR_SET_NAME)), ("prctl", Arg(0, EQ, PR_GET_NAME)),
             ("ioctl", Arg(1, MASKED_EQ, 0xFF00, KVM_IOCTL_TYPE << 8))]
    rules += [("ioctl", Arg(1, EQ, request)) for request in TERMINAL_IOCTLS]
    rules += [("socket", Arg(0, EQ, family))
              for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)]
    return rules


_loading: threading.Thread | None = None


# The libraries pyseccomp loads, by the sonames their ABIs fix.
SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


def prepare() -> None:
    """Import pyseccomp on a thread while the VM is built (about 15 ms otherwise on the
    start-up's path)."""
    global _loading
    if _loading is None:
        _loading = threading.Thread(target=_import, name="sandbox-import", daemon=True)
        _loading.start()


def settle() -> None:
    """Wait (bounded) for prepare()'s import: a thread still loading libseccomp while the
    interpreter exits can crash it (a SIGSEGV after a one-line error, seen in CI)."""
    if _loading is not None:
        _loading.join(timeout=IMPORT_S)


def _import() -> None:
    """pyseccomp finds its libraries with ctypes.util.find_library, which runs ldconfig
    once for each (child processes that cost a boot about 10 ms on two CPUs): they are
    named by soname instead, and looked up only when that soname does not load."""
    import ctypes
    import ctypes.util
    real = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        try:
            ctypes.CDLL(SONAMES[name])
            return SONAMES[name]
        except (KeyError, OSError):
            return real(name)

    ctypes.util.find_library = find_library
    try:
        import pyseccomp  # noqa: F401
        import socket  # noqa: F401  (for the rules; nothing else at start-up needs it)
    except Exception:       # apply() imports it again and reports why
        pass
    finally:
        ctypes.util.find_library = real


def apply() -> None:
    """Load the filter for every thread of the process (TSYNC), no_new_privs set.
    Raises OSError if the kernel refuses it, ImportError without pyseccomp or libseccomp."""
    if _loading is not None:
        _loading.join(timeout=IMPORT_S)     # if not done by then, the import below waits
    import pyseccomp as seccomp
    f = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))
    f.set_attr(seccomp.Attr.CTL_TSYNC, 1)
    f.set_attr(seccomp.Attr.CTL_NNP, 1)
    # Every exit C completes is one ioctl (KVM_RUN): test it first, the rest by a
    # binary search, so the filter costs an exit a few BPF instructions.
    f.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    f.syscall_priority("ioctl", 255)
    for names in ALLOWED.values():
        for name in names:
            f.add_rule(seccomp.ALLOW, name)
    for name, *args in _rules():
        f.add_rule(seccomp.ALLOW, name, *args)
    # glibc makes threads with clone3, whose flags a filter cannot see; told it is
    # missing, glibc uses clone, whose flags the rule above checks.
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    f.load()
