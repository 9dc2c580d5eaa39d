"""Adapters of the kernel's ports and the cross-cutting machinery."""
