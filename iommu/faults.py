"""Primary fault logging and the two event interrupts (VT-d 7.3, 10.4.9-10.4.13, 10.4.25-10.4.29).

FaultLog owns FSTS and the fault recording registers; EventInterrupt is
the register block (control with IM/IP, data, address, upper address) and
the rule that turns an interrupt condition into one MSI. The fault event
(FECTL/FEDATA/FEADDR/FEUADDR) and the invalidation completion event
(IECTL/IEDATA/IEADDR/IEUADDR) are both EventInterrupts.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

log = logging.getLogger("akvm.iommu")

# FSTS (10.4.9)
FSTS_PFO = 1 << 0        # primary fault overflow, RW1C
FSTS_PPF = 1 << 1        # primary pending fault, RO (some F bit is set)
FSTS_AFO = 1 << 2        # advanced fault overflow (advanced fault logging unsupported)
FSTS_APF = 1 << 3
FSTS_IQE = 1 << 4        # invalidation queue error, RW1C
FSTS_ICE = 1 << 5        # invalidation completion error (device-TLB), RW1C
FSTS_ITE = 1 << 6        # invalidation time-out error (device-TLB), RW1C
FSTS_FRI_SHIFT = 8       # fault record index, RO
FSTS_RW1C = FSTS_PFO | FSTS_IQE | FSTS_ICE | FSTS_ITE

# FECTL / IECTL (10.4.10, 10.4.26)
CTL_IM = 1 << 31         # interrupt mask, RW
CTL_IP = 1 << 30         # interrupt pending, RO

# Fault recording register, high qword (10.4.14)
FRCD_F = 1 << 63         # fault, RW1C
FRCD_T = 1 << 62         # type: 1 = read request, 0 = write request
FRCD_FR_SHIFT = 32
FRCD_SID_MASK = 0xFFFF

MsiSink = Callable[[int, int], object]


class EventInterrupt:
    """An interrupt the unit sends itself: one MSI per condition, unless masked.

    raise_condition(): IP is set; with IM clear the message goes out and IP
    clears at once, with IM set it stays pending until software unmasks (the
    message goes out then) or services the condition (clear_pending()).
    """

    def __init__(self, name: str, msi: MsiSink):
        self.name = name
        self.msi = msi
        self.control = CTL_IM            # masked at reset
        self.data = 0                    # 15:0 data, 31:16 extended data (x2APIC mode)
        self.address = 0                 # 31:2
        self.upper_address = 0
        self.sent = 0
        self.failed = 0

    _STATE = ("control", "data", "address", "upper_address", "sent", "failed")

    def snapshot(self) -> dict:
        return {name: getattr(self, name) for name in self._STATE}

    def restore(self, state: dict) -> None:
        for name in self._STATE:
            setattr(self, name, int(state[name]))

    def raise_condition(self) -> None:
        if self.control & CTL_IP:
            return
        self.control |= CTL_IP
        if not self.control & CTL_IM:
            self._send()

    def clear_pending(self) -> None:
        self.control &= ~CTL_IP

    def write_control(self, value: int) -> None:
        self.control = (self.control & ~CTL_IM) | (value & CTL_IM)
        if self.control & CTL_IP and not self.control & CTL_IM:
            self._send()

    def _send(self) -> None:
        self.control &= ~CTL_IP
        address = (self.upper_address << 32) | (self.address & ~0x3)
        try:
            self.msi(address, self.data & 0xFFFF)
        except Exception as e:    # e.g. KVM refusing an address the guest programmed
            self.failed += 1
            if self.failed == 1:
                log.warning("iommu: %s interrupt %#x/%#x not delivered: %s", self.name,
                            address, self.data, e)
            return
        self.sent += 1


class FaultLog:
    """FSTS and the fault recording registers (primary fault logging, 7.3.1).

    Records are used in a ring: a fault goes into the next record unless that
    record still holds an unserviced fault, in which case FSTS.PFO is set and
    the fault is lost. Software clears a record by writing 1 to its F bit.
    """

    def __init__(self, records: int, event: EventInterrupt):
        self.records = [[0, 0] for _ in range(records)]     # [low qword, high qword]
        self.event = event
        self.status = 0          # the RW1C bits of FSTS (PPF and FRI are computed)
        self.fri = 0
        self._next = 0
        self.recorded = 0
        self.overflowed = 0
        self.suppressed = 0      # not recorded because the context entry set FPD
        self.by_reason: Counter[int] = Counter()

    @property
    def pending(self) -> bool:
        return any(hi & FRCD_F for _, hi in self.records)

    def snapshot(self) -> dict:
        return {"records": [list(r) for r in self.records], "status": self.status,
                "fri": self.fri, "next": self._next, "recorded": self.recorded,
                "overflowed": self.overflowed, "suppressed": self.suppressed,
                "by_reason": sorted(self.by_reason.items())}

    def restore(self, state: dict) -> None:
        records = state["records"]
        if len(records) != len(self.records):
            raise ValueError(f"{len(records)} fault records saved, {len(self.records)} here")
        self.records = [[int(lo), int(hi)] for lo, hi in records]
        n = len(self.records)
        self.status, self.fri, self._next = int(state["status"]), int(state["fri"]) % n, \
            int(state["next"]) % n
        self.recorded, self.overflowed, self.suppressed = (
            int(state[k]) for k in ("recorded", "overflowed", "suppressed"))
        self.by_reason = Counter({int(r): int(c) for r, c in state["by_reason"]})

    @property
    def fsts(self) -> int:
        value = self.status | (self.fri << FSTS_FRI_SHIFT)
        if self.pending:
            value |= FSTS_PPF
        return value

    def _anything_pending(self) -> bool:
        return bool(self.status or self.pending)

    def set_status(self, bit: int) -> None:
        """An error condition (IQE, ICE, ITE): status set, fault event raised."""
        was = self._anything_pending()
        self.status |= bit
        if not was:
            self.event.raise_condition()

    def record(self, sid: int, reason: int, address: int, write: bool, *,
               fpd: bool = False) -> None:
        self.by_reason[reason] += 1
        if fpd:
            self.suppressed += 1
            return
        was = self._anything_pending()
        index = self._next
        slot = self.records[index]
        if slot[1] & FRCD_F:
            self.overflowed += 1
            self.status |= FSTS_PFO
        else:
            if not self.pending:
                self.fri = index
            slot[0] = address & ~0xFFF & 0xFFFF_FFFF_FFFF_FFFF
            slot[1] = (FRCD_F | (0 if write else FRCD_T) | (reason & 0xFF) << FRCD_FR_SHIFT |
                       (sid & FRCD_SID_MASK))
            self._next = (index + 1) % len(self.records)
            self.recorded += 1
        if not was:
            self.event.raise_condition()

    def write_fsts(self, value: int) -> None:
        self.status &= ~(value & FSTS_RW1C)
        self._serviced()

    def read_record(self, index: int, qword: int) -> int:
        return self.records[index][qword]

    def write_record(self, index: int, qword: int, value: int) -> None:
        """Only F (bit 127) is writable: write 1 to clear."""
        if qword == 1 and value & FRCD_F:
            self.records[index][1] &= ~FRCD_F
            self._serviced()

    def _serviced(self) -> None:
        if self.pending and not self.records[self.fri][1] & FRCD_F:
            n = len(self.records)
            self.fri = next(i % n for i in range(self.fri, self.fri + n)
                            if self.records[i % n][1] & FRCD_F)
        if not self._anything_pending():
            self.event.clear_pending()
