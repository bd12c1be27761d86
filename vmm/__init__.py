"""akvm: a virtual machine monitor that drives /dev/kvm and boots Akaros kernels."""

__version__ = "0.1.0"
