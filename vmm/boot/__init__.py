"""Kernel loaders: put a kernel image and its boot information into guest RAM."""
