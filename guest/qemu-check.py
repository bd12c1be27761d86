#!/usr/bin/env python3
"""Boot the guest kernel under QEMU/KVM and drive its monitor.

Runs every monitor command on each configuration (pc/q35 x 1/2 CPUs by
default), checks that `selftest` ends with "N passed, 0 failed" and that
`poweroff` stops QEMU, and reports the time from QEMU start to the first
prompt.  Usage:
    guest/qemu-check.py                  # the whole matrix
    guest/qemu-check.py -m q35 -s 2 -v   # one configuration, show output
"""
import argparse
import os
import re
import sys
import time

import pexpect

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT = "guest(Core 0)> "
# "kerninfx<BS>o" checks backspace editing: it must run kerninfo.
COMMANDS = ["help", "kerninfx\x7fo", "mem", "acpi", "pci", "cores", "iommu", "virtio",
            "bogus", "selftest", "bench"]


def run(machine, smp, kernel, verbose, extra):
    argv = ["-enable-kvm", "-kernel", kernel, "-serial", "stdio",
            "-display", "none", "-m", "512M", "-smp", str(smp),
            "-no-reboot", "-machine", machine] + extra
    t0 = time.monotonic()
    child = pexpect.spawn("qemu-system-x86_64", argv, encoding="latin-1",
                          timeout=30)
    log = []
    failures = []

    def until_prompt(what):
        try:
            child.expect_exact(PROMPT)
        except (pexpect.TIMEOUT, pexpect.EOF):
            failures.append(f"no prompt after {what}")
            return None
        log.append(child.before + PROMPT)
        return child.before

    boot = until_prompt("boot")
    t_prompt = time.monotonic() - t0
    if boot is None:
        log.append(child.before or "")
    else:
        if "EXCEPTION" in boot or "panic" in boot:
            failures.append("fault during boot")
        for cmd in COMMANDS:
            child.send(cmd + "\r")
            out = until_prompt(cmd)
            if out is None:
                break
            if re.search(r"EXCEPTION|panic", out):
                failures.append(f"fault in {cmd}")
            if cmd.startswith("kerninfx") and "TSC frequency" not in out:
                failures.append("backspace editing")
            if cmd == "bogus" and "Unknown command 'bogus'" not in out:
                failures.append("unknown command message")
            if cmd == "selftest":
                m = re.search(r"(\d+) passed, (\d+) failed", out)
                if not m or m.group(2) != "0":
                    failures.append("selftest: " + (m.group(0) if m else "no summary"))
            if cmd == "cores" and f"{smp} cores online" not in out:
                failures.append("cores count")
        else:
            child.send("poweroff\r")
            try:
                child.expect(pexpect.EOF, timeout=10)
            except pexpect.TIMEOUT:
                failures.append("poweroff did not stop QEMU")
            log.append(child.before)
    child.close(force=True)
    text = "".join(log).replace("\r\n", "\n")
    if verbose:
        print(text)
    status = "OK" if not failures else "FAILED: " + "; ".join(failures)
    print(f"{machine:4} smp={smp}: prompt after {t_prompt:.2f} s, {status}")
    return not failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--machine", action="append")
    ap.add_argument("-s", "--smp", type=int, action="append")
    ap.add_argument("-k", "--kernel", default=os.path.join(HERE, "build", "kernel"))
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("extra", nargs="*", help="extra QEMU arguments (after --)")
    a = ap.parse_args()
    ok = True
    for machine in a.machine or ["pc", "q35"]:
        for smp in a.smp or [1, 2]:
            ok &= run(machine, smp, a.kernel, a.verbose, a.extra)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
