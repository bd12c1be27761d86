"""A GDB stub: the GDB remote serial protocol over TCP, for `akvm run --gdb`.

packets (framing), session (the packets and their replies over a Target),
registers (the target description), target (the machine's vCPUs as
threads, all-stop), server (the socket and its thread). The debugging
mechanisms themselves are the vCPU layer's (akvm.vcpu.debug, the pause
primitive in akvm.vcpu.cpu); nothing here talks to KVM directly.
"""
