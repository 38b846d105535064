"""The GC pause of bulk computations: nested and concurrent blocks share one pause, and the
collector comes back as it was."""

from __future__ import annotations

import gc
import threading

from billing_core.bulk import paused_gc, without_gc


def test_nested_blocks_resume_the_collector_when_the_last_ends() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer block still runs
    assert gc.isenabled()


def test_a_collector_turned_off_before_stays_off() -> None:
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_an_error_still_resumes_the_collector() -> None:
    @without_gc
    def fails() -> None:
        assert not gc.isenabled()
        raise ValueError("boom")

    try:
        fails()
    except ValueError:
        pass
    assert gc.isenabled()


def test_overlapping_blocks_in_threads_share_one_pause() -> None:
    inside, release = threading.Event(), threading.Event()

    def long_block() -> None:
        with paused_gc():
            inside.set()
            release.wait(5)

    other = threading.Thread(target=long_block)
    other.start()
    inside.wait(5)
    with paused_gc():
        pass
    assert not gc.isenabled()  # the other thread's block is still running
    release.set()
    other.join(5)
    assert gc.isenabled()
