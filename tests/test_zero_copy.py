"""Objects with large out-of-band buffers (pickle protocol 5): one parcel segment holds
the pickle and each buffer, and the receiver's objects are views of that segment, which
goes back to the queue's pool once the receiver's last view of it is gone."""

import ctypes
import gc
import mmap
import multiprocessing as mp
import os
import pickle
import signal
import time

import pytest

import mpsysv
from mpsysv._queue import parcels as _parcels
from mpsysv._queue.layout import LENT, POOLED
from tests.helpers import wait_until

np = pytest.importorskip("numpy")
ctx = mp.get_context("fork")
BIG = 5 << 16  # elements: at least ZERO_COPY_MIN bytes for every dtype below


def segments_made_by(pid: int) -> int:
    """How many SysV segments process *pid* created that still exist."""
    with open("/proc/sysvipc/shm") as f:
        next(f)
        return sum(1 for line in f if int(line.split()[4]) == pid)


def slots(q, state, pid=None):
    """The segment ids of *q*'s parcel slots in *state* (lent to *pid*, if given)."""
    table = q._chan.parcels
    return [e[0] for e in (table._entry(i) for i in range(_parcels.NSLOTS))
            if e[2] == state and (pid is None or e[3] == pid)]


def round_trip(q, n=1):
    """Put and get *n* arrays in this process (its next calls on the parcel table)."""
    for _ in range(n):
        q.put(np.ones(BIG))
        assert q.get(timeout=10).sum() == BIG


@pytest.fixture
def queue():
    q = mpsysv.Queue()
    yield q
    q.close()
    q.unlink()


def backed_by_segment(arr) -> bool:
    """True when *arr*'s memory is a view of a parcel segment (not bytes of a pickle,
    nor a private copy): of its mapping's owner, or of a lent segment's owner of views."""
    while isinstance(arr, np.ndarray) and arr.base is not None:
        arr = arr.base
    return isinstance(arr, memoryview) and isinstance(arr.obj, (mmap.mmap, ctypes.Array))


@pytest.mark.parametrize("dtype", ["float64", "float32", "int8", "uint16", "int64",
                                   "complex128", "bool", "<U4", "S3"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_arrays_of_every_dtype_and_order_arrive_equal_as_views_of_the_segment(
        queue, dtype, order):
    src = np.arange(BIG).reshape(256, -1).astype(dtype, order=order)
    queue.put(src)
    got = queue.get(timeout=10)
    assert got.dtype == src.dtype and got.shape == src.shape
    assert np.array_equal(got, src)
    assert got.flags.f_contiguous if order == "F" else got.flags.c_contiguous
    assert got.flags.writeable
    assert backed_by_segment(got)


@pytest.mark.parametrize("dtype", ["datetime64[ns]", "object"])
def test_arrays_numpy_pickles_in_band_arrive_equal_with_their_own_memory(queue, dtype):
    src = np.arange(BIG).astype(dtype)
    queue.put(src)
    got = queue.get(timeout=10)
    assert got.dtype == src.dtype and np.array_equal(got, src)
    assert not backed_by_segment(got)


def test_a_non_contiguous_array_falls_back_to_an_in_band_pickle(queue):
    base = np.arange(BIG, dtype=np.float64).reshape(256, -1)
    src = base[:, ::3]
    queue.put(src)
    got = queue.get(timeout=10)
    assert np.array_equal(got, src)
    assert not backed_by_segment(got)


def test_small_arrays_travel_in_band(queue):
    src = np.arange(100, dtype=np.int32)
    queue.put(src)
    got = queue.get(timeout=10)
    assert np.array_equal(got, src) and not backed_by_segment(got)


def test_a_pickle_buffer_of_a_bytearray_arrives_as_a_writable_view():
    before = segments_made_by(os.getpid())
    q = mpsysv.Queue()
    data = bytearray(os.urandom(400_000))
    q.put(pickle.PickleBuffer(data))
    got = q.get(timeout=10)
    assert type(got) is memoryview and not got.readonly
    assert got == data
    got[0] = (data[0] + 1) % 256
    assert got[0] != data[0]
    q.put(pickle.PickleBuffer(memoryview(bytes(data))))  # read-only source
    ro = q.get(timeout=10)
    assert ro.readonly and ro == data
    q.close()
    q.unlink()
    assert got[1:] == data[1:]  # the views outlive the queue
    del got, ro
    gc.collect()
    assert wait_until(lambda: segments_made_by(os.getpid()) == before, 5)


def test_large_bytearrays_and_bytes_still_arrive_whole(queue):
    for data in (bytearray(os.urandom(200_000)), os.urandom(200_000)):
        queue.put(data)
        got = queue.get(timeout=10)
        assert type(got) is type(data) and got == data


def test_a_receiver_mutating_its_array_changes_nobody_elses(queue):
    src = np.ones(BIG)
    queue.put(src)
    queue.put(src)
    first, second = queue.get(timeout=10), queue.get(timeout=10)
    first[:] = 7.0
    assert src.sum() == BIG and second.sum() == BIG and first.sum() == 7 * BIG


def _produce(q, n):
    q.put(np.full(BIG, n, dtype=np.float64))
    q.close()
    q.join_thread()


def test_a_received_array_outlives_the_producer_and_the_queue():
    q = mpsysv.Queue()
    p = ctx.Process(target=_produce, args=(q, 3))
    p.start()
    got = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    q.close()
    q.unlink()
    assert got.sum() == 3 * BIG
    got[:] = 1.0
    assert got.sum() == BIG
    assert segments_made_by(p.pid) == 1  # alive while the array is
    del got
    gc.collect()
    assert segments_made_by(p.pid) == 0


def test_zero_copy_false_gives_a_private_copy_and_the_segment_back_to_the_pool():
    before = segments_made_by(os.getpid())
    q = mpsysv.Queue(zero_copy=False)
    src = np.arange(BIG, dtype=np.float64)
    q.put(src)
    got = q.get(timeout=10)
    assert np.array_equal(got, src) and not backed_by_segment(got)
    q.put(src)
    again = q.get(timeout=10)
    # the control segment and one pooled parcel segment, reused
    assert segments_made_by(os.getpid()) == before + 2
    q.close()
    q.unlink()
    assert segments_made_by(os.getpid()) == before
    assert np.array_equal(got, src) and np.array_equal(again, src)


def _hold_arrays(q, ready):
    kept = [q.get(timeout=30) for _ in range(3)]
    ready.put(sum(float(a.sum()) for a in kept))
    signal.pause()


def test_a_receiver_killed_while_holding_arrays_loses_no_segment_and_no_slot(queue):
    ready = ctx.SimpleQueue()
    before = segments_made_by(os.getpid())
    p = ctx.Process(target=_hold_arrays, args=(queue, ready))
    p.start()
    for _ in range(3):
        queue.put(np.ones(BIG))
    assert ready.get() == 3 * BIG
    assert segments_made_by(os.getpid()) == before + 3
    assert len(slots(queue, LENT, p.pid)) == 3
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    time.sleep(_parcels.LENDERS_EVERY)
    round_trip(queue)  # the next put reclaims the dead receiver's slots
    assert slots(queue, LENT) == []
    # its three segments removed (it may have had fork children mapping them), one pooled
    assert wait_until(lambda: segments_made_by(os.getpid()) == before + 1, 10)
    assert len(slots(queue, POOLED)) == 1


def _sum_tasks(q, out, n):
    for _ in range(n):
        arr = q.get(timeout=30)
        out.put(float(arr.sum()))
        q.task_done()


def test_counted_queues_count_each_zero_copy_array_as_one_object():
    before = segments_made_by(os.getpid())
    q = mpsysv.JoinableQueue(2)
    out = ctx.SimpleQueue()
    p = ctx.Process(target=_sum_tasks, args=(q, out, 6))
    p.start()
    for i in range(6):
        q.put(np.full(BIG, i, dtype=np.float64), timeout=30)
    q.join()
    p.join(30)
    assert p.exitcode == 0
    assert sorted(out.get() for _ in range(6)) == [i * BIG for i in range(6)]
    assert q.qsize() == 0 and q.empty()
    q.close()
    q.unlink()
    assert wait_until(lambda: segments_made_by(os.getpid()) == before, 5)


def test_segments_go_back_to_the_pool_once_the_received_arrays_are_gone():
    before = segments_made_by(os.getpid())
    q = mpsysv.Queue()
    for _ in range(5):
        q.put({"a": np.zeros(BIG), "b": [np.ones(BIG // 2, dtype=np.int16)]})
    got = [q.get(timeout=10) for _ in range(5)]
    assert all(backed_by_segment(g["a"]) for g in got)
    lent = slots(q, LENT, os.getpid())
    assert len(lent) == 5
    del got
    gc.collect()
    round_trip(q)  # (given back at this process's next call on the table)
    assert slots(q, LENT) == [] and set(lent) <= set(slots(q, POOLED))
    assert segments_made_by(os.getpid()) == before + 6  # the control segment and the pool
    q.close()
    q.unlink()
    assert segments_made_by(os.getpid()) == before


def test_a_lent_segment_is_reused_only_after_its_last_view_is_gone(queue):
    queue.put(np.full(BIG, 1.0))
    first = queue.get(timeout=10)
    (segid,) = slots(queue, LENT)
    view = first[10:20]
    del first
    gc.collect()
    for i in range(3):  # none of these may land in the segment the slice still sees
        queue.put(np.full(BIG, 2.0 + i))
        assert queue.get(timeout=10).sum() == (2.0 + i) * BIG
    assert (view == 1.0).all() and slots(queue, LENT) == [segid]
    del view
    gc.collect()
    round_trip(queue)
    assert segid in slots(queue, POOLED)
    queue.put(np.full(BIG, 9.0))
    again = queue.get(timeout=10)
    assert slots(queue, LENT) == [segid] and again.sum() == 9.0 * BIG  # warm, reused


def _check_inherited(arr, out):
    time.sleep(0.5)  # the parent meanwhile drops its views and sends more arrays
    out.put(float(arr.sum()))


def test_a_segment_a_fork_child_still_maps_is_never_reused(queue):
    before = segments_made_by(os.getpid())
    queue.put(np.full(BIG, 3.0))
    arr = queue.get(timeout=10)
    (segid,) = slots(queue, LENT)
    out = ctx.SimpleQueue()
    p = ctx.Process(target=_check_inherited, args=(arr, out))
    p.start()
    del arr
    gc.collect()
    round_trip(queue, 3)  # given back: removed, not pooled (the child maps it)
    assert segid not in slots(queue, POOLED) + slots(queue, LENT)
    assert out.get() == 3.0 * BIG  # its memory untouched by the later arrays
    p.join(30)
    assert p.exitcode == 0
    assert wait_until(lambda: segments_made_by(os.getpid()) == before + 1, 10)


def test_a_queue_removed_while_an_array_is_held_frees_its_segment_at_the_last_view():
    before = segments_made_by(os.getpid())
    q = mpsysv.Queue()
    q.put(np.full(BIG, 4.0))
    arr = q.get(timeout=10)
    q.put(np.ones(BIG))
    q.get(timeout=10)  # (a pooled segment too)
    q.close()
    q.unlink()
    assert segments_made_by(os.getpid()) == before + 1  # the held one alone, removed
    arr[:] = 5.0
    assert arr.sum() == 5.0 * BIG
    del arr
    gc.collect()
    assert segments_made_by(os.getpid()) == before


def test_a_closed_handle_frees_a_held_segment_at_the_last_view():
    before = segments_made_by(os.getpid())
    q = mpsysv.Queue()
    other = pickle.loads(pickle.dumps(q))  # keeps the queue alive
    q.put(np.full(BIG, 4.0))
    arr = other.get(timeout=10)
    other.close()
    assert arr.sum() == 4.0 * BIG
    del arr
    gc.collect()
    assert slots(q, LENT) == []
    q.close()
    q.unlink()
    assert segments_made_by(os.getpid()) == before


def test_a_receiver_keeping_many_arrays_leaves_slots_for_others(queue):
    kept = []
    for i in range(2 * _parcels.LEND_MAX):
        queue.put(np.full(BIG, float(i)))
        kept.append(queue.get(timeout=10))
    assert len(slots(queue, LENT)) == _parcels.LEND_MAX
    assert all(backed_by_segment(a) for a in kept)
    assert [a[0] for a in kept] == [float(i) for i in range(2 * _parcels.LEND_MAX)]
    del kept
    gc.collect()
    round_trip(queue)
    assert slots(queue, LENT) == []


def test_arrays_in_garbage_cycles_come_back_to_the_pool(queue):
    for _ in range(3):
        queue.put(np.ones(BIG))
        cycle = [queue.get(timeout=10)]
        cycle.append(cycle)
        del cycle
    gc.collect()
    round_trip(queue)
    assert slots(queue, LENT) == []


def test_arrays_below_the_zero_copy_size_arrive_as_private_copies(queue):
    src = np.ones(_parcels.ZERO_COPY_MIN // 8 // 2)
    queue.put(src)
    got = queue.get(timeout=10)
    assert np.array_equal(got, src) and not backed_by_segment(got)


def test_put_many_sends_large_arrays_out_of_band(queue):
    arrays = [np.full(BIG, float(i)) for i in range(3)]
    queue.put_many(arrays + [7])
    got = [queue.get(timeout=10) for _ in range(4)]
    assert got[3] == 7
    assert [float(a[0]) for a in got[:3]] == [0.0, 1.0, 2.0]
    assert all(backed_by_segment(a) for a in got[:3])


def test_a_pickled_handle_keeps_its_zero_copy_choice():
    q = mpsysv.Queue(zero_copy=False)
    twin = pickle.loads(pickle.dumps(q))
    q.put(np.ones(BIG))
    got = twin.get(timeout=10)
    assert got.sum() == BIG and not backed_by_segment(got)
    twin.close()
    q.close()
    q.unlink()


def test_mpsysv_ls_shows_a_held_zero_copy_segment_as_live(queue):
    import subprocess
    import sys

    queue.put(np.ones(BIG))
    got = queue.get(timeout=10)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "mpsysv", "ls"], cwd=root,
                         capture_output=True, text=True, timeout=60).stdout
    rows = [line.split() for line in out.splitlines()
            if "queue.parcel" in line and str(os.getpid()) in line.split()]
    assert rows and all(r[-1] == "live" for r in rows), out
    assert got.sum() == BIG


def test_a_parcel_sent_while_the_queue_is_copied_is_never_taken_for_stranded(queue):
    # A feeder thread may send a parcel's message while another putter copies the queued
    # messages to look for stranded parcels: the copy misses it and, by the time the
    # journal is read, its writer has noted it sent. Before anybody ever took a message.
    chan, table = queue._chan, queue._chan.parcels
    queue.put(1)  # something queued: the next claim copies the queue
    payload = queue._pickler.dumps(np.full(BIG, 5.0), True)
    message = table.wrap(payload)  # complete, its message still "in the buffer"
    real = chan.queued_parcels

    def copies_then_the_feeder_sends():
        found = real()
        assert chan.try_send(message, 1)
        table.handed(message)
        return found

    chan.queued_parcels = copies_then_the_feeder_sends
    try:
        queue.put(np.ones(BIG))  # its claim looks for stranded parcels
    finally:
        del chan.queued_parcels
    assert queue.get(timeout=10) == 1
    assert queue.get(timeout=10).sum() == 5.0 * BIG
    assert queue.get(timeout=10).sum() == BIG


def _backed_and_sum(arr):
    return backed_by_segment(arr), float(arr.sum())


def _doubled(arr):
    return arr * 2


def test_pool_tasks_and_results_carry_arrays_as_views_of_segments():
    with mpsysv.get_context("fork").Pool(1) as pool:
        tasks = [np.full(BIG, float(i)) for i in range(3)]
        assert pool.map(_backed_and_sum, tasks) == [(True, i * BIG) for i in range(3)]
        results = pool.map(_doubled, tasks)
        assert all(backed_by_segment(r) for r in results)
        assert [float(r[0]) for r in results] == [0.0, 2.0, 4.0]
        del results
