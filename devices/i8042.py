"""The PS/2 controller (i8042) as far as a headless guest needs it, and the 0xCF9 reset register.

No keyboard or mouse is attached. The controller answers its own commands
(self-test, command byte, port tests) so drivers find a working controller,
and the output-buffer-full bit is set only while such a reply is queued:
a guest that polls port 0x64 for keystrokes never sees phantom data.
Its real job is rebooting: command 0xFE (pulse the reset line) and
clearing bit 0 of the output port both call the reset callback.

Ports 0x60 and 0x64 are not adjacent (0x61 is port B, 0x62-0x63 are
unrelated), so the controller exposes one bus device per port:
`data_port` for 0x60 and `control_port` for 0x64. register(bus) does both.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

DATA_PORT = 0x60
CONTROL_PORT = 0x64
RESET_CONTROL_PORT = 0xCF9

# Status register (read from 0x64).
STATUS_OBF = 0x01       # output buffer full: a byte waits at 0x60
STATUS_IBF = 0x02       # input buffer full: never, we consume writes at once
STATUS_SYS = 0x04       # system flag: passed self-test
STATUS_A2 = 0x08        # last write went to 0x64 (command) rather than 0x60 (data)
STATUS_UNLOCKED = 0x10  # keyboard not inhibited by the key lock
STATUS_AUX_OBF = 0x20   # the queued byte came from the aux (mouse) port

# Controller commands (written to 0x64).
CMD_READ_CONFIG = 0x20
CMD_WRITE_CONFIG = 0x60
CMD_DISABLE_AUX = 0xA7
CMD_ENABLE_AUX = 0xA8
CMD_TEST_AUX = 0xA9
CMD_SELF_TEST = 0xAA
CMD_TEST_KBD = 0xAB
CMD_DISABLE_KBD = 0xAD
CMD_ENABLE_KBD = 0xAE
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_A20_OFF = 0xDD
CMD_A20_ON = 0xDF
CMD_PULSE_RESET = 0xFE  # 0xF0-0xFF pulse output-port lines; bit 0 clear = reset line

SELF_TEST_OK = 0x55
PORT_TEST_OK = 0x00

# Controller configuration ("command byte").
CONFIG_KBD_INT = 0x01
CONFIG_AUX_INT = 0x02
CONFIG_SYS = 0x04
CONFIG_KBD_DISABLED = 0x10
CONFIG_AUX_DISABLED = 0x20
CONFIG_TRANSLATE = 0x40
DEFAULT_CONFIG = CONFIG_KBD_INT | CONFIG_SYS | CONFIG_TRANSLATE

# Output port: bit 0 is the CPU reset line (active low), bit 1 the A20 gate.
OUTPUT_PORT_RESET_N = 0x01
OUTPUT_PORT_A20 = 0x02


class _PortAdapter:
    """One port of the controller as a bus device (offset is always 0)."""

    def __init__(self, owner, read: Callable[[], int], write: Callable[[int], None]):
        self.state_owner = owner            # whose snapshot() covers this port
        self._read = read
        self._write = write

    def read(self, offset: int, size: int) -> int:
        return self._read()

    def write(self, offset: int, size: int, value: int) -> None:
        self._write(value & 0xFF)


class I8042:
    """Keyboard controller without devices. reset() is called (outside any lock) to reboot."""

    def __init__(self, reset: Callable[[], None] | None = None):
        self._reset_cb = reset
        self._lock = threading.Lock()
        self._out: deque[int] = deque()
        self._last_out = 0
        self._config = DEFAULT_CONFIG
        self._output_port = OUTPUT_PORT_RESET_N | OUTPUT_PORT_A20
        self._expect: int | None = None     # command waiting for its data byte
        self._a2 = True
        self.resets = 0                     # reset requests seen
        self.data_port = _PortAdapter(self, self.read_data, self.write_data)
        self.control_port = _PortAdapter(self, self.read_status, self.write_command)

    def register(self, bus) -> None:
        bus.register(DATA_PORT, 1, self.data_port, "i8042-data")
        bus.register(CONTROL_PORT, 1, self.control_port, "i8042-control")

    # -- port 0x64 ------------------------------------------------------------

    def read_status(self) -> int:
        with self._lock:
            status = STATUS_SYS | STATUS_UNLOCKED
            if self._a2:
                status |= STATUS_A2
            if self._out:
                status |= STATUS_OBF
            return status

    def write_command(self, cmd: int) -> None:
        reset = False
        with self._lock:
            self._a2 = True
            self._expect = None
            if cmd == CMD_READ_CONFIG:
                self._reply(self._config)
            elif cmd in (CMD_WRITE_CONFIG, CMD_WRITE_OUTPUT_PORT):
                self._expect = cmd
            elif cmd == CMD_SELF_TEST:
                self._config |= CONFIG_SYS
                self._reply(SELF_TEST_OK)
            elif cmd in (CMD_TEST_KBD, CMD_TEST_AUX):
                self._reply(PORT_TEST_OK)
            elif cmd == CMD_DISABLE_KBD:
                self._config |= CONFIG_KBD_DISABLED
            elif cmd == CMD_ENABLE_KBD:
                self._config &= ~CONFIG_KBD_DISABLED
            elif cmd == CMD_DISABLE_AUX:
                self._config |= CONFIG_AUX_DISABLED
            elif cmd == CMD_ENABLE_AUX:
                self._config &= ~CONFIG_AUX_DISABLED
            elif cmd == CMD_READ_OUTPUT_PORT:
                self._reply(self._output_port)
            elif cmd == CMD_A20_ON:
                self._output_port |= OUTPUT_PORT_A20
            elif cmd == CMD_A20_OFF:
                self._output_port &= ~OUTPUT_PORT_A20
            elif cmd & 0xF0 == 0xF0:
                reset = not cmd & OUTPUT_PORT_RESET_N
            # Anything else (keyboard-device commands, vendor extensions): ignored.
        if reset:
            self._request_reset()

    # -- port 0x60 ------------------------------------------------------------

    def read_data(self) -> int:
        """Pops a queued reply; with none queued, repeats the last byte like the latch does."""
        with self._lock:
            if self._out:
                self._last_out = self._out.popleft()
            return self._last_out

    def write_data(self, value: int) -> None:
        reset = False
        with self._lock:
            self._a2 = False
            expect, self._expect = self._expect, None
            if expect == CMD_WRITE_CONFIG:
                self._config = value
            elif expect == CMD_WRITE_OUTPUT_PORT:
                self._output_port = value
                reset = not value & OUTPUT_PORT_RESET_N
            # Otherwise the byte is for the keyboard, and there is none: no reply.
        if reset:
            self._request_reset()

    # -- snapshots (akvm.devices.state) ----------------------------------------------

    def snapshot(self) -> dict:
        with self._lock:
            return {"out": list(self._out), "last_out": self._last_out, "config": self._config,
                    "output_port": self._output_port, "expect": self._expect, "a2": self._a2,
                    "resets": self.resets}

    def restore(self, state: dict) -> None:
        with self._lock:
            self._out = deque(int(b) & 0xFF for b in state["out"][:16])
            self._last_out = int(state["last_out"]) & 0xFF
            self._config = int(state["config"]) & 0xFF
            self._output_port = int(state["output_port"]) & 0xFF
            self._expect = None if state["expect"] is None else int(state["expect"])
            self._a2 = bool(state["a2"])
            self.resets = int(state["resets"])

    # -- helpers ----------------------------------------------------------------

    def _reply(self, byte: int) -> None:
        if len(self._out) < 16:         # a guest that never reads cannot grow it
            self._out.append(byte & 0xFF)

    def _request_reset(self) -> None:
        self.resets += 1
        if self._reset_cb is not None:
            self._reset_cb()

    @property
    def config(self) -> int:
        """The controller configuration byte (command byte)."""
        return self._config


class ResetControl:
    """Port 0xCF9, the chipset reset control register: setting bit 2 (RST_CPU) resets.

    Bit 1 (SYS_RST) and bit 3 (FULL_RST) pick the kind of reset on real
    hardware; here every reset is the same, so they are only stored.
    """

    RST_CPU = 0x04

    def __init__(self, reset: Callable[[], None] | None = None):
        self._reset_cb = reset
        self.value = 0
        self.resets = 0

    def read(self, offset: int, size: int) -> int:
        return self.value

    def snapshot(self) -> dict:
        return {"value": self.value, "resets": self.resets}

    def restore(self, state: dict) -> None:
        self.value, self.resets = int(state["value"]) & 0xFF, int(state["resets"])

    def write(self, offset: int, size: int, value: int) -> None:
        self.value = value & 0xFF
        if self.value & self.RST_CPU:
            self.resets += 1
            if self._reset_cb is not None:
                self._reset_cb()

    def register(self, bus) -> None:
        bus.register(RESET_CONTROL_PORT, 1, self, "reset-control")
