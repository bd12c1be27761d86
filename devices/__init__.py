"""Emulated devices. Each is a bus device: read(offset, size) -> int and
write(offset, size, value), offsets relative to where it is registered.
Interrupts go out through the IrqLine a device is given (akvm.base.irq).
Among the modules:

  uart       16550A serial port (COM1 at 0x3F8, IRQ 4)
  chardev    console backends for the UART: stdio, file, unix socket, none
  i8042      PS/2 controller stub (0x60/0x64) and reset register (0xCF9)
  debugport  POST-code port 0x80
"""
