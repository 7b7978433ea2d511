"""Layer 3: garbage collection of what killed programs left, queues and segments alike.
Imports ``_ipc``, ``_queue`` and ``_shm``; the API layer calls its policy."""
