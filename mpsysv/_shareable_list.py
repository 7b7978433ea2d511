"""ShareableList: a fixed-length list of int, float, bool, str, bytes and None in one
SharedMemory, with the stdlib's API and a layout of mpsysv's own (see the class).

Public path: ``mpsysv.shared`` (pickles name it there).
"""

from __future__ import annotations

import functools
import operator
import struct
from typing import Generic, Iterable, Iterator, Optional, TypeVar

from ._shared_memory import SharedMemory
from ._shm.trailer import PURPOSE_SHAREABLE_LIST

__all__ = ["ShareableList"]

_INT, _FLOAT, _BOOL, _NONE, _STR, _BYTES = range(1, 7)
_CODES = {int: _INT, float: _FLOAT, bool: _BOOL, type(None): _NONE, str: _STR, bytes: _BYTES}
_FIXED_FORMATS = {_INT: "q", _FLOAT: "d", _BOOL: "xxxxxxx?", _NONE: "xxxxxx?x"}
_Q = struct.Struct("<q")
# What a ShareableList holds, for type checkers (as the stdlib's stubs spell it).
_SLT = TypeVar("_SLT", int, float, bool, str, bytes, None)
_D = struct.Struct("<d")
_ALIGN = 8


def _encode(value):
    """``(code, bytes or None)`` of a storable value; TypeError for other types."""
    code = _CODES.get(type(value))
    if code is None:
        raise TypeError(f"ShareableList stores int, float, bool, str, bytes and None, not "
                        f"{type(value).__name__}")
    if code == _STR:
        return code, value.encode("utf-8")
    return code, (value if code == _BYTES else None)


def _slot_size(item, blob) -> int:
    """Bytes of an item's slot: the stdlib's size (a multiple of 8 above the length in
    characters, so ``format`` reads the same), or above the UTF-8 length when the
    encoded str does not fit in that (the stdlib truncates it)."""
    if blob is None:
        return _ALIGN
    size = _ALIGN * (len(item) // _ALIGN + 1)
    return size if len(blob) <= size else _ALIGN * (len(blob) // _ALIGN + 1)


class ShareableList(Generic[_SLT]):
    """A fixed-length list of int, float, bool, str, bytes and None in a SharedMemory.

    The stdlib's API: ``ShareableList(sequence)`` creates (random name, or ``name=``),
    ``ShareableList(name=...)`` attaches; ``shm``, ``format``, ``count()``,
    ``index()``; a str/bytes slot keeps the size it was created with (``ValueError``
    when a longer value is stored). Unlike the stdlib, trailing NUL bytes survive and
    a str slot is made big enough for its UTF-8 encoding.

    Layout: item count (q), N+1 slot offsets (q), N type words (q: byte length << 8 |
    type code), then the slots, each a multiple of 8 bytes.
    """

    def __init__(self, sequence: Optional[Iterable] = None, *, name: Optional[str] = None,
                 track: bool = True) -> None:
        """Create a list holding the items of *sequence*, or attach the list called *name*."""
        if name is None or sequence is not None:
            items = [] if sequence is None else list(sequence)
            encoded = [_encode(item) for item in items]
            offsets = [0]
            for item, (_, blob) in zip(items, encoded):
                offsets.append(offsets[-1] + _slot_size(item, blob))
            n = len(items)
            self.shm = SharedMemory.__new__(SharedMemory)
            self.shm._create(name, 16 * n + 16 + offsets[-1], track, 0o600, False,
                             PURPOSE_SHAREABLE_LIST)
            try:
                self._layout(n, offsets)
                buf = self.shm.buf
                _Q.pack_into(buf, 0, n)
                struct.pack_into(f"<{n + 1}q", buf, 8, *offsets)
                for i, (item, (code, blob)) in enumerate(zip(items, encoded)):
                    self._store(buf, i, item, code, blob)
            except BaseException:  # e.g. struct.error for an int beyond 64 bits
                self.shm.close()
                self.shm.unlink()
                raise
        else:
            self.shm = SharedMemory(name)
            try:
                if self.shm._purpose != PURPOSE_SHAREABLE_LIST:
                    raise ValueError(f"shared memory {name!r} is not a ShareableList")
                n = _Q.unpack_from(self.shm.buf, 0)[0]
                if not 0 <= n <= self.shm.size // 16:
                    raise ValueError(f"shared memory {name!r} holds a damaged ShareableList")
                self._layout(n, list(struct.unpack_from(f"<{n + 1}q", self.shm.buf, 8)))
            except BaseException:
                self.shm.close()
                raise

    def __getitem__(self, position: int):
        i = self._position(position, "index out of range")
        buf = self.shm.buf
        word = _Q.unpack_from(buf, self._types + 8 * i)[0]
        code, offset = word & 0xFF, self._data + self._offsets[i]
        if code == _INT:
            return _Q.unpack_from(buf, offset)[0]
        if code == _FLOAT:
            return _D.unpack_from(buf, offset)[0]
        if code == _BOOL:
            return buf[offset] != 0
        if code == _NONE:
            return None
        raw = bytes(buf[offset:offset + (word >> 8)])
        return raw.decode("utf-8") if code == _STR else raw

    def __setitem__(self, position: int, value) -> None:
        i = self._position(position, "assignment index out of range")
        code, blob = _encode(value)
        if blob is not None and len(blob) > self._offsets[i + 1] - self._offsets[i]:
            raise ValueError("bytes/str item exceeds available storage")
        self._store(self.shm.buf, i, value, code, blob)

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator:
        for i in range(self._n):
            yield self[i]

    def __reduce__(self):
        return functools.partial(type(self), name=self.shm.name), ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The struct format of the items as stored now (as the stdlib reports it)."""
        return "".join(map(self._get_packing_format, range(self._n)))

    def _get_packing_format(self, position: int) -> str:
        """The struct format of one item as stored now, as the stdlib's helper of that
        name gives it (a str/bytes slot reads ``"<slot size>s"``)."""
        i = self._position(position, "Requested position out of range.")
        code = _Q.unpack_from(self.shm.buf, self._types + 8 * i)[0] & 0xFF
        return _FIXED_FORMATS.get(code) or f"{self._offsets[i + 1] - self._offsets[i]}s"

    def count(self, value) -> int:
        """Number of occurrences of *value*."""
        return sum(value == entry for entry in self)

    def index(self, value) -> int:
        """Position of the first occurrence of *value*; ValueError if absent."""
        for position, entry in enumerate(self):
            if value == entry:
                return position
        raise ValueError(f"{value!r} not in this container")

    def _layout(self, n: int, offsets: list) -> None:
        self._n, self._offsets = n, offsets
        self._types = 16 + 8 * n
        self._data = self._types + 8 * n
        if self._data + offsets[-1] > self.shm.size:
            raise ValueError(f"shared memory {self.shm.name!r} holds a damaged ShareableList")

    def _store(self, buf, i, value, code, blob) -> None:
        offset = self._data + self._offsets[i]
        if blob is not None:
            buf[offset:offset + len(blob)] = blob
            word = len(blob) << 8 | code
        else:
            if code == _INT:
                _Q.pack_into(buf, offset, value)
            elif code == _FLOAT:
                _D.pack_into(buf, offset, value)
            elif code == _BOOL:
                buf[offset] = value
            word = code
        _Q.pack_into(buf, self._types + 8 * i, word)

    def _position(self, position, message: str) -> int:
        if isinstance(position, slice):
            raise TypeError("ShareableList indices must be integers, not slice")
        i = operator.index(position)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(message)
        return i
