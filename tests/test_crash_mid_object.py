"""Producers and consumers SIGKILLed mid-object: nothing partial is ever delivered,
nobody stalls, streams and parcels are reclaimed."""

import os
import random
import select
import time

import pytest

import mpsysv
from mpsysv._queue import parcels as _parcels
from mpsysv import Queue

from . import seams

from .crash_toolkit import (
    BIG, WATCHDOG, Reports, fork_run, wait_pid, kill, payload, obj, intact,
    wait_for_feeder, consume_until, diagnose, kernel_state, parcel_states,
    assert_reclaimed, round_trip_in_child, close_queue, get_and_die_at)
from .crash_toolkit import close_leftover_queues, path  # noqa: F401 - fixtures


def _killed_producer(q, started_w: int) -> None:
    blobs = [payload(s, BIG) for s in (1, 2)]
    os.write(started_w, b"!")
    seq = 0
    while True:
        q.put(obj("A", seq, blobs[seq % 2]))
        wait_for_feeder(q)
        seq += 1


def _steady_producer(q, count: int) -> None:
    sizes = [10, 1 << 20, 100, 50_000, 7000]
    for seq in range(count):
        q.put(obj("B", seq, payload(seq, sizes[seq % len(sizes)])))
        wait_for_feeder(q, 4)
    q.put(obj("B", -1, b""))
    q.close()
    q.join_thread()


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.05, 0.2])
def test_producer_killed_mid_put_never_delivers_a_partial_object(path, delay):
    q = Queue()
    reports = Reports()
    r, w = os.pipe()
    consumer = fork_run(consume_until, q, reports, 1)
    victim = fork_run(_killed_producer, q, w)
    steady = fork_run(_steady_producer, q, 25)
    try:
        assert select.select([r], [], [], WATCHDOG)[0], "the producer never started"
        time.sleep(delay + random.uniform(0, 0.01))
        kill(victim)
        assert wait_pid(steady, WATCHDOG) == 0, f"the other producer blocked: {diagnose(q)}"
        assert wait_pid(consumer, WATCHDOG) == 0, f"the consumer blocked: {diagnose(q)}"
        # What the dead producer had fully sent is still in the queue: drain it.
        drainer = fork_run(_drain_all, q, reports)
        assert wait_pid(drainer, WATCHDOG) == 0, "draining blocked or failed"
        reports.close_writer()
        got = reports.drain(1.0)
    finally:
        for pid in (victim, steady, consumer):
            kill(pid)
        os.close(r)
        os.close(w)
    assert all(ok for _, _, ok in got), "a partial or corrupt object was delivered"
    b_seqs = [s for t, s, _ in got if t == "B"]
    assert b_seqs == list(range(25)) + [-1], "the other producer's objects were not all " \
                                             "delivered in order"
    a_seqs = [s for t, s, _ in got if t == "A"]
    assert a_seqs == list(range(len(a_seqs))), f"dead producer's objects out of order: {a_seqs}"
    round_trip_in_child(q)
    assert_reclaimed(q)
    assert kernel_state(q)["main"] == (0, 0)
    reports.close()
    close_queue(q)


def _drain_all(q, reports: Reports) -> None:
    while True:
        try:
            item = q.get(timeout=1.5)
        except mpsysv.Empty:
            return
        reports.send(item[0], item[1], intact(item))


def _big_producer(q, count: int, done_w: int) -> None:
    for seq in range(count):
        q.put(obj("P", seq, payload(seq, BIG if seq % 3 else 20_000)))
        wait_for_feeder(q, 2)
    q.put(obj("P", -1, b""))
    q.put(obj("P", -1, b""))
    q.close()
    q.join_thread()  # returns only when every frame was taken or dropped
    os.write(done_w, b"!")


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1, 0.3])
def test_consumer_killed_mid_get_stalls_nobody(path, delay):
    q = Queue()
    victim_reports, other_reports = Reports(), Reports()
    r, w = os.pipe()
    producer = fork_run(_big_producer, q, 12, w)
    victim = fork_run(consume_until, q, victim_reports, 1)
    time.sleep(delay + random.uniform(0, 0.01))
    kill(victim)
    other = fork_run(consume_until, q, other_reports, 1)
    try:
        assert wait_pid(producer, WATCHDOG) == 0, "the producer of the lost object blocked"
        assert select.select([r], [], [], 0)[0]
        assert wait_pid(other, WATCHDOG) == 0, "the other consumer blocked"
        # The second END marker is left when the victim died before taking the first.
        assert wait_pid(fork_run(_drain_all, q, other_reports), WATCHDOG) == 0
        victim_reports.close_writer()
        other_reports.close_writer()
        got = victim_reports.drain(0.5) + other_reports.drain(0.5)
    finally:
        for pid in (producer, victim, other):
            kill(pid)
        os.close(r)
        os.close(w)
    assert all(ok for _, _, ok in got)
    seqs = [s for _, s, _ in got if s >= 0]
    assert len(seqs) == len(set(seqs)), "an object was delivered twice"
    missing = set(range(12)) - set(seqs)
    assert len(missing) <= 1, f"more than the victim's one in-flight object lost: {missing}"
    round_trip_in_child(q)
    assert_reclaimed(q)
    victim_reports.close()
    other_reports.close()
    close_queue(q)


def test_consumer_killed_right_after_taking_a_stream_head(monkeypatch):
    monkeypatch.setattr(*seams.PARCEL_MIN, 1 << 62)
    q = Queue()
    r, w = os.pipe()

    producer = fork_run(_big_producer, q, 1, w)
    try:
        get_and_die_at(q, *seams.STREAM_READ)
        assert wait_pid(producer, 5) == 0, "the producer blocked forever on a dead reader"
        assert_reclaimed(q)
    finally:
        kill(producer)
        os.close(r)
        os.close(w)
        close_queue(q)


def test_consumer_killed_between_taking_a_parcel_message_and_reading_it():
    q = Queue()
    q.put(obj("P", 0, payload(0, BIG)))

    get_and_die_at(q, *seams.PARCEL_UNWRAP)
    round_trip_in_child(q)  # the next writer's claim reclaims what dead processes left
    try:
        assert_reclaimed(q)
    finally:
        close_queue(q)


def test_consumer_killed_after_taking_a_parcel_message_is_noticed_while_others_stay_queued():
    q = Queue()
    q.put(obj("P", 0, payload(0, BIG)))
    for i in range(3):
        q.put(("small", i))
    wait_for_feeder(q, 0)
    [(state, stranded)] = parcel_states(q)
    assert state == _parcels.SENT

    def next_writer():
        q.put(obj("Q", 0, payload(1, BIG)))
        q.close()
        q.join_thread()

    try:
        get_and_die_at(q, *seams.PARCEL_UNWRAP)
        assert kernel_state(q)["main"][0] == 3
        assert wait_pid(fork_run(next_writer), WATCHDOG) == 0
        # Its claim found the dead consumer's parcel although the queue never emptied.
        assert (_parcels.SENT, stranded) not in parcel_states(q)
        got = [q.get(timeout=5) for _ in range(4)]
        assert got[:3] == [("small", i) for i in range(3)]
        assert got[3][0] == "Q" and intact(got[3])
        assert_reclaimed(q)
    finally:
        close_queue(q)


def test_consumer_killed_after_taking_a_stream_head_is_noticed_while_others_stay_queued(
        monkeypatch):
    monkeypatch.setattr(*seams.PARCEL_MIN, 1 << 62)
    q = Queue()
    r, w = os.pipe()

    producer = fork_run(_big_producer, q, 1, w)
    try:
        deadline = time.monotonic() + WATCHDOG
        while kernel_state(q)["main"][0] < 1 and time.monotonic() < deadline:
            time.sleep(0.005)  # its head is queued
        for i in range(3):
            q.put(("small", i))
        wait_for_feeder(q, 0)
        get_and_die_at(q, *seams.STREAM_READ)  # takes the head, dies before reading
        assert kernel_state(q)["main"][0] == 3
        assert wait_pid(producer, 5) == 0, "the writer waited for a dead reader"
        got = [q.get(timeout=5) for _ in range(5)]
        assert got[:3] == [("small", i) for i in range(3)]
        assert [g[1] for g in got[3:]] == [-1, -1]
        assert_reclaimed(q)
    finally:
        kill(producer)
        os.close(r)
        os.close(w)
        close_queue(q)


def test_producer_killed_while_its_head_waits_behind_other_objects(monkeypatch):
    monkeypatch.setattr(*seams.PARCEL_MIN, 1 << 62)
    q = Queue()
    for i in range(3):
        q.put(("small", i))
    started_r, started_w = os.pipe()
    victim = fork_run(_killed_producer, q, started_w)
    pids = [victim]
    try:
        assert select.select([started_r], [], [], WATCHDOG)[0]
        # Its head is queued and its first frames fill the stream queue; nobody reads yet.
        deadline = time.monotonic() + WATCHDOG
        while kernel_state(q)["main"][0] < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        kill(victim)

        def next_writer():
            q.put(obj("B", 0, payload(0, 1 << 20)))
            q.close()
            q.join_thread()

        writer = fork_run(next_writer)
        pids.append(writer)
        time.sleep(0.3)

        def reader():
            got = []
            for _ in range(5):
                try:
                    got.append(q.get(timeout=5))
                except mpsysv.Empty:
                    break
            assert any(g[0] == "B" and intact(g) for g in got if len(g) == 4)

        reading = fork_run(reader)
        pids.append(reading)
        assert wait_pid(reading, 6) == 0, f"the next stream's reader hung: {diagnose(q)}"
        assert wait_pid(writer, 5) == 0, "the next writer hung"
    finally:
        for pid in pids:
            kill(pid)
        os.close(started_r)
        os.close(started_w)
        close_queue(q)
