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

The package imports none of its modules: a machine imports only what its
devices use (akvm.builders).
"""
