"""The pieces under AsyncKafkaManager that need no broker: the decoding of
consumed records both managers share, the thread-to-loop inbox, the
asyncio ack wait, and the manager's construction."""
import asyncio
import threading
import time
import types

import pytest

from flask_signalr_kafka import AckTimeoutError, AsyncKafkaManager, KafkaManager
from flask_signalr_kafka.errors import MalformedRecord
from flask_signalr_kafka.managers import inbound
from flask_signalr_kafka.managers.manager_base import ManagerBase
from flask_signalr_kafka.runtime.loop_bridge import Blocking, LoopInbox
from flask_signalr_kafka.transport.ack_waiter import AckWaiter
from flask_signalr_kafka.wire import hub_protocol, records
from flask_signalr_kafka.wire.records import AckExt, GroupCommandExt, InvocationExt


def record(value, key=None, topic="t-send-all"):
    return types.SimpleNamespace(value=value, key=key, topic=topic, partition=0, offset=7)


def invocation(origin="other", callback_id=0, earlier=()):
    frames = hub_protocol.frames_of("ev", ("a", 2), ("json",))
    return records.encode(InvocationExt(["x"], frames, origin=origin, namespace="/chat",
                                        callback_id=callback_id,
                                        earlier_targets=list(earlier)))


def test_delivery_of_each_send_topic():
    everyone = inbound.delivery_of("send-all", record(invocation()), "me")
    assert (everyone.room, everyone.to_conn, everyone.key) == (None, False, None)
    assert everyone.payload() == ("ev", ("a", 2))
    assert everyone.namespace == "/chat" and everyone.excluded == ["x"]
    one = inbound.delivery_of("send-conn", record(invocation(), b"sid1"), "me")
    assert (one.room, one.to_conn) == ("sid1", True)
    someone = inbound.delivery_of("send-user", record(invocation(), b"alice"), "me")
    assert someone.room == "user:alice" and someone.key == "alice"
    asked = inbound.delivery_of("send-group", record(invocation("srv", 5), b"r"), "me")
    assert asked.callback == ("srv", 5)


def test_own_records_and_bad_keys():
    assert inbound.delivery_of("send-all", record(invocation(origin="me")), "me") is None
    with pytest.raises(MalformedRecord):
        inbound.delivery_of("send-group", record(invocation()), "me")  # no key
    with pytest.raises(MalformedRecord):
        inbound.delivery_of("send-group", record(invocation(), b"\xff"), "me")
    with pytest.raises(MalformedRecord):
        inbound.delivery_of("send-all", record(b"\xc1"), "me")


def test_earlier_targets_exclude_their_local_members():
    delivery = inbound.delivery_of("send-group", record(invocation(earlier=["r1"]), b"r2"), "me")
    members = {"r1": [("s1", "e1"), ("s2", "e2")]}
    assert inbound.excluded(delivery, lambda ns, room: members.get(room, [])) == \
        ["x", "s1", "s2"]


def test_acks_for_this_server_only_and_commands():
    ack = records.encode(AckExt(3, ["yes"]))
    assert inbound.ack_of(record(ack, b"me"), b"me").args == ["yes"]
    assert inbound.ack_of(record(ack, b"other"), b"me") is None
    command = records.encode(GroupCommandExt(1, "srv", records.ADD, "room", "sid", "/"))
    assert inbound.command_of(record(command, b"room")).group == "room"


def test_inbox_keeps_order_across_threads_and_drops_before_its_loop():
    handled = []

    async def handle(item):
        if item % 100 == 0:
            await asyncio.sleep(0)  # a handler that yields keeps its place
        handled.append(item)

    inbox = LoopInbox(handle, "t")
    assert inbox.put(-1) is False  # no loop yet: nothing here to address

    async def main():
        inbox.bind(asyncio.get_running_loop())
        feeder = threading.Thread(target=lambda: [inbox.put(i) for i in range(5000)])
        feeder.start()
        while len(handled) < 5000:
            await asyncio.sleep(0.01)
        feeder.join()
        await inbox.stop()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert handled == list(range(5000))


def test_inbox_logs_a_failing_item_and_goes_on(caplog):
    handled = []

    async def handle(item):
        if item == 1:
            raise ValueError("boom")
        handled.append(item)

    async def main():
        inbox = LoopInbox(handle, "t")
        inbox.bind(asyncio.get_running_loop())
        for i in range(3):
            inbox.put(i)
        while len(handled) < 2:
            await asyncio.sleep(0.01)
        await inbox.stop()

    asyncio.run(asyncio.wait_for(main(), 5))
    assert handled == [0, 2] and "error handling a record of t" in caplog.text


def test_wait_async_wakes_on_an_ack_from_another_thread():
    waiter = AckWaiter()

    async def main():
        published = []

        async def publish(ack_id):
            published.append(ack_id)
            threading.Timer(0.05, waiter.resolve, (ack_id, [])).start()

        await waiter.wait_async(publish, 5, "joining")
        return published

    assert asyncio.run(main()) == [1]
    assert len(waiter) == 0 and waiter.stats.ack_timeouts == 0


def test_wait_async_times_out_without_blocking_the_loop():
    waiter = AckWaiter()
    ticks = []

    async def ticker():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main():
        task = asyncio.create_task(ticker())

        async def publish(ack_id):
            pass

        with pytest.raises(AckTimeoutError, match="joining room"):
            await waiter.wait_async(publish, 0.3, "joining room 'r' for s")
        task.cancel()

    asyncio.run(main())
    assert len(ticks) > 10  # the loop ran while it waited
    assert waiter.stats.ack_timeouts == 1 and len(waiter) == 0


def test_blocking_runs_off_the_loop_and_leaves_no_thread():
    pool = Blocking()

    async def main():
        return await pool.call(threading.current_thread)

    worker = asyncio.run(main())
    assert worker is not threading.main_thread()
    pool.shutdown()
    worker.join(2)
    assert not worker.is_alive()


def test_async_manager_takes_the_same_arguments_without_network():
    mgr = AsyncKafkaManager("127.0.0.1:1", ack_timeout=3, callback_timeout=4,
                            home_partitions=False, write_only=True)
    assert isinstance(mgr, ManagerBase) and not isinstance(mgr, KafkaManager)
    assert mgr.ack_timeout == 3 and mgr.core.write_only
    assert mgr.server_name.count("_") >= 1 and mgr.host_id == mgr.server_name
    with pytest.raises(ValueError, match="ack_timeout"):
        AsyncKafkaManager("127.0.0.1:1", ack_timeout=0)
    recovering = AsyncKafkaManager("127.0.0.1:1", connection_state_recovery=True)
    assert recovering.connection_state_recovery is not None and not recovering.is_recovered("s")
    assert "recoveries_attempted" in recovering.stats()
    with pytest.raises(ValueError, match="turn it off for a write_only emitter"):
        AsyncKafkaManager("127.0.0.1:1", connection_state_recovery=True, write_only=True)


def test_write_only_async_manager_refuses_what_needs_consuming():
    mgr = AsyncKafkaManager("127.0.0.1:1", write_only=True)
    with pytest.raises(RuntimeError, match="consumes nothing"):
        asyncio.run(mgr.wait_ready(0))
    with pytest.raises(ValueError, match="callbacks need a Socket.IO server"):
        asyncio.run(mgr.emit("e", 1, to="s", callback=print))
