"""``multiprocessing.shared_memory``'s names on System V segments, for code written as
``from multiprocessing.shared_memory import SharedMemory, ShareableList``: the same two
names, mpsysv's classes (``mpsysv/shared.py`` holds them and says how they differ)."""

from .shared import ShareableList, SharedMemory

__all__ = ["SharedMemory", "ShareableList"]
