"""The floor: KVM bindings, guest memory, buses, interrupt lines and routes, DMA spaces, the C run loop."""
