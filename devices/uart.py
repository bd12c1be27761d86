"""A 16550A UART (the PC's COM1 at port 0x3F8, IRQ 4), modelled from the datasheet.

Transmission is instantaneous: a byte written to THR reaches the output
before the port write returns, so LSR.THRE and LSR.TEMT are always set.
Reception has the 16-byte FIFO of the 16550A (one holding register when
FIFOs are off) plus a bounded host-side backlog, so that text pasted faster
than the guest drains the FIFO waits instead of overrunning it.

Thread model: vCPU threads call read()/write(); an input thread calls
receive(). Register state is guarded by one lock; the output device is
written outside it (under a transmit-only lock that keeps bytes in order),
so a blocking output never stalls receive().

A transmit shortcut (akvm.devices.serial.SerialShortcut: THR writes and LSR reads
completed in C) can be attached: the model tells it, after every change,
whether a THR write may bypass the model (DLAB clear, no loopback, no THRE
interrupt enabled) and which LSR value a read may be answered with (only
while reading it has no side effect), and flushes the bytes it buffered
before any byte of its own, so the output keeps the guest's order.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Protocol

from akvm.devices.state import pack, restore_counters, save_counters, unpack

# Register offsets from the base port. DLL/DLM replace RBR/THR and IER
# while LCR.DLAB is set; IIR is read-only and FCR write-only at offset 2.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7
REGISTER_COUNT = 8

# IER: interrupt enables.
IER_ERBFI = 0x01    # received data available (and character timeout)
IER_ETBEI = 0x02    # transmitter holding register empty
IER_ELSI = 0x04     # receiver line status
IER_EDSSI = 0x08    # modem status
IER_MASK = 0x0F

# IIR: bit 0 clear means "an interrupt is pending"; bits 3:1 say which.
IIR_NO_INT = 0x01
IIR_MSI = 0x00      # modem status (lowest priority)
IIR_THRI = 0x02     # THR empty
IIR_RDI = 0x04      # received data available
IIR_RLSI = 0x06     # receiver line status (highest priority)
IIR_CTI = 0x0C      # character timeout: data below the trigger level
IIR_FIFO_ENABLED = 0xC0

# FCR: FIFO control.
FCR_FIFO_ENABLE = 0x01
FCR_RX_RESET = 0x02
FCR_TX_RESET = 0x04
FCR_DMA_MODE = 0x08
FCR_TRIGGER_MASK = 0xC0
RX_TRIGGER_LEVELS = (1, 4, 8, 14)   # indexed by FCR bits 7:6

# LCR: line control. Only DLAB changes behaviour; the rest is stored.
LCR_DLAB = 0x80

# MCR: modem control.
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08     # on a PC, gates the UART's interrupt onto the ISA IRQ line
MCR_LOOP = 0x10
MCR_MASK = 0x1F

# LSR: line status.
LSR_DR = 0x01       # data ready
LSR_OE = 0x02       # overrun error
LSR_PE = 0x04       # parity error
LSR_FE = 0x08       # framing error
LSR_BI = 0x10       # break interrupt
LSR_THRE = 0x20     # transmitter holding register empty
LSR_TEMT = 0x40     # transmitter empty
LSR_RXFE = 0x80     # error in receiver FIFO
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

# MSR: modem status; low nibble are deltas since the last MSR read.
MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04     # trailing edge of RI
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80

FIFO_DEPTH = 16
BAUD_CLOCK = 115200         # 1.8432 MHz / 16: baud = BAUD_CLOCK / divisor
DEFAULT_BACKLOG = 4096
# A host end that is always there: clear to send, data set ready, carrier.
HOST_MODEM_LINES = MSR_CTS | MSR_DSR | MSR_DCD


class TxShortcut(Protocol):
    def publish(self, tx_ok: bool, lsr: int) -> None: ...
    def take(self) -> bytes: ...


class Uart16550:
    """COM port: register file on the port bus, bytes out to `output`, in via receive().

    `output` is anything with write(bytes) (a chardev), or None to discard.
    `backlog` bounds the host-side receive queue in bytes; 0 makes host
    input behave like a raw wire (overrun as soon as the FIFO is full).
    """

    def __init__(self, irq, output=None, backlog: int = DEFAULT_BACKLOG):
        self.irq = irq
        self.output = output
        self.backlog_limit = backlog
        self._lock = threading.Lock()
        self._tx_lock = threading.Lock()
        self._backlog = bytearray()
        self.tx_bytes = 0           # bytes written to THR (sent or looped back)
        self.rx_bytes = 0           # bytes that entered the receiver FIFO
        self.rx_dropped = 0         # bytes lost to overrun
        self._shortcut: TxShortcut | None = None
        self._published: tuple[bool, int] | None = None
        self._power_on()

    def _power_on(self) -> None:
        """Master-reset values from the datasheet; the divisor is left at 9600 baud."""
        self._ier = 0
        self._lcr = 0
        self._mcr = 0
        self._scr = 0
        self._dll = BAUD_CLOCK // 9600
        self._dlm = 0
        self._fifo_enabled = False
        self._rx_trigger = 1
        self._rx: deque[int] = deque()
        self._rbr = 0               # last byte read: RBR keeps it when empty
        self._lsr_errors = 0
        self._thre_pending = False
        self._modem_lines = HOST_MODEM_LINES
        self._msr_deltas = 0

    def reset(self) -> None:
        """Machine reset: registers to power-on values; queued host input survives."""
        with self._lock:
            self._power_on()
            self._update_irq()

    def attach_shortcut(self, shortcut: TxShortcut) -> None:
        with self._lock:
            self._shortcut = shortcut
            self._published = None
            self._publish()

    def flush_shortcut(self) -> None:
        """Send what the shortcut buffered; its thread calls this, and so does shutdown."""
        with self._tx_lock:
            self._flush_shortcut_locked()

    def _flush_shortcut_locked(self) -> None:
        """Caller holds _tx_lock."""
        if self._shortcut is None:
            return
        data = self._shortcut.take()
        if data:
            with self._lock:
                self.tx_bytes += len(data)
            if self.output is not None:
                self.output.write(data)

    def _publish(self) -> None:
        """Caller holds _lock: tell the shortcut what it may do now."""
        if self._shortcut is None:
            return
        tx_ok = not (self._lcr & LCR_DLAB or self._mcr & MCR_LOOP or self._ier & IER_ETBEI)
        quiet = not self._rx and not self._lsr_errors
        state = (tx_ok, LSR_THRE | LSR_TEMT if quiet else 0)
        if state != self._published:
            self._published = state
            self._shortcut.publish(*state)

    # -- bus interface ----------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """Wider accesses are split into byte accesses, as the ISA bus does."""
        value = 0
        for i in range(size):
            value |= self._read_byte(offset + i) << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self._write_byte(offset + i, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, reg: int) -> int:
        if reg >= REGISTER_COUNT:
            return 0xFF
        with self._lock:
            dlab = self._lcr & LCR_DLAB
            if reg == RBR:
                return self._dll if dlab else self._read_rbr()
            if reg == IER:
                return self._dlm if dlab else self._ier
            if reg == IIR:
                return self._read_iir()
            if reg == LCR:
                return self._lcr
            if reg == MCR:
                return self._mcr
            if reg == LSR:
                return self._read_lsr()
            if reg == MSR:
                return self._read_msr()
            return self._scr

    def _write_byte(self, reg: int, value: int) -> None:
        with self._lock:
            transmit = reg == THR and not self._lcr & LCR_DLAB
            if not transmit:
                self._write_register(reg, value)
        if transmit:
            self._transmit(value)   # takes the locks itself; output may block

    def _write_register(self, reg: int, value: int) -> None:
        if reg == DLL:
            self._dll = value
        elif reg == IER:
            if self._lcr & LCR_DLAB:
                self._dlm = value
            else:
                self._write_ier(value)
        elif reg == FCR:
            self._write_fcr(value)
        elif reg == LCR:
            self._lcr = value
            self._publish()             # DLAB: whether THR writes may bypass the model
        elif reg == MCR:
            self._write_mcr(value)
        elif reg == SCR:
            self._scr = value
        # LSR and MSR writes are factory-test only on real parts: ignored.

    # -- registers --------------------------------------------------------

    def _read_rbr(self) -> int:
        if self._rx:
            self._rbr = self._rx.popleft()
            self._pump_backlog()
            self._update_irq()
        return self._rbr

    def _read_iir(self) -> int:
        source = self._pending_interrupt()
        if source == IIR_THRI:
            # Reading IIR while THRE is the reported source acknowledges it.
            self._thre_pending = False
            self._update_irq()
        return source | (IIR_FIFO_ENABLED if self._fifo_enabled else 0)

    def _read_lsr(self) -> int:
        lsr = LSR_THRE | LSR_TEMT | self._lsr_errors
        if self._rx:
            lsr |= LSR_DR
        if self._lsr_errors:
            # Reading LSR clears the error bits and the line status interrupt.
            self._lsr_errors = 0
            self._update_irq()
        return lsr

    def _read_msr(self) -> int:
        msr = self._modem_lines | self._msr_deltas
        if self._msr_deltas:
            self._msr_deltas = 0
            self._update_irq()
        return msr

    def _write_ier(self, value: int) -> None:
        old = self._ier
        self._ier = value & IER_MASK
        if self._ier & IER_ETBEI and not old & IER_ETBEI:
            # THR is always empty, so enabling ETBEI raises THRE at once;
            # drivers (Linux's 8250 startup test) rely on that.
            self._thre_pending = True
        self._update_irq()

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_FIFO_ENABLE)
        if enable != self._fifo_enabled:
            self._rx.clear()        # changing FIFO mode empties both FIFOs
        self._fifo_enabled = enable
        if enable:
            # Other FCR bits are only programmed while FCR0 is written as 1.
            if value & FCR_RX_RESET:
                self._rx.clear()
            # FCR_TX_RESET: the transmit FIFO is always empty here.
            self._rx_trigger = RX_TRIGGER_LEVELS[(value & FCR_TRIGGER_MASK) >> 6]
        self._pump_backlog()
        self._update_irq()

    def _write_mcr(self, value: int) -> None:
        was_loop = self._mcr & MCR_LOOP
        self._mcr = value & MCR_MASK
        self._set_modem_lines(self._modem_inputs())
        if was_loop and not self._mcr & MCR_LOOP:
            self._pump_backlog()    # host input held back during loopback
        self._update_irq()

    # -- modem lines ------------------------------------------------------

    def _modem_inputs(self) -> int:
        """MSR bits 7:4: the host's lines, or MCR's outputs wired back in loopback."""
        if not self._mcr & MCR_LOOP:
            return HOST_MODEM_LINES
        mcr = self._mcr
        lines = 0
        if mcr & MCR_RTS:
            lines |= MSR_CTS
        if mcr & MCR_DTR:
            lines |= MSR_DSR
        if mcr & MCR_OUT1:
            lines |= MSR_RI
        if mcr & MCR_OUT2:
            lines |= MSR_DCD
        return lines

    def _set_modem_lines(self, lines: int) -> None:
        changed = lines ^ self._modem_lines
        if changed & MSR_CTS:
            self._msr_deltas |= MSR_DCTS
        if changed & MSR_DSR:
            self._msr_deltas |= MSR_DDSR
        if changed & MSR_DCD:
            self._msr_deltas |= MSR_DDCD
        if self._modem_lines & MSR_RI and not lines & MSR_RI:
            self._msr_deltas |= MSR_TERI
        self._modem_lines = lines

    # -- data paths -------------------------------------------------------

    def _transmit(self, byte: int) -> None:
        with self._tx_lock:
            self._flush_shortcut_locked()
            with self._lock:
                # Writing THR clears THRE; the byte leaves at once, so THR is
                # empty again and THRE re-asserts. Dropping the line in between
                # gives edge-triggered interrupt controllers a fresh edge.
                self._thre_pending = False
                self._update_irq()
                self.tx_bytes += 1
                looped = bool(self._mcr & MCR_LOOP)
                if looped:
                    self._receive_locked(bytes((byte,)), via_backlog=False)
                self._thre_pending = True
                self._update_irq()
            if not looped and self.output is not None:
                self.output.write(bytes((byte,)))

    def receive(self, data: bytes) -> int:
        """Host input. Returns how many bytes were kept (not lost to overrun)."""
        with self._lock:
            kept = self._receive_locked(bytes(data), via_backlog=True)
            self._update_irq()
            return kept

    def _receive_locked(self, data: bytes, via_backlog: bool) -> int:
        if via_backlog:
            self._backlog += data
            self._pump_backlog()
            excess = len(self._backlog) - self.backlog_limit
            if excess > 0:
                del self._backlog[-excess:]     # newest bytes are lost
        else:
            room = self._rx_capacity() - len(self._rx)
            self._rx.extend(data[:room])
            self.rx_bytes += min(room, len(data))
            excess = max(0, len(data) - room)
        if excess > 0:
            self._lsr_errors |= LSR_OE
            self.rx_dropped += excess
        return len(data) - max(excess, 0)

    def _pump_backlog(self) -> None:
        """Move queued host input into the receiver; the line is cut in loopback."""
        if self._mcr & MCR_LOOP or not self._backlog:
            return
        n = min(self._rx_capacity() - len(self._rx), len(self._backlog))
        if n > 0:
            self._rx.extend(self._backlog[:n])
            del self._backlog[:n]
            self.rx_bytes += n

    def _rx_capacity(self) -> int:
        return FIFO_DEPTH if self._fifo_enabled else 1

    # -- interrupts -------------------------------------------------------

    def _pending_interrupt(self) -> int:
        """The highest-priority enabled source, as an IIR value (without FIFO bits)."""
        ier = self._ier
        if ier & IER_ELSI and self._lsr_errors:
            return IIR_RLSI
        if ier & IER_ERBFI and self._rx:
            if self._fifo_enabled and len(self._rx) < self._rx_trigger:
                return IIR_CTI      # the timeout, modelled as immediate
            return IIR_RDI
        if ier & IER_ETBEI and self._thre_pending:
            return IIR_THRI
        if ier & IER_EDSSI and self._msr_deltas:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        # The shortcut learns the new state before the line moves: a vCPU on
        # another thread may take the interrupt and read LSR through C at once,
        # and with the old (quiet) LSR it would see no data, and an
        # edge-triggered line that stays high never interrupts again.
        self._publish()
        # PC wiring: the OUT2 pin enables the IRQ driver. Loopback forces the
        # OUT2 pin inactive, so interrupts then show in IIR but not on the line.
        gate = self._mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2
        self.irq.set_level(gate and self._pending_interrupt() != IIR_NO_INT)

    # -- snapshots (akvm.devices.state) -------------------------------------

    _REGISTERS = ("ier", "lcr", "mcr", "scr", "dll", "dlm", "rx_trigger", "rbr", "lsr_errors",
                  "modem_lines", "msr_deltas")
    _COUNTERS = ("tx_bytes", "rx_bytes", "rx_dropped")

    def snapshot(self) -> dict:
        self.flush_shortcut()           # bytes C holds go out first: they precede the snapshot
        with self._lock:
            state = {name: getattr(self, f"_{name}") for name in self._REGISTERS}
            state.update(fifo_enabled=self._fifo_enabled, thre_pending=self._thre_pending,
                         rx=pack(bytes(self._rx)), backlog=pack(self._backlog),
                         **save_counters(self, self._COUNTERS))
            return state

    def restore(self, state: dict) -> None:
        with self._lock:
            for name in self._REGISTERS:
                setattr(self, f"_{name}", int(state[name]) & 0xFF)
            self._fifo_enabled = bool(state["fifo_enabled"])
            self._thre_pending = bool(state["thre_pending"])
            self._rx = deque(unpack(state["rx"])[:self._rx_capacity()])
            self._backlog = bytearray(unpack(state["backlog"])[:self.backlog_limit])
            restore_counters(self, state, self._COUNTERS)
            self._published = None
            self._update_irq()

    # -- introspection ----------------------------------------------------

    @property
    def divisor(self) -> int:
        return self._dlm << 8 | self._dll

    @property
    def baud(self) -> int:
        """Programmed baud rate (0 if the divisor is 0); informational only."""
        return BAUD_CLOCK // self.divisor if self.divisor else 0

    @property
    def backlog_len(self) -> int:
        return len(self._backlog)

    def __repr__(self) -> str:
        return (f"<Uart16550 irq={self.irq.gsi} tx={self.tx_bytes} rx={self.rx_bytes} "
                f"dropped={self.rx_dropped}>")
