"""Interrupt delivery: a device raises a line; the line reaches the guest.

Devices are handed an IrqLine and call set_level(); they never see KVM.
IrqLine itself only remembers the level (what unit tests observe);
KvmIrqLine also drives the in-kernel PIC/IOAPIC with KVM_IRQ_LINE.
"""
from __future__ import annotations


class IrqLine:
    """An interrupt line with a level. Edge-triggered ISA sinks see the rising edge."""

    def __init__(self, gsi: int):
        self.gsi = gsi
        self.level = False
        self.raised = 0          # rising edges seen, for statistics and tests

    def set_level(self, level: bool) -> None:
        level = bool(level)
        if level and not self.level:
            self.raised += 1
        changed = level != self.level
        self.level = level
        if changed:
            self._deliver(level)

    def _deliver(self, level: bool) -> None:
        pass


class KvmIrqLine(IrqLine):
    """A GSI of the in-kernel irqchip."""

    def __init__(self, vm, gsi: int):
        super().__init__(gsi)
        self.vm = vm

    def _deliver(self, level: bool) -> None:
        self.vm.irq_line(self.gsi, int(level))
