"""The shared kernel: pure Python values, errors and ports used by every service."""
