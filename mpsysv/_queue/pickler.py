"""How an object becomes a queue message's payload: pickles with multiprocessing's
reducers, large ``bytes`` as pieces a parcel copies once, and objects with large
out-of-band buffers (protocol 5 ``PickleBuffer``s: NumPy arrays and the like) as an
in-band pickle plus those buffers, which a parcel copies once each."""

from __future__ import annotations

import io
import pickle
from multiprocessing.reduction import ForkingPickler
from typing import List, Optional, Tuple

__all__ = ["Pickler", "Pieces", "OutOfBand", "PLAIN", "SCALARS"]

PLAIN = frozenset((str, bytes))
SCALARS = frozenset((int, float, bool, type(None)))  # see Pickler
_dumps = pickle.dumps


class Pickler:
    """Pickles with multiprocessing's reducers; plain objects take ``pickle.dumps``
    (scalars with protocol 3, whose pickles have no 9-byte FRAME opcode, so 2.5x more of
    them fit the queue)."""

    __slots__ = ("_pool", "_oob_min", "_oob", "_taken")

    def __init__(self, oob_min: int = 0) -> None:
        self._pool: List[Tuple[io.BytesIO, ForkingPickler]] = []
        self._oob_min = oob_min  # 0: every buffer in-band
        self._oob = False  # the running dumps() keeps large buffers out of band
        # while dumps(oob=True) runs: the buffers it keeps out of band
        self._taken: Optional[List[memoryview]] = None

    def _buffer(self, buffer: pickle.PickleBuffer) -> bool:
        """The pickler's buffer_callback: False keeps *buffer* out of band."""
        if not self._oob:
            return True
        try:
            raw = buffer.raw()  # BufferError: not contiguous, so it goes in-band
        except BufferError:
            return True
        if raw.nbytes < self._oob_min:
            raw.release()
            return True
        if self._taken is None:
            self._taken = []
        self._taken.append(raw)
        return False

    def dumps(self, obj, oob: bool = False):
        """The pickle of *obj* (bytes); with *oob*, an ``OutOfBand`` when *obj* offers
        contiguous out-of-band buffers of at least ``oob_min`` bytes each."""
        kind = type(obj)
        if kind in SCALARS:
            return _dumps(obj, 3)
        if kind in PLAIN:
            return _dumps(obj, 5)
        try:
            f, p = self._pool.pop()
        except IndexError:
            f = io.BytesIO()
            p = ForkingPickler(f, 5)
            # ForkingPickler passes no keywords on: set its reducers again after giving
            # the pickler its buffer_callback.
            table = p.dispatch_table
            pickle.Pickler.__init__(p, f, 5, buffer_callback=self._buffer)
            p.dispatch_table = table
        self._oob = oob and self._oob_min > 0
        try:
            p.dump(obj)
            if self._taken is not None:
                return OutOfBand(f.getvalue(), self._taken, obj)
            return f.getvalue()
        finally:
            self._taken = None
            p.clear_memo()
            f.seek(0)
            f.truncate()
            self._pool.append((f, p))


class Pieces:
    """The pickle of a large ``bytes`` object as pieces (opcodes, the object itself,
    STOP): a parcel copies the object once, straight into its segment, instead of
    first into a pickle of its own (a copy and a fresh allocation fewer)."""

    __slots__ = ("parts", "nbytes")

    def __init__(self, data: bytes):
        # PROTO 5, BINBYTES8 <length u64> <data>, STOP: what pickle.loads reads back.
        self.parts = (b"\x80\x05\x8e" + len(data).to_bytes(8, "little"), data, b".")
        self.nbytes = len(data) + 12

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


class OutOfBand:
    """A pickle whose large buffers stayed out of band: the in-band part, the buffers
    (contiguous byte views of the object's own memory) and the object, for the in-band
    pickle a stream needs when no parcel can be had. Its ``len()`` counts the buffers."""

    __slots__ = ("pickle", "buffers", "obj", "nbytes")

    def __init__(self, data: bytes, buffers: list, obj):
        self.pickle = data
        self.buffers = buffers
        self.obj = obj
        self.nbytes = len(data) + sum(b.nbytes for b in buffers)

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        """The whole pickle in-band (a stream carries it)."""
        self.release()
        f = io.BytesIO()
        ForkingPickler(f, 5).dump(self.obj)
        return f.getvalue()

    def release(self) -> None:
        for b in self.buffers:
            b.release()
        self.buffers = []
