"""Bulk computations: the cyclic garbage collector paused while thousands of objects are made.

Costs for every subscription, a simulation or a whole sync run build hundreds of thousands of
short-lived objects (timelines, charges, partials, lines). None of them form reference cycles
that matter, yet each allocation burst makes the collector walk every live object again: it
took a third of a warm costs run. ``paused_gc`` turns the collector off for the block and back
on after it (reference counting still frees everything as usual); nested and concurrent blocks
share one pause, so the collector resumes when the last block ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec, TypeVar

__all__ = ["paused_gc", "without_gc"]

_lock = threading.Lock()
_holders = 0
_resume = False  # whether the collector was on when the first block began

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block (process-wide; nests and shares safely)."""
    global _holders, _resume
    with _lock:
        if _holders == 0:
            _resume = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _resume:
                gc.enable()


def without_gc(function: Callable[P, R]) -> Callable[P, R]:
    """Decorate a bulk computation to run under ``paused_gc``."""
    @wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with paused_gc():
            return function(*args, **kwargs)
    return wrapper
