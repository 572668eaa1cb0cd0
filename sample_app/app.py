"""A multi-dyno chat on Flask-SocketIO and the Kafka backplane.

Run three dynos with `make demo`, open two of them in a browser, and watch
rooms, private messages and broadcasts cross from one dyno to another.
"""
import os

# gevent (the default) or threading: Flask-SocketIO's two async modes, with
# the same backplane under both.
ASYNC_MODE = os.environ.get("ASYNC_MODE", "gevent")
if ASYNC_MODE == "gevent":
    from gevent import monkey

    monkey.patch_all()  # first: before Flask, Flask-SocketIO or kafka are imported

import logging  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

from flask import Flask, abort, render_template, request, send_file  # noqa: E402
from flask_socketio import SocketIO, emit, join_room, leave_room  # noqa: E402

from flask_signalr_kafka import (  # noqa: E402
    AckTimeoutError,
    FleetTimeoutError,
    KafkaManager,
    KafkaTopicConfig,
    user,
)
from flask_signalr_kafka.observability.endpoints import add_routes  # noqa: E402

# The backplane's own lines (drains, recoveries, skipped records); LOG_LEVEL
# overrides. kafka-python's chatter stays at warnings.
logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
logging.getLogger("kafka").setLevel(logging.WARNING)

TOPIC_PREFIX = os.environ.get("CHAT_TOPIC_PREFIX", "chat")
# Heroku names its dynos (web.1, web.2, ...); locally we go by the port.
DYNO = os.environ.get("DYNO") or f"{socket.gethostname()}:{os.environ.get('PORT', '5000')}"
SOCKETIO_JS = Path(__file__).parent.parent / "node_modules/socket.io-client/dist/socket.io.min.js"

# KAFKA_URL and friends (Heroku's config vars), else the local broker.
# KAFKA_CLIENT=confluent runs the manager on confluent-kafka (librdkafka).
KAFKA_CLIENT = os.environ.get("KAFKA_CLIENT", "kafka-python")
mgr = KafkaManager.from_env(
    client=KAFKA_CLIENT,
    topic_config=KafkaTopicConfig(prefix=TOPIC_PREFIX),
    ack_timeout=10,
    # A tab whose dyno restarts (a deploy, a crash) or whose network drops
    # comes back with its connection id, rooms and every line it missed.
    connection_state_recovery=True,
    # Tansu workaround: it answers a fetch only at its deadline, keep it short.
    consumer_config={"fetch.wait.max.ms" if KAFKA_CLIENT == "confluent"
                     else "fetch_max_wait_ms": 20}
    if os.environ.get("BROKER_ENGINE") == "tansu" else None,
)
app = Flask(__name__)
socketio = SocketIO(app, client_manager=mgr, async_mode=ASYNC_MODE)
# /healthz (503 when this dyno cannot deliver) and, with the `metrics` extra
# installed, /metrics for Prometheus. See docs/operating.md.
add_routes(app, mgr)


@app.get("/")
def index():
    return render_template("index.html", dyno=DYNO)


@app.get("/socket.io.min.js")
def socketio_js():
    # Installed from the npm registry by `make demo` (package.json).
    if not SOCKETIO_JS.exists():
        abort(500, "socket.io-client is not installed: run `npm install` (or `make demo`)")
    return send_file(SOCKETIO_JS, mimetype="application/javascript")


def name():
    return socketio.server.get_session(request.sid).get("name", "?")


def post(kind, text, **fields):
    """A chat line: who said it, on which dyno it was sent."""
    return {"kind": kind, "from": name(), "text": text, "dyno": DYNO, **fields}


@socketio.on("connect")
def on_connect(auth):
    user_name = (auth or {}).get("name", "").strip()
    if not user_name:
        return False  # refuse: the page always sends a name
    socketio.server.save_session(request.sid, {"name": user_name})
    join_room(user(user_name))  # to=user(name) now reaches this tab, on any dyno
    emit("welcome", {"sid": request.sid, "name": user_name, "dyno": DYNO,
                     "recovered": mgr.is_recovered(request.sid)})


@socketio.on("join")
def on_join(msg):
    join_room(msg["room"])
    emit("line", post("join", f"joined {msg['room']}", room=msg["room"]), to=msg["room"])


@socketio.on("leave")
def on_leave(msg):
    emit("line", post("leave", f"left {msg['room']}", room=msg["room"]), to=msg["room"])
    leave_room(msg["room"])


@socketio.on("say")
def on_say(msg):
    emit("line", post("room", msg["text"], room=msg["room"]), to=msg["room"])


@socketio.on("whisper")
def on_whisper(msg):
    line = post("private", msg["text"], to=msg["to"])
    # Every tab of the recipient, and the sender's own tabs, wherever they are.
    emit("line", line, to=[user(msg["to"]), user(name())])


@socketio.on("shout")
def on_shout(msg):
    emit("line", post("all", msg["text"]), broadcast=True)


@socketio.on("pull")
def on_pull(msg):
    """Put another connection (on any dyno) into a room: a remote join."""
    try:
        join_room(msg["room"], sid=msg["sid"])
    except AckTimeoutError:
        return {"ok": False, "error": f"no dyno holds {msg['sid']}"}
    emit("line", post("join", f"pulled {msg['sid']} into {msg['room']}", room=msg["room"]),
         to=msg["room"])
    return {"ok": True}


# -- who is here: the fleet as a whole ----------------------------------------
# Each dyno answers "dyno" with its server name and its label, so a list of
# connections from every dyno can say where each one is.
mgr.on_server_event("dyno", lambda: [mgr.server_name, DYNO])


@socketio.on("who")
def on_who(msg):
    """Who is in the room, on every dyno, and how many dynos are alive."""
    dynos, partial = {mgr.server_name: DYNO}, False
    try:
        found = mgr.fetch_sockets(msg["room"], timeout=3)
    except FleetTimeoutError as exc:  # a dyno died mid-way: show what came
        found, partial = exc.responses, True
    try:
        mgr.server_side_emit("dyno", callback=dynos.update, timeout=3)
    except FleetTimeoutError as exc:
        dynos.update(exc.responses)
        partial = True
    members = [{"sid": s.sid, "dyno": dynos.get(s.server_name, s.server_name[-6:]),
                "name": next((r[len("user:"):] for r in s.rooms
                              if isinstance(r, str) and r.startswith("user:")), "?")}
               for s in found]
    return {"room": msg["room"], "members": sorted(members, key=lambda m: m["name"]),
            "dynos": mgr.server_count(), "partial": partial}


if __name__ == "__main__":
    socketio.run(app, host="0.0.0.0", port=int(os.environ.get("PORT", "5000")))
