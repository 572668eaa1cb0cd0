"""A Flask-SocketIO server with the KafkaManager, driven by the integration
tests: each test asks it, through Socket.IO events, to do what an app would.

Configured from the environment: BOOTSTRAP, PREFIX, PORT, and optional
SERVER_LABEL, ACK_TIMEOUT, HUB_PROTOCOLS (comma-separated), FETCH_MAX_WAIT_MS,
LINGER_MS, REPLICATION_FACTOR ("default": the cluster's), TOPIC_CONFIGS (topic
configs of the created topics, as JSON), AWAIT_PRODUCE, CONNECT_TIMEOUT,
PRODUCER_JSON and CONSUMER_JSON (more producer_config / consumer_config, as
JSON, kafka-python's names), KAFKA_CLIENT, TRACK_PRODUCE=1 (count the
producer's results for the fault tests' "stream" event), ADMIN_UI=1 (the Socket.IO Admin UI),
CONNECTION_STATE_RECOVERY=1 and MAX_DISCONNECTION (seconds), PING_INTERVAL and
PING_TIMEOUT (seconds), HOME_PARTITIONS=0 (read every partition),
APP_SIGTERM=1 (the app's own SIGTERM handler calls ``mgr.close()`` and exits,
as a user's ``socketio.run`` app would), APP_SIGTERM=spawn (gevent's pattern:
``gevent.signal_handler`` spawns a greenlet that closes, then ``os._exit(0)``).
"""
import os

# ASYNC_MODE=threading: Flask-SocketIO's threading mode, nothing patched.
ASYNC_MODE = os.environ.get("ASYNC_MODE", "gevent")
if ASYNC_MODE == "gevent":
    from gevent import monkey

    monkey.patch_all()

import json  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from flask import Flask, request  # noqa: E402
from flask_socketio import SocketIO, close_room, disconnect, join_room, leave_room  # noqa: E402
from produce_tracking import produced, stream_round, track  # noqa: E402

from flask_signalr_kafka import (  # noqa: E402
    AckTimeoutError,
    ConnectionStateRecovery,
    FleetTimeoutError,
    KafkaManager,
    KafkaTopicConfig,
    PayloadTooLargeError,
    ProducerBufferFullError,
    TopicSpec,
    user,
)
from flask_signalr_kafka.observability.endpoints import add_routes  # noqa: E402
from flask_signalr_kafka.transport.clients.client_config import to_librdkafka  # noqa: E402

logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"),
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")

_rf = os.environ.get("REPLICATION_FACTOR", "1")
spec = TopicSpec(replication_factor=None if _rf == "default" else int(_rf),
                 configs=json.loads(os.environ.get("TOPIC_CONFIGS", "{}")))
# KAFKA_CLIENT=confluent (pytest --client): the manager on confluent-kafka;
# the tests' settings are kafka-python's names, given to it in librdkafka's.
KAFKA_CLIENT = os.environ.get("KAFKA_CLIENT", "kafka-python")


def dialect(config):
    return to_librdkafka(config) if KAFKA_CLIENT == "confluent" else config


mgr = KafkaManager(
    bootstrap_servers=os.environ["BOOTSTRAP"].split(","),
    client=KAFKA_CLIENT,
    topic_config=KafkaTopicConfig(
        prefix=os.environ.get("PREFIX", ""),
        **{base: spec for base in ("ack", "group_mgmt", "send_all", "send_conn", "send_group",
                                   "send_user")},
        sessions=spec,
    ),
    ack_timeout=float(os.environ.get("ACK_TIMEOUT", "30")),
    connect_timeout=float(os.environ.get("CONNECT_TIMEOUT", "10")),
    await_produce=os.environ.get("AWAIT_PRODUCE") == "1",
    hub_protocols=os.environ.get("HUB_PROTOCOLS", "json").split(","),
    consumer_config=dialect({**({"fetch_max_wait_ms": int(os.environ["FETCH_MAX_WAIT_MS"])}
                                if "FETCH_MAX_WAIT_MS" in os.environ else {}),
                             **json.loads(os.environ.get("CONSUMER_JSON", "{}"))}),
    producer_config=dialect({"linger_ms": int(os.environ.get("LINGER_MS", "1")),
                             **json.loads(os.environ.get("PRODUCER_JSON", "{}"))}),
    connection_state_recovery=ConnectionStateRecovery(
        max_disconnection_duration=float(os.environ.get("MAX_DISCONNECTION", "120")),
        checkpoint_interval=float(os.environ.get("CHECKPOINT_INTERVAL", "0.25")),
    ) if os.environ.get("CONNECTION_STATE_RECOVERY") == "1" else False,
    home_partitions=os.environ.get("HOME_PARTITIONS", "1") != "0",
)
# kill -USR2 <pid> prints every greenlet's stack into the log (a hang's where).
if ASYNC_MODE == "gevent":
    import gevent
    import gevent.util

    gevent.signal_handler(signal.SIGUSR2, lambda: print(
        "\n".join(gevent.util.format_run_info()), flush=True))
app = Flask(__name__)
socketio = SocketIO(app, client_manager=mgr, async_mode=ASYNC_MODE,
                    ping_interval=float(os.environ.get("PING_INTERVAL", "25")),
                    ping_timeout=float(os.environ.get("PING_TIMEOUT", "20")))
if os.environ.get("ADMIN_UI") == "1":
    # The Socket.IO Admin UI's server side, as an app turns it on.
    socketio.server.instrument(auth=False, server_stats_interval=0.5)
LABEL = os.environ.get("SERVER_LABEL", mgr.server_name)


add_routes(app, mgr)  # /healthz and /metrics, as the sample app serves them


@app.get("/stats")
def stats():
    return json.dumps(mgr.stats()), 200, {"Content-Type": "application/json"}


@app.post("/stop-consumer/<base>")
def stop_consumer(base):
    """Stop one topic's consumer greenlet, as a crash of it would."""
    for consumer in mgr.core.consumers:
        if consumer.topic == mgr.topic_config.name(base):
            consumer.stop()
    return "stopped"


@app.get("/partitions")
def partitions():
    """The partitions each topic's consumer reads (those with a position)."""
    read = {base: sorted(tp.partition for tp in c.positions)
            for base in ("ack", "group-mgmt", "send-all", "send-conn", "send-group", "send-user")
            if (c := mgr.core.consumer(base)) is not None}
    return json.dumps({"server_name": mgr.server_name, "read": read}), 200, {
        "Content-Type": "application/json"}


CSR_PAGE = """<!doctype html><title>csr</title>
<script src="/socket.io.min.js"></script>
<script>
  // The official client with its default options, as an app writes it.
  const rooms = new URLSearchParams(location.search).getAll("room");
  window.connects = []; window.events = []; window.joined = 0;
  const socket = io();
  socket.on("connect", () => {
    window.connects.push({sid: socket.id, recovered: socket.recovered});
    if (!socket.recovered) {
      for (const room of rooms) socket.emit("join", {room}, () => window.joined++);
    }
  });
  socket.on("s", (data) => window.events.push(data));
</script>"""


@app.get("/csr-page")
def csr_page():
    """A page whose official Socket.IO client has its default options."""
    return CSR_PAGE


@app.get("/socket.io.min.js")
def socketio_js():
    path = (Path(__file__).parent.parent / "node_modules/socket.io-client/dist"
            / "socket.io.min.js")
    return path.read_bytes(), 200, {"Content-Type": "application/javascript"}


@app.get("/ready")
def ready():
    return ("ready", 200) if mgr.wait_ready(0) else ("starting", 503)


def register(namespace):
    @socketio.on("connect", namespace=namespace)
    def on_connect(auth=None):
        if auth and auth.get("user"):
            join_room(user(auth["user"]))

    @socketio.on("whoami", namespace=namespace)
    def on_whoami():
        return {"sid": request.sid, "server": LABEL,
                "recovered": mgr.is_recovered(request.sid, namespace)}

    @socketio.on("join", namespace=namespace)
    def on_join(msg):
        return _group(join_room, msg)

    @socketio.on("leave", namespace=namespace)
    def on_leave(msg):
        return _group(leave_room, msg)

    @socketio.on("emit", namespace=namespace)
    def on_emit(msg):
        """Emit as the test asks: {event, data, to, skip_sid, namespace,
        args (a list sent as several arguments), user (a user() target),
        size (data is that many bytes made here: a client may send at most
        1 MB), binary (those bytes as bytes, not str)}. A refused emit
        answers {"error": its class, "message": its text}."""
        data = tuple(msg["args"]) if "args" in msg else msg.get("data")
        if "size" in msg:
            data = b"b" * msg["size"] if msg.get("binary") else "s" * msg["size"]
        to = user(msg["user"]) if "user" in msg else msg.get("to")
        try:
            socketio.emit(msg["event"], data, to=to, skip_sid=msg.get("skip_sid"),
                          namespace=msg.get("namespace", namespace))
        except PayloadTooLargeError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        return "ok"

    @socketio.on("burst", namespace=namespace)
    def on_burst(msg):
        """Emit ``n`` numbered messages to a room without waiting for Kafka
        (each ``pad`` characters longer); emits the producer refuses
        (ProducerBufferFullError) are counted: ``{"refused": k}`` if any."""
        refused, pad = 0, ["p" * msg["pad"]] if msg.get("pad") else []
        for i in range(msg["n"]):
            try:
                socketio.emit("burst", [msg["tag"], i, *pad], to=msg["room"],
                              namespace=namespace)
            except ProducerBufferFullError:
                refused += 1
        return {"refused": refused} if refused else "ok"

    @socketio.on("call", namespace=namespace)
    def on_call(msg):
        try:
            return {"answer": socketio.call(msg["event"], msg.get("data"), to=msg["to"],
                                            namespace=msg.get("namespace", namespace),
                                            timeout=msg.get("timeout", 10))}
        except Exception as exc:  # the test reads the error
            return {"error": type(exc).__name__}

    @socketio.on("kick", namespace=namespace)
    def on_kick(msg):
        disconnect(msg["sid"], namespace=msg.get("namespace", namespace))
        return "ok"

    @socketio.on("close", namespace=namespace)
    def on_close(msg):
        close_room(msg["room"], namespace=msg.get("namespace", namespace))
        return "ok"

    @socketio.on("rooms", namespace=namespace)
    def on_rooms():
        return sorted(r for r in socketio.server.rooms(request.sid, namespace) if r != request.sid)


# -- the fault tests' stream (tests/produce_tracking.py) ---------------------
if os.environ.get("TRACK_PRODUCE") == "1":
    if KAFKA_CLIENT == "confluent":
        from flask_signalr_kafka.transport.clients.confluent_producer import (
            ConfluentProducer as KafkaProducer,
        )
    else:
        from kafka import KafkaProducer
    track(KafkaProducer)

stream = {}


@socketio.on("stream")
def on_stream(msg):
    """Emit to every kind of target (all, room, user, sid) ``rate`` times a
    second, and join ``sid`` to a new room every ``join_every`` s, until
    "stream_stop"."""
    stream.update(emitted=[], raised={}, joins=[], running=True)
    origin = msg["origin"]

    def emits():
        n = 0
        while stream["running"]:
            for ident, to, text in stream_round(msg, n):
                stream["emitted"].append(ident)
                try:
                    socketio.emit("s", text, to=to)
                except Exception as exc:  # await_produce: the failed emit raises
                    stream["raised"][ident] = type(exc).__name__
            n += 1
            socketio.sleep(1 / msg["rate"])

    def joins():
        n = 0
        while stream["running"]:
            room = f"j-{origin}-{n}"
            started = time.monotonic()
            try:
                socketio.server.enter_room(msg["sid"], room)
                outcome = "ok"
            except AckTimeoutError:
                outcome = "timeout"
            except Exception as exc:
                outcome = type(exc).__name__
            stream["joins"].append((room, outcome, time.monotonic() - started))
            n += 1
            socketio.sleep(msg["join_every"])

    stream["tasks"] = [socketio.start_background_task(emits),
                       socketio.start_background_task(joins)]
    return "ok"


@socketio.on("stream_stop")
def on_stream_stop(msg=None):
    """Stop the stream, wait for the producer, and report what happened."""
    stream["running"] = False
    for task in stream["tasks"]:
        task.join((msg or {}).get("timeout", 60))
    mgr.core.flush((msg or {}).get("timeout", 60))
    return {"emitted": stream["emitted"], "raised": stream["raised"], "joins": stream["joins"],
            "acked": sorted(produced["acked"]), "failed": sorted(produced["failed"])}


def _group(action, msg):
    try:
        action(msg["room"], sid=msg.get("sid"), namespace=msg.get("namespace"))
    except AckTimeoutError:
        return "timeout"
    return "ok"


for ns in ("/", "/chat"):
    register(ns)


# -- the fleet tests' calls (tests/integration/test_fleet.py) --------------------
server_events = []


def _note(*args):
    server_events.append(list(args))


def _slow(seconds_by_label):
    socketio.sleep(seconds_by_label.get(LABEL, 0))
    return LABEL


mgr.on_server_event("whoareyou", lambda *args: {"label": LABEL, "args": list(args)})
mgr.on_server_event("note", _note)
mgr.on_server_event("note", lambda *args: _note("/chat", *args), namespace="/chat")
mgr.on_server_event("slow", _slow)


@app.get("/server-events")
def get_server_events():
    return json.dumps(server_events), 200, {"Content-Type": "application/json"}


def _remote(s):
    return {"sid": s.sid, "namespace": s.namespace, "rooms": sorted(map(str, s.rooms)),
            "server_name": s.server_name}


@socketio.on("fleet")
def on_fleet(msg):
    """One fleet call as the test asks: {op, room or user, rooms, namespace,
    timeout, event, args, callback}; a FleetTimeoutError answers {"error",
    "responses", "missing", "elapsed"}."""
    op, ns = msg["op"], msg.get("namespace", "/")
    room = user(msg["user"]) if "user" in msg else msg.get("room")
    started = time.monotonic()
    try:
        if op == "fetch_sockets":
            found = mgr.fetch_sockets(room, namespace=ns, timeout=msg.get("timeout", 5.0))
            return {"sockets": [_remote(s) for s in found], "elapsed": time.monotonic() - started}
        if op == "server_count":
            return {"count": mgr.server_count()}
        if op in ("sockets_join", "sockets_leave"):
            getattr(mgr, op)(msg["rooms"], room, namespace=ns)
        elif op == "disconnect_sockets":
            mgr.disconnect_sockets(room, namespace=ns)
        elif op == "server_side_emit" and msg.get("callback"):
            got = []
            mgr.server_side_emit(msg["event"], *msg.get("args", []), namespace=ns,
                                 callback=got.append, timeout=msg.get("timeout", 5.0))
            return {"responses": got[0], "elapsed": time.monotonic() - started}
        elif op == "server_side_emit":
            mgr.server_side_emit(msg["event"], *msg.get("args", []), namespace=ns)
        else:
            return {"error": f"unknown op {op}"}
    except FleetTimeoutError as exc:
        responses = [_remote(r) if hasattr(r, "sid") else r for r in exc.responses]
        return {"error": type(exc).__name__, "responses": responses,
                "missing": sorted(exc.missing), "elapsed": time.monotonic() - started}
    return "ok"

if __name__ == "__main__":
    if os.environ.get("APP_SIGTERM") == "1":
        import sys

        def on_sigterm(signum, frame):
            mgr.close()
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_sigterm)
    elif os.environ.get("APP_SIGTERM") == "spawn":
        # gevent's documented pattern: the handler spawns a greenlet that
        # may block; it closes the manager, then ends the process at once.
        import gevent

        def shutdown():
            mgr.close()
            logging.getLogger("server_app").warning("closed at SIGTERM; exiting")
            os._exit(0)

        gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(shutdown))
    socketio.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_output=False,
                 allow_unsafe_werkzeug=True)
