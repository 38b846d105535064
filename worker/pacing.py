"""Call pacing shared by every process through Redis: at most N calls per second, evenly spaced.

AWS allows 10 ``BatchMeterUsage`` calls per second per seller account and region. Workers on
several machines report at once, so each call first reserves its slot in Redis: the slot after
the last one reserved, ``1 / rate`` seconds later. A caller sleeps until its slot, so calls
never arrive faster than the limit and none are spent on ``ThrottlingException`` and backoff.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from worker.logs import get_logger

log = get_logger("marketsync.pacing")

# Atomically: the slot is max(now, next free slot); the next free slot moves one interval on.
# Times are whole milliseconds (13 digits: exact in Lua's number formatting).
_RESERVE = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
redis.call('SET', KEYS[1], string.format('%d', slot + interval), 'PX', 60000)
return string.format('%d', slot)
"""

# A caller never waits longer than this for its slot (a queue this long means the limit is
# too low for the load; the marketplace's own throttling and the job's retry take over).
MAX_WAIT_SECONDS = 30.0


class RedisPacer:
    """Block each call until its evenly spaced slot under ``rate`` calls per second."""

    def __init__(self, redis: Any, key: str, rate: float, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.redis = redis
        self.key = key
        self.interval_ms = max(1, round(1000 / rate))
        self._clock = clock
        self._sleep = sleep
        self._script: Any = None

    def __call__(self) -> None:
        now_ms = int(self._clock() * 1000)
        try:
            if self._script is None:
                self._script = self.redis.register_script(_RESERVE)
            slot_ms = int(self._script(keys=[self.key], args=[now_ms, self.interval_ms]))
        except Exception as exc:  # noqa: BLE001 - Redis trouble must not stop reporting
            log.warning("pacing_unavailable", key=self.key, error=type(exc).__name__)
            return
        if slot_ms > now_ms:
            self._sleep(min((slot_ms - now_ms) / 1000, MAX_WAIT_SECONDS))
