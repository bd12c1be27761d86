"""How an `akvm run` ended: the process exit status (documented in README.md)."""
import enum


class ExitCode(enum.IntEnum):
    POWEROFF = 0      # the guest powered off (ACPI S5), or the user quit (Ctrl-A x)
    USAGE = 2         # bad command line or input files; nothing ran
    RESET = 3         # the guest reset the machine (0xCF9, i8042, KVM system event)
    TRIPLE_FAULT = 4  # a vCPU shut down (triple fault)
    GUEST_ERROR = 5   # a vCPU stopped on an error KVM or akvm cannot complete
