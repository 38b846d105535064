"""The composition root: builds engines, Redis connections and queues from settings, lazily."""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import redis
from rq import Queue
from sqlalchemy import Engine

from billing_core import use_fragments
from config import Settings
from worker import db

QUEUE_NAMES = ("urgent", "webhooks", "contracts", "sync")


class Runtime:
    """Everything a process needs to talk to the outside, built once per process on first use.

    A forked RQ work-horse must not reuse its parent's connections: call ``fork_reset()``.
    """

    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def engine(self) -> Engine:
        if self.settings.is_sqlite:
            self.settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        engine = db.build_engine(self.settings.database_url)
        use_fragments(engine, self.settings.USAGE_FRAGMENTS)
        from worker.outbound import watch_commits  # the sender is signalled after commits that emitted

        watch_commits(engine, self)
        return engine

    @cached_property
    def redis(self) -> redis.Redis:
        if not self.settings.REDIS_URL:
            raise RuntimeError("REDIS_URL is not set (marketsync run starts a private Redis)")
        return redis.Redis.from_url(
            self.settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2
        )

    def adapter(self, marketplace: str) -> Any:
        """Return the marketplace adapter for ``marketplace`` (built once per process)."""
        adapters = self.__dict__.setdefault("_adapters", {})
        if marketplace not in adapters:
            if marketplace == "aws":
                from marketplaces.aws import build_aws_adapter as build
            elif marketplace == "azure":
                from marketplaces.azure import build_azure_adapter as build
            elif marketplace == "gcp":
                from marketplaces.gcp import build_gcp_adapter as build
            else:
                raise ValueError(f"unknown marketplace {marketplace!r}")
            overrides: dict[str, Any] = {}
            if marketplace == "aws" and self.settings.AWS_METERING_RPS > 0 and self.settings.REDIS_URL:
                from worker.pacing import RedisPacer

                overrides["pace"] = RedisPacer(self.redis, f"marketsync:pace:aws:{self.settings.AWS_REGION}",
                                               self.settings.AWS_METERING_RPS)
            from worker.telemetry import TimedAdapter  # its calls timed here, so marketplaces/ has no metrics code

            adapters[marketplace] = TimedAdapter(marketplace, build(self.settings, **overrides))
        return adapters[marketplace]

    def billing_gateway(self) -> Any:
        """Return the gateway through which contract use cases reach the billing core."""
        from worker.billing_gateway import CoreBillingGateway

        return CoreBillingGateway(self.engine)

    def queue(self, name: str) -> Queue:
        """Return the RQ queue ``name`` (one of ``QUEUE_NAMES``)."""
        if name not in QUEUE_NAMES:
            raise ValueError(f"unknown queue {name!r}")
        return Queue(name, connection=self.redis)

    def fork_reset(self) -> None:
        """Forget connections inherited from a parent process."""
        self.__dict__.pop("_adapters", None)
        for attr in ("engine", "redis"):
            value = self.__dict__.pop(attr, None)
            if attr == "engine" and value is not None:
                value.dispose(close=False)

    def close(self) -> None:
        """Release pooled connections."""
        engine = self.__dict__.pop("engine", None)
        if engine is not None:
            engine.dispose()
        conn = self.__dict__.pop("redis", None)
        if conn is not None:
            conn.close()


_PROCESS_RUNTIME: tuple[int, Runtime] | None = None


def current() -> Runtime:
    """Return this process's runtime (job functions use it), built from the environment once.

    A forked RQ work-horse gets a fresh one: connections are never shared across a fork.
    """
    global _PROCESS_RUNTIME
    pid = os.getpid()
    if _PROCESS_RUNTIME is None or _PROCESS_RUNTIME[0] != pid:
        _PROCESS_RUNTIME = (pid, Runtime(Settings.from_env()))
    return _PROCESS_RUNTIME[1]


def install(runtime: Runtime) -> None:
    """Make ``runtime`` this process's runtime (tests and in-process workers)."""
    global _PROCESS_RUNTIME
    _PROCESS_RUNTIME = (os.getpid(), runtime)
