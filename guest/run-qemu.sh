#!/bin/sh
# Boot the guest kernel under QEMU/KVM with the console on stdio.
# Usage: guest/run-qemu.sh [-smp N] [-machine q35] [other QEMU args...]
# Defaults: pc machine, 512 MiB, 2 CPUs.
here=$(dirname "$0")
kernel=${KERNEL:-$here/build/kernel}
[ -f "$kernel" ] || make -C "$here" >&2 || exit 1
exec qemu-system-x86_64 -enable-kvm -kernel "$kernel" -serial stdio \
	-display none -m 512M -smp 2 -no-reboot "$@"
