"""Layer 2: the shared-memory internals: segment identity (the trailer) and the tracker
that removes what a program forgot. Imports only ``_ipc``."""
