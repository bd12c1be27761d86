"""The state protocol of device models: what a snapshot saves of a device, and how it comes back.

A device model the guest can observe implements

    snapshot() -> dict          its state as JSON data (ints, strings, bools, lists, dicts;
                                bytes through pack())
    restore(state: dict)        put that state into a device built anew from the same
                                configuration, before any vCPU runs

restore() goes through the model's normal paths where they have effects
outside it (BARs onto the buses, an interrupt line's level, irqfds), so the
machine around it follows; it sends no interrupt message of its own. A model
with a thread of its own that touches guest memory also implements

    pause(timeout) -> bool      hold that thread between two pieces of work (True once held)
    resume()

so that the snapshot sees guest memory and the model's state hold still.

Counters for --stats are saved too: a restored machine's statistics go on
from the snapshot's. A model that cannot be saved raises SnapshotUnsupported
from snapshot(); the machine also refuses a snapshot when a device on its
buses implements none of this (akvm.machine), so a new model cannot be
forgotten silently.
"""
from __future__ import annotations

from akvm.base.snapdata import pack, restore_counters, save_counters, unpack  # noqa: F401

import threading

__all__ = ["HoldBetweenCalls", "SnapshotUnsupported", "pack", "unpack", "save_counters",
           "restore_counters"]


class SnapshotUnsupported(Exception):
    """This device's state cannot be saved (the message names the device and why)."""


class HoldBetweenCalls:
    """pause()/resume() for a thread that runs queued calls (call(fn), on_thread,
    running()): the hold is itself a call, so the thread stops between two of them."""

    _release: threading.Event | None = None

    def pause(self, timeout: float) -> bool:
        """Hold the thread until resume(); True once it is held, or when it is not running."""
        if self.on_thread or not self.running():
            return True
        held, self._release = threading.Event(), threading.Event()
        release = self._release
        self.call(lambda: (held.set(), release.wait()))
        return held.wait(timeout)

    def resume(self) -> None:
        if self._release is not None:
            self._release.set()
            self._release = None
