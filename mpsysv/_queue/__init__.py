"""Layer 2: the queue protocol. The control segment's layout, the wire format (pure
functions), the journal, the kernel objects of one queue, its counts, streams and
parcels, the message channel, pickling and the feeder. Imports only ``_ipc``."""
