"""The Redis pacer spaces calls evenly across processes and never blocks reporting on Redis trouble."""

from __future__ import annotations

import threading
import time

import redis as redis_lib

from worker.pacing import RedisPacer


def test_calls_from_several_pacers_are_spaced_by_the_interval(redis_conn) -> None:  # type: ignore[no-untyped-def]
    """Two pacers on one key (two worker processes) share one schedule: 10/s means 100 ms apart."""
    key = f"test:pace:{time.time_ns()}"
    stamps: list[float] = []
    lock = threading.Lock()

    def caller(pacer: RedisPacer) -> None:
        for _ in range(4):
            pacer()
            with lock:
                stamps.append(time.monotonic())

    pacers = [RedisPacer(redis_conn, key, 10.0), RedisPacer(redis_conn, key, 10.0)]
    threads = [threading.Thread(target=caller, args=(p,)) for p in pacers]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    assert len(stamps) == 8
    # The k-th call never runs before its slot, k intervals after the start (a thread delayed by
    # the scheduler only runs later, so a loaded machine cannot make this fail).
    assert all(stamp - started >= k * 0.1 - 0.01 for k, stamp in enumerate(stamps)), [s - started for s in stamps]
    assert stamps[-1] - started >= 0.65  # 8 calls at 10/s take at least 0.7 s


def test_the_first_call_does_not_wait(redis_conn) -> None:  # type: ignore[no-untyped-def]
    waits: list[float] = []
    pacer = RedisPacer(redis_conn, f"test:pace:{time.time_ns()}", 10.0, sleep=waits.append)
    pacer()
    assert waits == []
    pacer()
    assert len(waits) == 1 and 0.05 < waits[0] <= 0.1


def test_redis_unreachable_means_no_pacing_not_an_error() -> None:
    dead = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    waits: list[float] = []
    RedisPacer(dead, "test:pace:dead", 10.0, sleep=waits.append)()
    assert waits == []
