"""One dyno of the benchmark: a python-socketio server on gevent with the
backplane named by BACKEND, and a small HTTP control API for the driver.

BACKEND: ``ours`` (flask_signalr_kafka.KafkaManager), ``ours-threading``
(the same in python-socketio's threading mode: nothing patched, Werkzeug's
threaded server), ``ours-recovery`` (connection state recovery on),
``ours-all`` (ours reading every partition: ``home_partitions=False``),
``ours-confluent`` (ours on confluent-kafka: ``client="confluent"``),
``stock-kafka``
(python-socketio's KafkaManager, see StockKafkaManager) or ``redis``
(python-socketio's RedisManager). Env: PORT, BOOTSTRAP, PREFIX, REDIS_URL,
FETCH_MAX_WAIT_MS (ours only; default: the manager's own default).
CONSUMER_GROUPS=per-topic (ours: a client consumer per topic, not the
core's hot and cold groups) and COLD_FETCH_WAIT_MS (ours: the fetch wait of
the cold group) set what ``loadtests/idle_cpu.py`` compares.
PRODUCER_CONFIG and CONSUMER_CONFIG (ours: ``name=value,...`` client
settings over the defaults) and SET (``module.NAME=value;...``: a constant
of the package set at start) make the variants ``bench.py --variant``
compares.
"""
import os

BACKEND = os.environ["BACKEND"]
ASYNC_MODE = "threading" if BACKEND == "ours-threading" else "gevent"
if ASYNC_MODE == "gevent":
    from gevent import monkey

    monkey.patch_all()

import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import socketio  # noqa: E402
from pacing import paced  # noqa: E402

#: Bytes this process read from its sockets (broker or Redis, and clients).
RECEIVED = [0]


def _count_reads() -> None:
    """Count every byte read from a socket (gevent's socket class, which
    every client library here uses once patched): what a dyno fetches."""
    import gevent._socket3 as gsocket

    recv, recv_into = gsocket.socket.recv, gsocket.socket.recv_into

    def counted_recv(self, *args, **kwargs):
        data = recv(self, *args, **kwargs)
        RECEIVED[0] += len(data)
        return data

    def counted_recv_into(self, *args, **kwargs):
        n = recv_into(self, *args, **kwargs)
        RECEIVED[0] += n or 0
        return n

    gsocket.socket.recv, gsocket.socket.recv_into = counted_recv, counted_recv_into


if ASYNC_MODE == "gevent":
    _count_reads()
ROOM = "bench"


class StockKafkaManager(socketio.KafkaManager):
    """python-socketio's KafkaManager, with the one fix kafka-python 3 needs:
    the value is encoded to bytes (its ``_publish`` passes a str, which
    kafka-python 3 rejects with TypeError). Everything else is its design:
    one topic, JSON, a flush after every emit."""

    def _publish(self, data):
        self.producer.send(self.channel, value=self.json.dumps(data).encode())
        self.producer.flush()


def _settings(name: str) -> dict:
    """``name=value,...`` from env var ``name``, numbers and booleans as such."""
    return {k: json.loads(v) if v in ("true", "false") or v.lstrip("-").replace(".", "", 1)
            .isdigit() else v
            for k, _, v in (pair.partition("=") for pair in
                            os.environ.get(name, "").split(",") if pair)}


for _assignment in filter(None, os.environ.get("SET", "").split(";")):
    import importlib

    _target, _, _value = _assignment.partition("=")
    _module, _, _constant = _target.rpartition(".")
    setattr(importlib.import_module(_module), _constant, json.loads(_value))


def make_manager():
    if BACKEND in ("ours", "ours-threading", "ours-recovery", "ours-all", "ours-confluent"):
        from flask_signalr_kafka import KafkaManager, KafkaTopicConfig

        client = "confluent" if BACKEND == "ours-confluent" else "kafka-python"
        consumer = _settings("CONSUMER_CONFIG")
        if os.environ.get("FETCH_MAX_WAIT_MS"):
            wait = "fetch.wait.max.ms" if client == "confluent" else "fetch_max_wait_ms"
            consumer[wait] = int(os.environ["FETCH_MAX_WAIT_MS"])
        return KafkaManager(bootstrap_servers=os.environ["BOOTSTRAP"], consumer_config=consumer,
                            producer_config=_settings("PRODUCER_CONFIG"), client=client,
                            topic_config=KafkaTopicConfig(prefix=os.environ["PREFIX"]),
                            connection_state_recovery=BACKEND == "ours-recovery",
                            home_partitions=BACKEND != "ours-all")
    if BACKEND == "stock-kafka":
        return StockKafkaManager("kafka://" + os.environ["BOOTSTRAP"],
                                 channel=os.environ["PREFIX"])
    if BACKEND == "redis":
        return socketio.RedisManager(os.environ["REDIS_URL"], channel=os.environ["PREFIX"])
    raise SystemExit(f"unknown BACKEND {BACKEND!r}")


mgr = make_manager()
if os.environ.get("CONSUMER_GROUPS") == "per-topic" and hasattr(mgr, "core"):
    mgr.core.consumer_groups = {}  # one client consumer per topic (issue 23's comparison)
if os.environ.get("COLD_FETCH_WAIT_MS") and hasattr(mgr, "core"):
    mgr.core.client.static_fetch_wait_ms = int(os.environ["COLD_FETCH_WAIT_MS"])
sio = socketio.Server(client_manager=mgr, async_mode=ASYNC_MODE)


@sio.on("connect")
def on_connect(sid, environ, auth=None):
    sio.enter_room(sid, ROOM)


def burst(target, n, rate):
    """Emit ``n`` messages ``[seq, send time]`` to ``target``, at ``rate``
    per second (0: as fast as the server goes)."""
    to = None if target == "all" else target
    started = time.time()
    for seq in paced(n, rate):
        if not rate and seq % 64 == 0:
            sio.sleep(0)  # let the backplane's IO greenlets run
        sio.emit("m", (seq, time.time()), to=to)
    return time.time() - started


def mix(targets, n, rate, room_every=0, all_every=0, seed=0):
    """The fleet benchmark's load: ``n`` emits at ``rate``/s, each to a
    random connection of ``targets`` (any dyno's), every ``room_every``-th
    to the room instead and every ``all_every``-th to everyone."""
    pick = random.Random(seed).choice
    started = time.time()
    for seq in paced(n, rate):
        if all_every and seq % all_every == all_every - 1:
            to = None
        elif room_every and seq % room_every == room_every - 1:
            to = ROOM
        else:
            to = pick(targets)
        sio.emit("m", (seq, time.time()), to=to)
    return time.time() - started


def _body(environ) -> dict:
    """The request's JSON (Werkzeug's input is the raw stream: read only
    what the request says it sent)."""
    size = int(environ.get("CONTENT_LENGTH") or 0)
    return json.loads(environ["wsgi.input"].read(size) or b"{}")


def control(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/ready":
        ready = getattr(mgr, "wait_ready", lambda t: True)(0)
        start_response("200 OK" if ready else "503 Starting", [("Content-Type", "text/plain")])
        return [b"ready" if ready else b"starting"]
    if path == "/sids":
        sids = [sid for sid, _ in mgr.get_participants("/", ROOM)]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(sids).encode()]
    if path == "/burst":
        body = _body(environ)
        seconds = burst(body["target"], body["n"], body.get("rate", 0))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"seconds": seconds}).encode()]
    if path == "/join":  # a connection of another dyno, acked by it
        body = _body(environ)
        started = time.time()
        sio.enter_room(body["sid"], body["room"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"seconds": time.time() - started}).encode()]
    if path == "/received":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"bytes": RECEIVED[0]}).encode()]
    if path == "/mix":
        body = _body(environ)
        seconds = mix(**body)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"seconds": seconds}).encode()]
    start_response("404 Not Found", [])
    return [b""]


app = socketio.WSGIApp(sio, control)

if __name__ == "__main__":
    if ASYNC_MODE == "threading":
        import logging

        from werkzeug.serving import run_simple

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        run_simple("127.0.0.1", int(os.environ["PORT"]), app, threaded=True)
    else:
        from gevent import pywsgi
        from geventwebsocket.handler import WebSocketHandler

        pywsgi.WSGIServer(("127.0.0.1", int(os.environ["PORT"])), app, log=None,
                          handler_class=WebSocketHandler).serve_forever()
