"""Startup, shutdown and faults: topic creation, write-only emitters, an
unreachable broker, SIGTERM, and a broker that loses its topics."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import socketio
from kafka import KafkaAdminClient

from flask_signalr_kafka import (
    BrokerUnavailableError,
    KafkaManager,
    KafkaTopicConfig,
    TopicSpec,
)
from flask_signalr_kafka.cli.broker import free_port, start_broker
from testkit.harness import unique, wait_until

# The combinations besides the default one that run this module (make test).
pytestmark = [pytest.mark.tansu, pytest.mark.threading, pytest.mark.confluent,
              pytest.mark.spread]

BASES = ("ack", "group-mgmt", "send-all", "send-conn", "send-group", "send-user")
#: pytest --client: the managers this process and its scripts make use it too.
CLIENT = os.environ.get("KAFKA_CLIENT", "kafka-python")


def partitions(admin, topic):
    described = admin.describe_topics([topic])
    return len(described[0]["partitions"])


def test_topics_created_with_their_specs_and_existing_ones_kept(broker):
    prefix = unique("spec")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics({f"{prefix}-send-all": {"num_partitions": 2, "replication_factor": 1}})
    mgr = KafkaManager(
        bootstrap_servers=broker.bootstrap,
        write_only=True,
        topic_config=KafkaTopicConfig(prefix=prefix, ack=TopicSpec(num_partitions=3),
                                      send_all=TopicSpec(num_partitions=7)),
    )
    mgr.emit("e", "x")  # a write-only manager connects at its first emit
    mgr.close()
    existing = set(admin.list_topics())
    assert {f"{prefix}-{b}" for b in BASES} <= existing
    assert partitions(admin, f"{prefix}-ack") == 3
    assert partitions(admin, f"{prefix}-send-user") == 10
    assert partitions(admin, f"{prefix}-send-all") == 2  # existed: used as it is
    admin.close()


def test_unreachable_broker_fails_fast_naming_the_servers():
    address = f"127.0.0.1:{free_port()}"
    mgr = KafkaManager(bootstrap_servers=address, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=address):
        socketio.Server(client_manager=mgr, async_mode="threading")
    assert time.monotonic() - started < 10
    writer = KafkaManager(bootstrap_servers=address, connect_timeout=1, write_only=True)
    with pytest.raises(BrokerUnavailableError, match=address):
        writer.emit("e", "x")


def test_gevent_mode_without_monkey_patching_is_a_clear_error():
    """kafka-python would block every greenlet on its sockets: refused with
    what to do (this test process is not patched)."""
    mgr = KafkaManager(bootstrap_servers=f"127.0.0.1:{free_port()}", connect_timeout=1)
    with pytest.raises(RuntimeError, match=r"monkey.patch_all\(\).*async_mode='threading'"):
        socketio.Server(client_manager=mgr, async_mode="gevent")


EMITTER = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import os, sys
    from flask_signalr_kafka import KafkaManager, KafkaTopicConfig, user
    mgr = KafkaManager(bootstrap_servers=os.environ["BOOTSTRAP"], write_only=True,
                       topic_config=KafkaTopicConfig(prefix=os.environ["PREFIX"]),
                       client=os.environ.get("KAFKA_CLIENT", "kafka-python"))
    tag, room, alice, sid = sys.argv[1:5]
    mgr.emit("job", [tag, "all"], namespace="/")
    mgr.emit("job", [tag, "room"], to=room)
    mgr.emit("job", [tag, "room="], room=room)
    mgr.emit("job", [tag, "user"], to=user(alice))
    mgr.emit("job", [tag, "sid"], to=sid)
    mgr.close()
""")


def test_write_only_emitter_reaches_all_rooms_users_and_sids(fleet, connect):
    alice, room, tag = unique("alice"), unique("room"), unique("job")
    member = connect(fleet.a)
    member.call("join", {"room": room})
    tab = connect(fleet.b, user=alice)
    target = connect(fleet.b)
    env = dict(os.environ, BOOTSTRAP=fleet.broker.bootstrap, PREFIX=fleet.prefix)
    subprocess.run([sys.executable, "-c", EMITTER, tag, room, alice, target.sid],
                   env=env, check=True, timeout=60)
    member.wait_for("job", ([tag, "all"],))
    member.wait_for("job", ([tag, "room"],))
    member.wait_for("job", ([tag, "room="],))
    tab.wait_for("job", ([tag, "user"],))
    target.wait_for("job", ([tag, "sid"],))
    assert ([tag, "sid"],) not in tab.got("job")


def test_sigterm_flushes_what_was_emitted(new_fleet):
    # A long linger keeps the burst queued in the producer when SIGTERM lands:
    # only the flush on SIGTERM can get it out.
    server = new_fleet.server("A", LINGER_MS=5000)
    reader = new_fleet.raw("send-group")
    client = new_fleet.client(server)
    room, tag = unique("room"), unique("burst")
    assert client.call("burst", {"n": 200, "room": room, "tag": tag}) == "ok"
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(15) == -signal.SIGTERM
    records = reader.drain()
    assert sum(tag.encode() in r.value for r in records) == 200


@pytest.mark.parametrize("runner", [
    "socketio.run", pytest.param("uvicorn", marks=pytest.mark.asgi_only)])
def test_a_long_polling_client_does_not_hold_the_drain(new_fleet, runner):
    """With recovery on, SIGTERM closes every socket cleanly (the drain). A
    long-polling client gets its CLOSE at its next poll, and the dyno goes
    on at once; engine.io's own close waited for a poll after that one,
    which never comes: in threading mode the drain waited out its 10 s
    limit (12.0 s an exit; under gevent it did not). Also AsyncKafkaManager
    under uvicorn."""
    server = new_fleet.server("A", CONNECTION_STATE_RECOVERY=1, RUNNER=runner)
    sio = socketio.Client(reconnection=False)
    gone = []
    sio.on("disconnect", lambda *reason: gone.append(time.monotonic()))
    sio.connect(server.url, transports=["polling"])
    try:
        time.sleep(1)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(25)
        took = time.monotonic() - started
    finally:
        sio.disconnect()
    print(f"\n{runner}: exit {took:.1f} s after SIGTERM, the client disconnected after "
          f"{gone[0] - started if gone else None} s")
    assert gone and gone[0] - started < 5, "the client was not disconnected by the drain"
    assert took < 8, f"the dyno took {took:.1f} s to exit"


def test_no_consumer_groups_are_left_behind(new_fleet):
    admin = KafkaAdminClient(bootstrap_servers=new_fleet.broker.bootstrap)
    before = set(admin.list_groups())
    new_fleet.server("A")
    new_fleet.server("B")
    assert set(admin.list_groups()) == before
    admin.close()


@pytest.mark.parametrize("runner", [
    "socketio.run", pytest.param("uvicorn", marks=pytest.mark.asgi_only)])
def test_recovers_when_the_broker_loses_its_topics(engine, artifacts, runner):
    """The topics vanish under running servers (on Apache Kafka: deleted and
    so recreated; on Tansu: the in-memory broker restarted on the same
    port); the servers must notice, recreate them and deliver again. The
    gevent manager, and AsyncKafkaManager under uvicorn."""
    from testkit.harness import Fleet

    port = free_port()
    broker = start_broker(engine, port=port, log_dir=artifacts)
    fleet = Fleet(broker, artifacts)
    try:
        a, b = fleet.start_servers("A", "B", RUNNER=runner)
        sender, receiver = fleet.client(a), fleet.client(b)
        first = unique("before")
        sender.call("emit", {"event": "e", "data": first})
        receiver.wait_for("e", (first,))
        if engine == "kafka":
            admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
            admin.delete_topics([fleet.topic(base) for base in BASES])
            admin.close()
        else:
            broker.stop()
            broker = start_broker(engine, port=port, log_dir=artifacts)
            fleet.broker = broker

        def delivered():
            word = unique("after")
            sender.call("emit", {"event": "e", "data": word})
            try:
                receiver.wait_for("e", (word,), timeout=1)
                return True
            except AssertionError:
                return False

        wait_until(delivered, 60, 0.1, "delivery after the topics were lost")
        # Every later message arrives too.
        for _ in range(5):
            word = unique("steady")
            sender.call("emit", {"event": "e", "data": word})
            receiver.wait_for("e", (word,), timeout=5)
    finally:
        fleet.close()
        broker.stop()


@pytest.mark.serial  # 1 s to deliver: under xdist, no other serial test beside it
def test_await_produce_raises_and_fire_and_forget_logs(engine, artifacts, caplog):
    """With the broker gone, await_produce=True raises the produce error to the
    emitter; await_produce=False returns and logs the lost record's target."""
    from kafka.errors import KafkaError

    timeouts = {"request_timeout_ms": 800, "delivery_timeout_ms": 1000, "max_block_ms": 1000,
                "reconnect_backoff_max_ms": 200}
    errors: tuple = (KafkaError,)
    if CLIENT == "confluent":
        from confluent_kafka import KafkaException

        timeouts = {"request.timeout.ms": 800, "message.timeout.ms": 1000,
                    "reconnect.backoff.max.ms": 200}
        errors = (KafkaException,)
    with start_broker(engine, log_dir=artifacts) as broker:
        prefix = unique("produce")
        managers = [
            KafkaManager(bootstrap_servers=broker.bootstrap, write_only=True,
                         await_produce=waits, producer_config=timeouts, client=CLIENT,
                         topic_config=KafkaTopicConfig(prefix=prefix))
            for waits in (True, False)
        ]

        def warmed_up() -> bool:
            # The 1 s delivery budget can run out on a busy machine (make
            # test's other workers) while the broker is up: try again.
            try:
                managers[0].emit("e", "connected", to="warmup")
            except errors:
                return False
            return True

        wait_until(warmed_up, 60, 0.5, "a warm-up emit delivered within 1 s")
        managers[1].emit("e", "connected", to="warmup")
        managers[0].core.flush(5)
        managers[1].core.flush(5)
    waiting, fire_and_forget = managers
    with pytest.raises(errors):
        waiting.emit("e", "lost", to="room-a")
    caplog.set_level("ERROR", logger="flask_signalr_kafka")
    fire_and_forget.emit("e", "lost", to="room-b")  # returns at once
    wait_until(lambda: "lost a record for 'room-b'" in caplog.text, 10,
               what="the delivery error logged")
    assert f"{prefix}-send-group" in caplog.text
    for mgr in managers:
        mgr.close(timeout=1)


CLOSER = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import gc, os, sys, threading
    import gevent
    from flask import Flask
    from flask_socketio import SocketIO
    from flask_signalr_kafka import KafkaManager, KafkaTopicConfig
    before = {t.ident for t in threading.enumerate()}
    mgr = KafkaManager(bootstrap_servers=os.environ["BOOTSTRAP"],
                       topic_config=KafkaTopicConfig(prefix=os.environ["PREFIX"]),
                       client=os.environ.get("KAFKA_CLIENT", "kafka-python"))
    SocketIO(Flask(__name__), client_manager=mgr, async_mode="gevent")
    assert mgr.wait_ready(20), "not ready"
    mgr.emit("bye", "x")
    mgr.close()
    gevent.sleep(0.5)
    # Our consumer loops are gevent Greenlets; kafka-python's IO threads are
    # threads (greenlets behind threading, once patched).
    def live_greenlet(o):
        try:
            return isinstance(o, gevent.Greenlet) and not o.dead
        except ReferenceError:  # a dead weakref.proxy among gc's objects
            return False
    left = [g for g in gc.get_objects() if live_greenlet(g)]
    threads = [t.name for t in threading.enumerate() if t.ident not in before]
    print("greenlets", [getattr(g, "_run", g) for g in left], "threads", threads)
    sys.exit(1 if left or threads else 0)
""")


def test_close_leaves_nothing_running(broker):
    env = dict(os.environ, BOOTSTRAP=broker.bootstrap, PREFIX=unique("close"))
    result = subprocess.run([sys.executable, "-c", CLOSER], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
