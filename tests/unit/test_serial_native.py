"""COM1 in C (devices/serial.c) against its Python twin, akvm.devices.uart.

The same port accesses go to a UART alone and to a UART with the C
shortcut in front of it (what a vCPU's exit loop does); whatever the
guest reads, the console receives and the interrupt line does must agree.
"""
from hypothesis import given, settings, strategies as st

from tests.conftest import examples

from akvm.devices.uart import IER, IER_ETBEI, LCR, LCR_DLAB, LSR, MCR, MCR_LOOP, THR, Uart16550
from tests.unit.test_fastpath import RunPage
from tests.unit.test_uart import Sink
from akvm.base.bus import Bus
from akvm.base.runloop import FastPath
from akvm.devices.serial import SerialShortcut
from akvm.base.irq import IrqLine

COM1 = 0x3F8


class Twin:
    """A UART on a port bus, optionally behind the C shortcut."""

    def __init__(self, native: bool):
        self.out, self.irq = Sink(), IrqLine(4)
        self.uart = Uart16550(self.irq, self.out)
        self.bus = Bus("pio")
        self.bus.register(COM1, 8, self.uart, "com1")
        self.page = RunPage()
        self.fast = FastPath(self.bus, Bus("mmio"))
        self.shortcut = None
        if native:
            self.shortcut = SerialShortcut(self.fast, COM1)
            self.uart.attach_shortcut(self.shortcut)

    def out_byte(self, reg, value):
        self.page.io(COM1 + reg, 1, out=True, value=value)
        if not self.fast.complete(self.page.address):
            self.bus.write(COM1 + reg, 1, value)

    def in_byte(self, reg):
        self.page.io(COM1 + reg, 1, out=False)
        if self.fast.complete(self.page.address):
            return self.page.io_data(1)[0]
        return self.bus.read(COM1 + reg, 1)

    def console(self):
        self.uart.flush_shortcut()
        return bytes(self.out.data)

    def close(self):
        if self.shortcut is not None:
            self.shortcut.close()


ops = st.lists(st.one_of(
    st.tuples(st.just("out"), st.integers(0, 7), st.integers(0, 255)),
    st.tuples(st.just("out"), st.sampled_from([THR, THR, LSR]), st.integers(0x20, 0x7E)),
    st.tuples(st.just("in"), st.integers(0, 7)),
    st.tuples(st.just("in"), st.just(LSR)),
    st.tuples(st.just("rx"), st.binary(min_size=1, max_size=20)),
), max_size=60)


@settings(max_examples=examples(150), deadline=None)
@given(ops)
def test_c_path_and_python_path_agree(sequence):
    py, c = Twin(False), Twin(True)
    try:
        for op in sequence:
            if op[0] == "out":
                py.out_byte(op[1], op[2])
                c.out_byte(op[1], op[2])
            elif op[0] == "in":
                assert py.in_byte(op[1]) == c.in_byte(op[1]), op
            else:
                assert py.uart.receive(op[1]) == c.uart.receive(op[1])
            assert (py.irq.level, py.irq.raised) == (c.irq.level, c.irq.raised), op
        assert py.console() == c.console()
        assert py.uart.tx_bytes == c.uart.tx_bytes
    finally:
        c.close()


def test_plain_transmit_and_idle_lsr_never_reach_python():
    c = Twin(True)
    try:
        for ch in b"hello\r\n":
            assert c.in_byte(LSR) == 0x60
            c.out_byte(THR, ch)
        assert c.bus.accesses == 0
        assert c.console() == b"hello\r\n"
        assert c.shortcut.stats() == {"tx_bytes": 7, "lsr_reads": 7}
    finally:
        c.close()


def test_states_that_need_the_model_go_to_python():
    """DLAB (THR is the divisor latch), loopback, THRE interrupts, pending input."""
    for reg, value in ((LCR, LCR_DLAB), (MCR, MCR_LOOP), (IER, IER_ETBEI)):
        c = Twin(True)
        try:
            c.out_byte(reg, value)
            before = c.bus.accesses
            c.out_byte(THR, 0x41)
            assert c.bus.accesses == before + 1, reg
        finally:
            c.close()
    c = Twin(True)
    try:
        c.uart.receive(b"x")
        assert c.in_byte(LSR) & 0x01 and c.bus.accesses == 1
    finally:
        c.close()


def test_bytes_keep_their_order_across_both_paths():
    c = Twin(True)
    try:
        c.out_byte(THR, ord("a"))              # buffered in C
        c.out_byte(MCR, MCR_LOOP)
        c.out_byte(THR, ord("x"))              # looped back, not sent
        c.out_byte(MCR, 0)
        c.out_byte(IER, IER_ETBEI)
        c.out_byte(THR, ord("b"))              # through Python: "a" must go first
        c.out_byte(IER, 0)
        c.out_byte(THR, ord("c"))
        assert c.console() == b"abc"
    finally:
        c.close()


def test_a_vcpu_taking_the_interrupt_at_once_sees_the_data():
    """The line rises on the input thread; a vCPU may read LSR through C before
    receive() returns, so C must already know the receiver is not empty."""
    from akvm.devices.uart import IER_ERBFI, MCR_OUT2
    c = Twin(True)
    seen = []

    class Line(IrqLine):
        def _deliver(self, level):
            if level:       # what C answers now; None: it leaves LSR to the model
                c.page.io(COM1 + LSR, 1, out=False)
                seen.append(c.page.io_data(1)[0] if c.fast.complete(c.page.address) else None)
    try:
        c.uart.irq = Line(4)
        c.out_byte(MCR, MCR_OUT2)
        c.out_byte(IER, IER_ERBFI)
        c.uart.receive(b"x")
        assert seen and (seen[0] is None or seen[0] & 0x01), seen
    finally:
        c.close()
