"""virtio 1.2 devices: split virtqueues, two transports, four device types.

  dma       the DMA interface devices reach guest memory through: the IOMMU's
            DmaSpace (read/write, DmaError); DirectDma without an IOMMU
  queue     split virtqueues: descriptor walking (direct and indirect),
            used ring, notification suppression (VIRTIO_F_EVENT_IDX), RingError
  worker    a device's own thread: eventfds (queue kicks, KVM ioeventfds), backend fds
  device    VirtioDevice: features, status, reset, configuration space,
            Request (one chain being served), DEVICE_NEEDS_RESET
  pci       virtio-pci modern transport (capabilities, MSI-X, ISR, ioeventfd)
  mmio      virtio-mmio version 2 transport (and the Linux command-line string)
  blk, image       virtio-blk on a raw image file
  net, netback     virtio-net with TAP, UNIX-socket and loopback backends
  console   virtio-console, port 0 on a chardev
  rng       virtio-rng from getrandom(2)

A device model never sees KVM: the machine hands a transport its interrupt
(PCI function or IRQ line), an optional ioeventfd(fd, addr, length,
datamatch=None, deassign=False) callable and, on PCI, an optional irqfd
factory (PciDevice.use_irqfds) for the MSI-X vectors.
"""
from akvm.devices.virtio.blk import VirtioBlk
from akvm.devices.virtio.console import VirtioConsole
from akvm.devices.virtio.device import VirtioDevice
from akvm.base.dma import DirectDma, DmaError
from akvm.devices.virtio.image import ImageError, RawImage
from akvm.devices.virtio.mmio import VirtioMmio, cmdline_string
from akvm.devices.virtio.net import VirtioNet
from akvm.devices.virtio.netback import (LoopbackBackend, NetBackendError, SocketBackend,
                                    TapBackend)
from akvm.devices.virtio.pci import VirtioPci
from akvm.devices.virtio.queue import Chain, RingError, Virtqueue
from akvm.devices.virtio.rng import VirtioRng

__all__ = ["Chain", "DirectDma", "DmaError", "ImageError", "LoopbackBackend",
           "NetBackendError", "RawImage", "RingError", "SocketBackend", "TapBackend",
           "VirtioBlk", "VirtioConsole", "VirtioDevice", "VirtioMmio", "VirtioNet", "VirtioPci",
           "VirtioRng", "Virtqueue", "cmdline_string"]
