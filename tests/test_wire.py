"""The frame format without a kernel: any split reassembles, foreign frames are refused."""

import pickle
import random

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsysv._queue import wire as W


def frames_of(payload, sid, msgmax):
    head, rest = W.split(payload, sid, msgmax)
    return head, list(rest)


def reassemble(head, frames):
    r = W.Reassembly(head)
    for f in frames:
        r.add(f)
    return r.payload()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=1, max_size=5000), msgmax=st.integers(40, 600))
def test_any_split_reassembles_exactly(data, msgmax):
    payload = b"\x80" + data
    if len(payload) <= msgmax:
        assert W.frame_count(len(payload), msgmax) == 1
        return
    head, frames = frames_of(payload, W.stream_id_for(1234, 7), msgmax)
    assert len(head) <= msgmax and all(len(f) <= msgmax for f in frames)
    assert 1 + len(frames) == W.frame_count(len(payload), msgmax)
    assert reassemble(head, frames) == payload


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(200, 3000), min_size=2, max_size=6), seed=st.integers(0, 2**32))
def test_interleaved_streams_never_mix(sizes, seed):
    """Frames of several objects, interleaved at random, go to the right reassembly
    because each object has its own stream id (the continuation mtype)."""
    rng = random.Random(seed)
    payloads = [bytes(rng.getrandbits(8) for _ in range(n)) for n in sizes]
    streams = {}
    for i, p in enumerate(payloads):
        sid = W.stream_id_for(1000 + i, i)
        head, frames = frames_of(p, sid, 128)
        streams[sid] = [W.Reassembly(head), frames]
    order = [sid for sid, (_, frames) in streams.items() for _ in frames]
    rng.shuffle(order)
    for sid in order:
        r, frames = streams[sid]
        r.add(frames.pop(0))
    assert [streams[W.stream_id_for(1000 + i, i)][0].payload() for i in range(len(sizes))] \
        == payloads


def test_frame_of_another_stream_is_refused():
    a = frames_of(b"a" * 1000, W.stream_id_for(1, 1), 100)
    b = frames_of(b"b" * 1000, W.stream_id_for(2, 1), 100)
    r = W.Reassembly(a[0])
    with pytest.raises(W.WireError, match="expected"):
        r.add(b[1][0])


def test_out_of_order_and_duplicate_frames_are_refused():
    head, frames = frames_of(b"x" * 1000, W.stream_id_for(3, 3), 100)
    r = W.Reassembly(head)
    with pytest.raises(W.WireError):
        r.add(frames[1])
    r.add(frames[0])
    with pytest.raises(W.WireError):
        r.add(frames[0])


def test_truncated_frames_are_refused():
    head, frames = frames_of(b"x" * 1000, W.stream_id_for(3, 3), 100)
    with pytest.raises(W.WireError):
        W.Reassembly(head[:10])
    r = W.Reassembly(head)
    for f in frames[:-1]:
        r.add(f)
    with pytest.raises(W.WireError):
        r.add(frames[-1][:-1])  # last frame short: total does not match
    assert not r.complete


def test_a_message_that_is_no_continuation_frame_is_refused_mid_stream():
    """(The bytes of the former abort frame, which no writer sent: now foreign.)"""
    sid = W.stream_id_for(9, 9)
    head, _ = frames_of(b"x" * 1000, sid, 100)
    r = W.Reassembly(head)
    with pytest.raises(W.WireError, match="not a continuation frame"):
        r.add(struct.pack("<BQ", ord("A"), sid))


def test_a_nudge_is_typed_above_every_user_type_and_below_no_stream():
    from mpsysv._queue.layout import MTYPE_MAX
    assert W.NUDGE_MTYPE > MTYPE_MAX
    assert W.NUDGE not in (W.PICKLE_MARK, W.HEAD, W.FRAME, W.PARCEL, W.BATCH)


def test_bogus_head_cannot_make_the_reader_allocate():
    """A head that claims an enormous length is accepted only as a claim: memory grows
    with the frames that really arrive, and a frame beyond the claim is refused."""
    sid = W.stream_id_for(5, 5)
    head = W._HEAD.pack(W.HEAD, sid, 2 ** 60, 3) + b"x"
    r = W.Reassembly(head)
    assert r.total == 2 ** 60 and r._size == 1
    with pytest.raises(W.WireError):
        W.Reassembly(W._HEAD.pack(W.HEAD, sid, 1, 3) + b"xx")  # first chunk beyond total


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=200))
def test_foreign_bytes_never_crash_the_decoder(junk):
    sid = W.stream_id_for(7, 7)
    try:
        r = W.Reassembly(junk)
    except W.WireError:
        pass
    else:
        assert r.stream_id & (1 << 62)
    head, _ = frames_of(b"y" * 500, sid, 100)
    r = W.Reassembly(head)
    try:
        r.add(junk)
    except W.WireError:
        pass


def test_single_message_objects_are_bare_pickles():
    assert W.is_single(pickle.dumps(1, 5))
    assert not W.is_single(b"H" + b"\0" * 30)
    assert W.writer_pid(W.stream_id_for(4194303, 2 ** 32 - 1)) == 4194303


def test_out_of_band_layout_puts_each_buffer_on_a_page_boundary_after_the_pickle():
    layout, pickle_off, offsets, end = W.layout_out_of_band(64, 100, [5000, 3, 0])
    assert pickle_off == 64 + len(layout)
    assert offsets == [4096, 12288, 16384]
    assert end == 16384
    seg = bytearray(end)
    seg[64:64 + len(layout)] = layout
    assert W.parse_out_of_band(memoryview(seg), 64, end) == (
        (pickle_off, 100), [(4096, 5000), (12288, 3), (16384, 0)])


def test_out_of_band_layout_is_refused_when_a_piece_lies_outside_the_body():
    layout, _, _, end = W.layout_out_of_band(64, 100, [5000])
    seg = bytearray(end)
    seg[64:64 + len(layout)] = layout
    with pytest.raises(W.WireError):
        W.parse_out_of_band(memoryview(seg), 64, end - 1)
    with pytest.raises(W.WireError):
        W.parse_out_of_band(memoryview(seg), 64, end + 1)  # past the segment
    bad = bytearray(seg)
    bad[64] = ord("P")
    with pytest.raises(W.WireError):
        W.parse_out_of_band(memoryview(bad), 64, end)


@given(st.lists(st.integers(0, 3 << 20), max_size=6), st.integers(2, 1 << 16))
@settings(max_examples=100, deadline=None)
def test_out_of_band_layout_round_trips_and_never_overlaps(lengths, pickle_len):
    layout, pickle_off, offsets, end = W.layout_out_of_band(64, pickle_len, lengths)
    seg = bytearray(pickle_off)
    seg[64:64 + len(layout)] = layout
    view = memoryview(seg + bytes(end - len(seg)))
    (p_off, p_len), pieces = W.parse_out_of_band(view, 64, end)
    assert (p_off, p_len) == (pickle_off, pickle_len)
    assert [n for _, n in pieces] == lengths
    assert all(off % 4096 == 0 for off, _ in pieces)
