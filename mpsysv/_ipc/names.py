"""Names → System V keys: the deterministic mapping behind named queues and segments.

A name is a short string (like a POSIX shm name, an optional leading '/' is dropped);
its key is a hash of the kind and the name, so every process finds the same object.
Pure functions, but for the pool of random bits behind random_name.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["MAX_NAME_LENGTH", "SUB_KEY_TAG", "check_name", "name_key", "sub_key", "parse_sub_key",
           "random_name"]

MAX_NAME_LENGTH = 200
SUB_KEY_TAG = 0x4D
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:@+=")


def check_name(name) -> str:
    """Return *name* without a leading '/', or raise ``TypeError``/``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"'name' must be a str, not {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if not bare:
        raise ValueError("'name' must not be empty")
    if len(bare) > MAX_NAME_LENGTH:
        raise ValueError(f"'name' is {len(bare)} characters long; at most {MAX_NAME_LENGTH} "
                         "are allowed")
    bad = sorted(set(bare) - _ALLOWED)
    if bad:
        raise ValueError(f"'name' {name!r} contains {''.join(bad)!r}: use letters, digits and "
                         "_-.:@+=")
    return bare


# kind -> a 4-byte BLAKE2b fed with "mpsysv\0KIND\0": copying it costs a third of
# setting up a new one, and hashes the same bytes.
_prefixed: dict = {}


def name_key(kind: str, name: str, index: int = 0) -> int:
    """The 32-bit key of object *index* of the *kind* ("queue", "shm", ...) named *name*:
    from the 4-byte BLAKE2b of ``"mpsysv\0KIND\0NAME\0INDEX"``.

    Never 0 (IPC_PRIVATE) and always positive, so it reads the same in every tool.
    """
    prefixed = _prefixed.get(kind)
    if prefixed is None:
        prefixed = _prefixed[kind] = hashlib.blake2b(f"mpsysv\0{kind}\0".encode(),
                                                     digest_size=4)
    hasher = prefixed.copy()
    hasher.update(f"{name}\0{index}".encode())
    key = int.from_bytes(hasher.digest(), "little") & 0x7FFFFFFF
    if key >> 24 == SUB_KEY_TAG:
        key ^= 1 << 24
    return key or 1


def sub_key(owner_id: int, purpose: int) -> int:
    """The key of the object serving *purpose* (1..3) for the control segment *owner_id*.

    Tagged with ``SUB_KEY_TAG`` in the top byte, then the purpose, 7 bits of the
    owner id's sequence number and its 15-bit slot index: unique among live owners,
    and telling a cleaner whose object it is once the owner is gone.
    """
    if not 0 < purpose < 4:
        raise ValueError(f"'purpose' must be 1..3, not {purpose!r}")
    return ((SUB_KEY_TAG << 24) | (purpose << 22) | (((owner_id >> 15) & 0x7F) << 15)
            | (owner_id & 0x7FFF))


def parse_sub_key(key: int):
    """``(purpose, owner_slot, owner_seq7)`` of a key made by ``sub_key``, else None."""
    key &= 0xFFFFFFFF
    if key >> 24 != SUB_KEY_TAG:
        return None
    return (key >> 22) & 3, key & 0x7FFF, (key >> 15) & 0x7F


# 64 random bits per name, drawn from one getrandom() call per _POOL names: a system
# call costs more than the rest of a name. Emptied in fork children, which must never
# hand out their parent's names.
_POOL = 64
_pool: list = []
os.register_at_fork(after_in_child=_pool.clear)


def random_name(prefix: str = "mpsysv_") -> str:
    """A fresh name that is practically never in use (64 random bits)."""
    try:
        return prefix + _pool.pop()
    except IndexError:
        digits = os.urandom(8 * _POOL).hex()
        _pool.extend(digits[i:i + 16] for i in range(16, len(digits), 16))
        return prefix + digits[:16]
