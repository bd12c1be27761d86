"""16550A register semantics, checked against the datasheet's behaviour."""
import threading
import time

import pytest

from akvm.devices.uart import (
    DLL, DLM, FCR, IER, IIR, LCR, LSR, MCR, MSR, RBR, SCR, THR,
    FCR_FIFO_ENABLE, FCR_RX_RESET, FCR_TX_RESET, IER_EDSSI, IER_ELSI, IER_ERBFI, IER_ETBEI,
    IIR_CTI, IIR_FIFO_ENABLED, IIR_MSI, IIR_NO_INT, IIR_RDI, IIR_RLSI, IIR_THRI,
    LCR_DLAB, LSR_DR, LSR_OE, LSR_TEMT, LSR_THRE,
    MCR_DTR, MCR_LOOP, MCR_OUT1, MCR_OUT2, MCR_RTS,
    MSR_CTS, MSR_DCD, MSR_DCTS, MSR_DDCD, MSR_DDSR, MSR_DSR, MSR_RI, MSR_TERI,
    Uart16550,
)
from akvm.base.bus import Bus
from akvm.base.irq import IrqLine


class Sink:
    def __init__(self):
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


@pytest.fixture
def out():
    return Sink()


@pytest.fixture
def uart(out):
    return Uart16550(IrqLine(4), out)


def rd(u, reg):
    return u.read(reg, 1)


def wr(u, reg, value):
    u.write(reg, 1, value)


def iir_id(u):
    return rd(u, IIR) & 0x0F


def fifo_on(u, trigger_bits=0x00):
    wr(u, FCR, FCR_FIFO_ENABLE | trigger_bits)


# -- reset state -------------------------------------------------------------

def test_power_on_values(uart):
    assert rd(uart, IER) == 0
    assert rd(uart, IIR) == IIR_NO_INT
    assert rd(uart, LCR) == 0
    assert rd(uart, MCR) == 0
    assert rd(uart, LSR) == LSR_THRE | LSR_TEMT
    assert rd(uart, MSR) == MSR_CTS | MSR_DSR | MSR_DCD     # a host is attached, no deltas
    assert uart.irq.level is False


def test_reset_restores_power_on_state(uart):
    wr(uart, IER, 0x0F)
    wr(uart, MCR, MCR_OUT2)
    wr(uart, SCR, 0x42)
    uart.reset()
    assert rd(uart, IER) == 0 and rd(uart, MCR) == 0 and rd(uart, SCR) == 0
    assert not uart.irq.level


# -- transmit ----------------------------------------------------------------

def test_thr_write_goes_to_output(uart, out):
    for ch in b"hi\n":
        wr(uart, THR, ch)
    assert bytes(out.data) == b"hi\n"
    assert uart.tx_bytes == 3
    assert rd(uart, LSR) & (LSR_THRE | LSR_TEMT) == LSR_THRE | LSR_TEMT


def test_output_none_discards():
    u = Uart16550(IrqLine(4), None)
    wr(u, THR, 0x41)
    assert u.tx_bytes == 1


def test_wide_access_is_split_into_bytes(uart):
    uart.write(SCR, 1, 0x5A)
    uart.write(LCR, 2, 0x0803)          # LCR=0x03, MCR=0x08
    assert rd(uart, LCR) == 0x03 and rd(uart, MCR) == 0x08
    assert uart.read(LCR, 2) == 0x0803
    assert uart.read(SCR, 2) == 0xFF5A  # past the last register reads as all ones


def test_bus_registration(out):
    bus = Bus("pio")
    u = Uart16550(IrqLine(4), out)
    bus.register(0x3F8, 8, u, "com1")
    bus.write(0x3F8, 1, ord("A"))
    bus.write(0x3FF, 1, 0x77)
    assert bytes(out.data) == b"A"
    assert bus.read(0x3FF, 1) == 0x77
    assert bus.read(0x3FD, 1) & LSR_THRE


# -- DLAB and divisor -------------------------------------------------------

def test_dlab_switches_offsets_0_and_1_to_divisor_latch(uart, out):
    wr(uart, IER, IER_ERBFI)
    wr(uart, LCR, LCR_DLAB | 0x03)
    wr(uart, DLL, 0x01)
    wr(uart, DLM, 0x02)
    assert rd(uart, DLL) == 0x01 and rd(uart, DLM) == 0x02
    assert out.data == b""              # DLL write did not transmit
    assert uart.divisor == 0x0201
    wr(uart, LCR, 0x03)
    assert rd(uart, IER) == IER_ERBFI   # IER untouched by the DLM write
    assert rd(uart, LCR) == 0x03


def test_baud_from_divisor(uart):
    wr(uart, LCR, LCR_DLAB)
    wr(uart, DLL, 1)
    wr(uart, DLM, 0)
    assert uart.baud == 115200
    wr(uart, DLL, 12)
    assert uart.baud == 9600


def test_dlab_read_of_offset_0_does_not_consume_rx(uart):
    uart.receive(b"x")
    wr(uart, LCR, LCR_DLAB)
    rd(uart, DLL)
    wr(uart, LCR, 0)
    assert rd(uart, LSR) & LSR_DR
    assert rd(uart, RBR) == ord("x")


def test_iir_and_fcr_reachable_with_dlab_set(uart):
    wr(uart, LCR, LCR_DLAB)
    wr(uart, FCR, FCR_FIFO_ENABLE)
    assert rd(uart, IIR) & IIR_FIFO_ENABLED == IIR_FIFO_ENABLED


# -- IER / scratch / LCR / MCR storage --------------------------------------

def test_ier_keeps_low_nibble_only(uart):
    wr(uart, IER, 0xFF)
    assert rd(uart, IER) == 0x0F


def test_scratch_register(uart):
    for v in (0x00, 0x55, 0xAA, 0xFF):
        wr(uart, SCR, v)
        assert rd(uart, SCR) == v


def test_mcr_keeps_five_bits(uart):
    wr(uart, MCR, 0xFF)
    assert rd(uart, MCR) == 0x1F


def test_lsr_and_msr_writes_are_ignored(uart):
    wr(uart, LSR, 0x00)
    wr(uart, MSR, 0x00)
    assert rd(uart, LSR) == LSR_THRE | LSR_TEMT
    assert rd(uart, MSR) == MSR_CTS | MSR_DSR | MSR_DCD


# -- receive, non-FIFO mode --------------------------------------------------

def test_receive_sets_dr_and_rbr_read_clears_it(uart):
    uart.receive(b"a")
    assert rd(uart, LSR) & LSR_DR
    assert rd(uart, RBR) == ord("a")
    assert not rd(uart, LSR) & LSR_DR
    assert uart.rx_bytes == 1


def test_empty_rbr_repeats_last_byte(uart):
    uart.receive(b"q")
    rd(uart, RBR)
    assert rd(uart, RBR) == ord("q")


def test_non_fifo_holds_one_byte_and_backlog_keeps_the_rest(uart):
    uart.receive(b"abc")
    assert uart.backlog_len == 2
    got = bytes(rd(uart, RBR) for _ in range(3))
    assert got == b"abc"
    assert not rd(uart, LSR) & (LSR_DR | LSR_OE)


def test_non_fifo_overrun_without_backlog():
    u = Uart16550(IrqLine(4), None, backlog=0)
    assert u.receive(b"ab") == 1
    lsr = rd(u, LSR)
    assert lsr & LSR_OE and lsr & LSR_DR
    assert rd(u, LSR) & LSR_OE == 0         # OE cleared by the LSR read
    assert rd(u, RBR) == ord("a")           # the newer byte was the one lost
    assert u.rx_dropped == 1


# -- FIFO --------------------------------------------------------------------

def test_fcr_enable_shows_in_iir_bits_7_6(uart):
    assert rd(uart, IIR) & 0xC0 == 0
    fifo_on(uart)
    assert rd(uart, IIR) == IIR_FIFO_ENABLED | IIR_NO_INT
    wr(uart, FCR, 0)
    assert rd(uart, IIR) & 0xC0 == 0


def test_fifo_holds_sixteen_bytes_then_overruns():
    u = Uart16550(IrqLine(4), None, backlog=0)
    fifo_on(u)
    assert u.receive(bytes(range(20))) == 16
    assert u.rx_dropped == 4
    lsr = rd(u, LSR)
    assert lsr & LSR_OE and lsr & LSR_DR
    assert bytes(rd(u, RBR) for _ in range(16)) == bytes(range(16))
    assert not rd(u, LSR) & (LSR_DR | LSR_OE)


def test_fifo_drained_from_backlog_loses_nothing(uart):
    fifo_on(uart)
    text = bytes(range(256)) * 4
    assert uart.receive(text) == len(text)
    got = bytearray()
    while rd(uart, LSR) & LSR_DR:
        got.append(rd(uart, RBR))
    assert bytes(got) == text
    assert uart.rx_bytes == len(text) and uart.rx_dropped == 0


def test_backlog_overflow_sets_overrun():
    u = Uart16550(IrqLine(4), None, backlog=8)
    fifo_on(u)
    assert u.receive(bytes(30)) == 24       # 16 in the FIFO + 8 queued
    assert rd(u, LSR) & LSR_OE
    assert u.rx_dropped == 6


def test_fcr_rx_reset_clears_fifo():
    u = Uart16550(IrqLine(4), None, backlog=0)
    fifo_on(u)
    u.receive(b"abcd")
    wr(u, FCR, FCR_FIFO_ENABLE | FCR_RX_RESET | FCR_TX_RESET)
    assert not rd(u, LSR) & LSR_DR
    assert rd(u, IIR) & 0xC0 == 0xC0        # reset bits self-clear; FIFOs stay on
    u.receive(b"z")
    assert rd(u, RBR) == ord("z")


def test_fcr_reset_refills_from_backlog(uart):
    fifo_on(uart)
    uart.receive(bytes(range(20)))
    wr(uart, FCR, FCR_FIFO_ENABLE | FCR_RX_RESET)
    assert rd(uart, RBR) == 16              # first 16 discarded, backlog moved in


def test_toggling_fifo_enable_clears_fifo():
    u = Uart16550(IrqLine(4), None, backlog=0)
    fifo_on(u)
    u.receive(b"abc")
    wr(u, FCR, 0)
    assert not rd(u, LSR) & LSR_DR


def test_fcr_other_bits_ignored_without_fifo_enable():
    u = Uart16550(IrqLine(4), None, backlog=0)
    wr(u, FCR, 0xC0)                        # trigger bits with FCR0 clear: not programmed
    assert rd(u, IIR) & 0xC0 == 0


# -- interrupt identification and priority ---------------------------------

def test_rda_interrupt(uart):
    wr(uart, IER, IER_ERBFI)
    assert iir_id(uart) == IIR_NO_INT
    uart.receive(b"k")
    assert iir_id(uart) == IIR_RDI
    rd(uart, RBR)
    assert iir_id(uart) == IIR_NO_INT


@pytest.mark.parametrize("bits,level", [(0x00, 1), (0x40, 4), (0x80, 8), (0xC0, 14)])
def test_fifo_trigger_levels(bits, level):
    u = Uart16550(IrqLine(4), None)
    fifo_on(u, bits)
    wr(u, IER, IER_ERBFI)
    if level > 1:
        u.receive(bytes(level - 1))
        assert iir_id(u) == IIR_CTI         # below trigger: timeout indication
    u.receive(b"\0" * (level - len(u._rx)))
    assert iir_id(u) == IIR_RDI


def test_cti_becomes_no_int_when_drained():
    u = Uart16550(IrqLine(4), None)
    fifo_on(u, 0xC0)
    wr(u, IER, IER_ERBFI)
    u.receive(b"ab")
    assert rd(u, IIR) == IIR_FIFO_ENABLED | IIR_CTI
    rd(u, RBR)
    rd(u, RBR)
    assert rd(u, IIR) == IIR_FIFO_ENABLED | IIR_NO_INT


def test_thre_raised_when_etbei_enabled(uart):
    wr(uart, IER, IER_ETBEI)
    assert iir_id(uart) == IIR_THRI


def test_thre_cleared_by_iir_read(uart):
    wr(uart, IER, IER_ETBEI)
    assert iir_id(uart) == IIR_THRI
    assert iir_id(uart) == IIR_NO_INT       # the first read acknowledged it


def test_thre_reasserts_on_reenable(uart):
    # Linux's 8250 startup probes exactly this sequence (UART_BUG_THRE).
    wr(uart, IER, IER_ETBEI)
    assert iir_id(uart) == IIR_THRI
    wr(uart, IER, 0)
    wr(uart, IER, IER_ETBEI)
    assert iir_id(uart) == IIR_THRI


def test_thr_write_clears_then_reasserts_thre_with_a_new_edge(uart):
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ETBEI)
    assert uart.irq.level and uart.irq.raised == 1
    wr(uart, THR, ord("x"))
    assert uart.irq.level
    assert uart.irq.raised == 2             # dropped and re-raised: an edge per byte
    assert iir_id(uart) == IIR_THRI


def test_thre_not_reported_while_disabled(uart):
    wr(uart, THR, ord("x"))
    assert iir_id(uart) == IIR_NO_INT


def test_rls_interrupt_on_overrun_cleared_by_lsr_read():
    u = Uart16550(IrqLine(4), None, backlog=0)
    wr(u, IER, IER_ELSI)
    u.receive(b"ab")
    assert iir_id(u) == IIR_RLSI
    assert rd(u, LSR) & LSR_OE
    assert iir_id(u) == IIR_NO_INT


def test_overrun_without_elsi_is_not_an_interrupt():
    u = Uart16550(IrqLine(4), None, backlog=0)
    u.receive(b"ab")
    assert iir_id(u) == IIR_NO_INT


def test_interrupt_priority_order():
    u = Uart16550(IrqLine(4), None, backlog=0)
    wr(u, IER, IER_ERBFI | IER_ETBEI | IER_ELSI | IER_EDSSI)   # THRE now pending
    wr(u, MCR, MCR_LOOP)                                       # modem lines change: MSI
    wr(u, MCR, MCR_LOOP | MCR_RTS)
    wr(u, THR, 1)                                              # looped back: RDA
    wr(u, THR, 2)                                              # overrun: RLS
    assert iir_id(u) == IIR_RLSI
    rd(u, LSR)
    assert iir_id(u) == IIR_RDI
    rd(u, RBR)
    assert iir_id(u) == IIR_THRI
    assert iir_id(u) == IIR_MSI                                # THRE acked by that read
    rd(u, MSR)
    assert iir_id(u) == IIR_NO_INT


def test_modem_status_interrupt(uart):
    wr(uart, IER, IER_EDSSI)
    wr(uart, MCR, MCR_LOOP)                 # host lines drop: deltas
    assert iir_id(uart) == IIR_MSI
    rd(uart, MSR)
    assert iir_id(uart) == IIR_NO_INT


# -- IRQ line and OUT2 ---------------------------------------------------------

def test_out2_gates_irq_line(uart):
    wr(uart, IER, IER_ERBFI)
    uart.receive(b"a")
    assert iir_id(uart) == IIR_RDI
    assert not uart.irq.level               # pending, but OUT2 is off
    wr(uart, MCR, MCR_OUT2)
    assert uart.irq.level
    wr(uart, MCR, 0)
    assert not uart.irq.level
    wr(uart, MCR, MCR_OUT2 | MCR_DTR | MCR_RTS)
    assert uart.irq.level
    rd(uart, RBR)
    assert not uart.irq.level


def test_irq_follows_ier(uart):
    wr(uart, MCR, MCR_OUT2)
    uart.receive(b"a")
    assert not uart.irq.level
    wr(uart, IER, IER_ERBFI)
    assert uart.irq.level
    wr(uart, IER, 0)
    assert not uart.irq.level


def test_irq_drops_when_thre_acknowledged(uart):
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ETBEI)
    assert uart.irq.level
    rd(uart, IIR)
    assert not uart.irq.level


def test_loopback_forces_out2_pin_off(uart):
    # In loopback the OUT2 pin is held inactive, which on a PC disconnects the IRQ.
    wr(uart, IER, IER_ERBFI)
    wr(uart, MCR, MCR_LOOP | MCR_OUT2)
    wr(uart, THR, 0x33)
    assert iir_id(uart) == IIR_RDI
    assert not uart.irq.level
    wr(uart, MCR, MCR_OUT2)
    assert uart.irq.level


# -- loopback and MSR -------------------------------------------------------

def test_loopback_returns_thr_bytes_to_receiver(uart, out):
    fifo_on(uart)
    wr(uart, MCR, MCR_LOOP)
    for ch in b"loop":
        wr(uart, THR, ch)
    assert out.data == b""
    assert bytes(rd(uart, RBR) for _ in range(4)) == b"loop"
    assert uart.tx_bytes == 4


def test_loopback_overrun_when_fifo_full(uart):
    fifo_on(uart)
    wr(uart, MCR, MCR_LOOP)
    for i in range(17):
        wr(uart, THR, i)
    assert rd(uart, LSR) & LSR_OE
    assert uart.rx_dropped == 1


def test_host_input_waits_during_loopback(uart):
    wr(uart, MCR, MCR_LOOP)
    uart.receive(b"h")
    assert not rd(uart, LSR) & LSR_DR
    wr(uart, MCR, 0)
    assert rd(uart, RBR) == ord("h")


@pytest.mark.parametrize("mcr,msr", [
    (MCR_RTS, MSR_CTS),
    (MCR_DTR, MSR_DSR),
    (MCR_OUT1, MSR_RI),
    (MCR_OUT2, MSR_DCD),
    (MCR_RTS | MCR_OUT2, MSR_CTS | MSR_DCD),     # Linux's autoconfig probe expects 0x90
    (MCR_DTR | MCR_RTS | MCR_OUT1 | MCR_OUT2, 0xF0),
])
def test_loopback_msr_mirrors_mcr(uart, mcr, msr):
    wr(uart, MCR, MCR_LOOP | mcr)
    assert rd(uart, MSR) & 0xF0 == msr


def test_msr_delta_bits_and_clear_on_read(uart):
    wr(uart, MCR, MCR_LOOP | MCR_RTS | MCR_DTR | MCR_OUT2)   # CTS/DSR/DCD stay up
    assert rd(uart, MSR) == MSR_CTS | MSR_DSR | MSR_DCD      # so no deltas
    wr(uart, MCR, MCR_LOOP)
    msr = rd(uart, MSR)
    assert msr & 0x0F == MSR_DCTS | MSR_DDSR | MSR_DDCD
    assert rd(uart, MSR) & 0x0F == 0


def test_teri_on_trailing_edge_of_ri_only(uart):
    wr(uart, MCR, MCR_LOOP)
    rd(uart, MSR)
    wr(uart, MCR, MCR_LOOP | MCR_OUT1)      # RI rises: no TERI
    assert rd(uart, MSR) & MSR_TERI == 0
    wr(uart, MCR, MCR_LOOP)                 # RI falls: TERI
    assert rd(uart, MSR) & MSR_TERI


# -- threads ----------------------------------------------------------------

def test_concurrent_receive_and_drain_lose_nothing(uart):
    fifo_on(uart)
    payload = bytes(i & 0xFF for i in range(3000))
    got = bytearray()

    def feed():
        for i in range(0, len(payload), 100):
            while uart.backlog_len > 3000:
                pass
            uart.receive(payload[i:i + 100])

    t = threading.Thread(target=feed)
    t.start()
    deadline = time.monotonic() + 10
    while len(got) < len(payload) and time.monotonic() < deadline:
        if rd(uart, LSR) & LSR_DR:
            got.append(rd(uart, RBR))
    t.join()
    assert bytes(got) == payload
