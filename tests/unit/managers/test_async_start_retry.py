"""AsyncKafkaManager on a running loop (uvicorn builds the server there):
a start that fails (the cluster down when the server starts) is logged and
tried again by the next coroutine that needs the core, instead of being
raised to every connect and emit until the process restarts.

The core's blocking steps are stand-ins: the first connect fails as an
unreachable cluster does, the second succeeds.
"""
import asyncio
import logging

import pytest
import socketio

from flask_signalr_kafka import AsyncKafkaManager, BrokerUnavailableError

UNREACHABLE = "could not reach Kafka at 127.0.0.1:9 within 1 s"


def manager_failing_once():
    mgr = AsyncKafkaManager(bootstrap_servers="127.0.0.1:9", connect_timeout=1)
    attempts = []

    def connect():
        attempts.append(1)
        if len(attempts) == 1:
            raise BrokerUnavailableError(UNREACHABLE)

    published = []
    mgr._connect_core = connect
    mgr.core.consume = lambda handlers, partitions=None: None
    mgr.fleet.start = lambda: None
    mgr.core.publish = lambda base, key, value, timeout=None: published.append(base)
    mgr._shut = lambda timeout: None
    return mgr, attempts, published


def test_failed_start_on_a_running_loop_is_tried_again(caplog):
    async def main():
        mgr, attempts, published = manager_failing_once()
        socketio.AsyncServer(async_mode="asgi", client_manager=mgr)  # starts in a thread
        with pytest.raises(BrokerUnavailableError):
            await asyncio.wrap_future(mgr._starting)
        await mgr.emit("e", "x")  # the cluster is back: the emit starts the core
        ready = mgr._started
        await mgr.close()
        return attempts, published, ready

    with caplog.at_level(logging.ERROR, logger="flask_signalr_kafka"):
        attempts, published, ready = asyncio.run(asyncio.wait_for(main(), 10))
    assert ready and len(attempts) == 2
    assert published == ["send-all"]
    assert any(UNREACHABLE in r.getMessage() and "tries again" in r.getMessage()
               for r in caplog.records), caplog.text


def test_concurrent_callers_share_one_retry():
    async def main():
        mgr, attempts, _ = manager_failing_once()
        socketio.AsyncServer(async_mode="asgi", client_manager=mgr)
        with pytest.raises(BrokerUnavailableError):
            await asyncio.wrap_future(mgr._starting)
        await asyncio.gather(*(mgr._ensure_started() for _ in range(5)))
        await mgr.close()
        return attempts

    assert len(asyncio.run(asyncio.wait_for(main(), 10))) == 2


def test_second_close_returns_when_the_first_is_done():
    async def main():
        mgr, _, _ = manager_failing_once()
        mgr._connect_core = lambda: None
        done = []

        def slow_shut(timeout):
            import time
            time.sleep(0.3)
            done.append(1)

        mgr._shut = slow_shut
        await mgr._ensure_started()
        first = asyncio.ensure_future(mgr.close())
        await asyncio.sleep(0.05)
        await mgr.close()
        seen = list(done)
        await first
        return seen

    assert asyncio.run(asyncio.wait_for(main(), 10)) == [1]
