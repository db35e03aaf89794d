"""The fleet's view of Redis: failures become states, logged once per change; its loops never
stop silently."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from ocspproxy.shared.link import Link, State, classify, keep_running


def test_failures_are_told_apart() -> None:
    assert classify(RedisConnectionError("refused")) is State.UNREACHABLE
    assert classify(TimeoutError()) is State.UNREACHABLE
    assert classify(OutOfMemoryError("OOM command not allowed")) is State.FULL
    assert classify(ResponseError("OOM command not allowed when used memory > 'maxmemory'")) is State.FULL
    assert classify(ReadOnlyError("READONLY You can't write against a read only replica.")) is State.READ_ONLY
    assert classify(ResponseError("NOPERM this user has no permissions")) is State.FAILING


async def test_each_change_is_logged_once_and_only_the_probe_says_usable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    usable = []
    link = Link(where="redis://r:6379", timeout=0.1, on_usable=lambda: usable.append(1))

    async def fail() -> int:
        raise OutOfMemoryError("OOM")

    async def ok() -> int:
        return 1

    def state() -> State:  # (read afresh each time)
        return link.state

    for _ in range(5):
        assert await link.call(fail) is None
    assert state() is State.FULL
    assert await link.call(ok) == 1 and state() is State.FULL, "a read says nothing about writes"
    assert await link.call(ok, probe=True) == 1 and state() is State.OK and usable == [1]

    async def hang() -> int:
        await asyncio.sleep(10)
        return 1

    assert await link.call(hang) is None and state() is State.UNREACHABLE, "bounded in time"
    events = [json.loads(x)["event"] for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    assert events.count("shared store full (maxmemory); going on alone") == 1
    assert events.count("shared store unreachable; going on alone") == 1


async def test_a_loop_that_stops_is_logged_and_started_again(capsys: pytest.CaptureFixture[str]) -> None:
    runs = []
    closing = False

    async def loop() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("boom")
        if len(runs) == 2:
            raise asyncio.CancelledError  # not a shutdown's
        await asyncio.sleep(10)

    task = asyncio.create_task(keep_running("probe", loop, lambda: closing))
    for _ in range(60):
        if len(runs) >= 3:
            break
        await asyncio.sleep(0.1)
    assert len(runs) == 3
    closing = True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    stopped = [e for e in lines if e["event"] == "fleet task stopped; started again"]
    assert [e["error"].split(":")[0] for e in stopped] == ["RuntimeError", "CancelledError"]
