"""Layer 1, the bottom: ctypes bindings to libc (the only code that touches it), the one
errno -> exception mapping, futex counters, the /proc readers, names and keys, and one
small object per System V primitive. Imports nothing from mpsysv above it."""
