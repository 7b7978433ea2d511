"""The package imports and a raw queue round-trips (the rest lives in its own files)."""

import mpsysv


def test_raw_queue_round_trip():
    q = mpsysv.MessageQueue(create=True)
    try:
        q.send(b"x", 7)
        assert q.receive() == (b"x", 7)
    finally:
        q.remove()
