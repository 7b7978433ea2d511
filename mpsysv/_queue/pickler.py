"""How an object becomes a queue message's payload: pickles with multiprocessing's
reducers, and large ``bytes`` as pieces a parcel copies once."""

from __future__ import annotations

import io
import pickle
from multiprocessing.reduction import ForkingPickler

__all__ = ["Pickler", "Pieces", "PLAIN", "SCALARS"]

PLAIN = frozenset((str, bytes))
SCALARS = frozenset((int, float, bool, type(None)))  # see Pickler
_dumps = pickle.dumps


class Pickler:
    """Pickles with multiprocessing's reducers; plain objects take ``pickle.dumps``
    (scalars with protocol 3, whose pickles have no 9-byte FRAME opcode, so 2.5x more of
    them fit the queue)."""

    __slots__ = ("_pool",)

    def __init__(self):
        self._pool = []

    def dumps(self, obj) -> bytes:
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
        try:
            p.dump(obj)
            return f.getvalue()
        finally:
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
