"""The shared cache's breaker without a server: a call in flight since before a failure does not close it (only a
call begun after it opened, a probe, may), so a Redis that refuses writes logs the failure once."""

from __future__ import annotations

import logging
import threading

from infra.redis_cache import OPEN, OK, RedisCache


class _Pipeline:
    def __init__(self, client: "_Client") -> None:
        self.client = client

    def set(self, *args, **kwargs) -> None:
        pass

    def execute(self) -> list:
        return self.client.write()


class _Client:
    """Writes: the first blocks until released and then succeeds; the rest do what ``refuse`` says."""

    def __init__(self) -> None:
        self.first = True
        self.entered = threading.Event()
        self.release = threading.Event()
        self.refuse = True

    def pipeline(self, transaction: bool = False) -> _Pipeline:
        return _Pipeline(self)

    def write(self) -> list:
        if self.first:
            self.first = False
            self.entered.set()
            self.release.wait(10)
            return [True]
        if self.refuse:
            raise RuntimeError("OOM command not allowed when used memory > 'maxmemory'")
        return [True]


def test_a_write_in_flight_before_the_failure_does_not_close_the_breaker(caplog):
    caplog.set_level(logging.WARNING, logger="infra.redis_cache")
    client = _Client()
    cache = RedisCache(client, retry_s=0.0)
    slow = threading.Thread(target=cache.put_many, args=([(b"k", b"v")], 60))
    slow.start()
    assert client.entered.wait(5)
    cache.put_many([(b"k2", b"v")], 60)  # refused: the breaker opens
    assert cache.state == OPEN
    client.release.set()
    slow.join(5)  # the old write succeeds now: proves nothing about Redis
    assert cache.state == OPEN
    cache.put_many([(b"k3", b"v")], 60)  # a probe, still refused: no second line
    client.refuse = False
    cache.put_many([(b"k4", b"v")], 60)  # a probe that succeeds closes it
    assert cache.state == OK
    lines = [r.getMessage() for r in caplog.records]
    assert [("failed" in m, "again" in m) for m in lines] == [(True, True), (False, True)], lines
