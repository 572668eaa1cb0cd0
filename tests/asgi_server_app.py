"""tests/server_app.py's twin for asyncio: a ``socketio.AsyncServer`` with
the AsyncKafkaManager, served by uvicorn as an ASGI app
(``uvicorn asgi_server_app:app``), driven by the integration tests through
the same Socket.IO events (whoami, join, leave, emit, call, kick, close,
rooms).

Configured from the environment: BOOTSTRAP, PREFIX, and optional
SERVER_LABEL, ACK_TIMEOUT, CONNECT_TIMEOUT, FETCH_MAX_WAIT_MS, LINGER_MS, HOME_PARTITIONS=0,
CONNECTION_STATE_RECOVERY=1 and MAX_DISCONNECTION (seconds), PING_INTERVAL and
PING_TIMEOUT (seconds), PRODUCER_JSON and TRACK_PRODUCE=1, as tests/server_app.py.
HTTP: GET /ready, GET /stats, GET /healthz, POST /close (closes the manager
and reports the threads and tasks still running).
"""
import asyncio
import json
import logging
import os
import threading
import time

import socketio
from produce_tracking import produced, stream_round, track

from flask_signalr_kafka import (
    AckTimeoutError,
    AsyncKafkaManager,
    ConnectionStateRecovery,
    FleetTimeoutError,
    KafkaTopicConfig,
    ProducerBufferFullError,
    user,
)

logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"),
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")

THREADS_AT_START = {t.ident for t in threading.enumerate()}
mgr = AsyncKafkaManager(
    bootstrap_servers=os.environ["BOOTSTRAP"].split(","),
    topic_config=KafkaTopicConfig(prefix=os.environ.get("PREFIX", "")),
    ack_timeout=float(os.environ.get("ACK_TIMEOUT", "30")),
    connect_timeout=float(os.environ.get("CONNECT_TIMEOUT", "10")),
    consumer_config=({"fetch_max_wait_ms": int(os.environ["FETCH_MAX_WAIT_MS"])}
                     if "FETCH_MAX_WAIT_MS" in os.environ else {}),
    producer_config={"linger_ms": int(os.environ.get("LINGER_MS", "1")),
                     **json.loads(os.environ.get("PRODUCER_JSON", "{}"))},
    home_partitions=os.environ.get("HOME_PARTITIONS", "1") != "0",
    connection_state_recovery=ConnectionStateRecovery(
        max_disconnection_duration=float(os.environ.get("MAX_DISCONNECTION", "120")),
    ) if os.environ.get("CONNECTION_STATE_RECOVERY") == "1" else False,
)
sio = socketio.AsyncServer(async_mode="asgi", client_manager=mgr, cors_allowed_origins="*",
                           ping_interval=float(os.environ.get("PING_INTERVAL", "25")),
                           ping_timeout=float(os.environ.get("PING_TIMEOUT", "20")))
LABEL = os.environ.get("SERVER_LABEL", mgr.server_name)


def register(namespace):
    @sio.on("connect", namespace=namespace)
    async def on_connect(sid, environ, auth=None):
        if auth and auth.get("user"):
            await sio.enter_room(sid, user(auth["user"]), namespace=namespace)

    @sio.on("whoami", namespace=namespace)
    async def on_whoami(sid, *_):
        return {"sid": sid, "server": LABEL, "recovered": mgr.is_recovered(sid, namespace)}

    @sio.on("join", namespace=namespace)
    async def on_join(sid, msg):
        return await _group(sio.enter_room, sid, msg, namespace)

    @sio.on("leave", namespace=namespace)
    async def on_leave(sid, msg):
        return await _group(sio.leave_room, sid, msg, namespace)

    @sio.on("emit", namespace=namespace)
    async def on_emit(sid, msg):
        data = tuple(msg["args"]) if "args" in msg else msg.get("data")
        to = user(msg["user"]) if "user" in msg else msg.get("to")
        await sio.emit(msg["event"], data, to=to, skip_sid=msg.get("skip_sid"),
                       namespace=msg.get("namespace", namespace))
        return "ok"

    @sio.on("call", namespace=namespace)
    async def on_call(sid, msg):
        try:
            return {"answer": await sio.call(msg["event"], msg.get("data"), to=msg["to"],
                                             namespace=msg.get("namespace", namespace),
                                             timeout=msg.get("timeout", 10))}
        except Exception as exc:  # the test reads the error
            return {"error": type(exc).__name__}

    @sio.on("kick", namespace=namespace)
    async def on_kick(sid, msg):
        await sio.disconnect(msg["sid"], namespace=msg.get("namespace", namespace))
        return "ok"

    @sio.on("close", namespace=namespace)
    async def on_close(sid, msg):
        await sio.close_room(msg["room"], namespace=msg.get("namespace", namespace))
        return "ok"

    @sio.on("rooms", namespace=namespace)
    async def on_rooms(sid, *_):
        return sorted(r for r in sio.rooms(sid, namespace) if r != sid)


async def _group(action, sid, msg, namespace):
    try:
        await action(msg.get("sid") or sid, msg["room"],
                     namespace=msg.get("namespace") or namespace)
    except AckTimeoutError:
        return "timeout"
    return "ok"


for ns in ("/", "/chat"):
    register(ns)


# -- the fleet calls (tests/integration/test_asgi.py), as tests/server_app.py's
async def _whoareyou(*args):
    await asyncio.sleep(0)  # a coroutine handler runs on the loop
    return {"label": LABEL, "args": list(args)}

mgr.on_server_event("whoareyou", _whoareyou)


@sio.on("fleet")
async def on_fleet(sid, msg):
    """{op: fetch_sockets | server_count | sockets_join | server_side_emit,
    room, rooms, event, args}."""
    op, room = msg["op"], msg.get("room")
    try:
        if op == "fetch_sockets":
            found = await mgr.fetch_sockets(room, timeout=msg.get("timeout", 5.0))
            return {"sockets": [{"sid": s.sid, "rooms": sorted(map(str, s.rooms)),
                                 "server_name": s.server_name} for s in found]}
        if op == "server_count":
            return {"count": mgr.server_count()}
        if op == "sockets_join":
            await mgr.sockets_join(msg["rooms"], room)
            return "ok"
        if op == "server_side_emit":
            got = []
            await mgr.server_side_emit(msg["event"], *msg.get("args", []), callback=got.append,
                                       timeout=msg.get("timeout", 5.0))
            return {"responses": got[0]}
    except FleetTimeoutError as exc:
        return {"error": type(exc).__name__, "responses": len(exc.responses)}
    return {"error": f"unknown op {op}"}


# -- the fault tests' stream (tests/integration/faults.py, tests/produce_tracking.py)
if os.environ.get("TRACK_PRODUCE") == "1":
    from kafka import KafkaProducer

    track(KafkaProducer)

stream = {}


@sio.on("stream")
async def on_stream(sid, msg):
    """Emit to every kind of target ``rate`` times a second and join
    ``sid`` to a new room every ``join_every`` s, until "stream_stop"."""
    stream.update(emitted=[], raised={}, joins=[], running=True)
    origin = msg["origin"]

    async def emits():
        n = 0
        while stream["running"]:
            for ident, to, text in stream_round(msg, n):
                stream["emitted"].append(ident)
                try:
                    await sio.emit("s", text, to=to)
                except Exception as exc:  # refused (ProducerBufferFullError)
                    stream["raised"][ident] = type(exc).__name__
            n += 1
            await asyncio.sleep(1 / msg["rate"])

    async def joins():
        n = 0
        while stream["running"]:
            room = f"j-{origin}-{n}"
            started = time.monotonic()
            try:
                await sio.enter_room(msg["sid"], room)
                outcome = "ok"
            except AckTimeoutError:
                outcome = "timeout"
            except Exception as exc:
                outcome = type(exc).__name__
            stream["joins"].append((room, outcome, time.monotonic() - started))
            n += 1
            await asyncio.sleep(msg["join_every"])

    stream["tasks"] = [asyncio.ensure_future(emits()), asyncio.ensure_future(joins())]
    return "ok"


@sio.on("stream_stop")
async def on_stream_stop(sid, msg=None):
    timeout = (msg or {}).get("timeout", 60)
    stream["running"] = False
    await asyncio.wait(stream["tasks"], timeout=timeout)
    await asyncio.get_running_loop().run_in_executor(None, mgr.core.flush, timeout)
    return {"emitted": stream["emitted"], "raised": stream["raised"], "joins": stream["joins"],
            "acked": sorted(produced["acked"]), "failed": sorted(produced["failed"])}


@sio.on("burst")
async def on_burst(sid, msg):
    """As tests/server_app.py's: ``n`` emits to a room; refusals counted."""
    refused, pad = 0, ["p" * msg["pad"]] if msg.get("pad") else []
    for i in range(msg["n"]):
        try:
            await sio.emit("burst", [msg["tag"], i, *pad], to=msg["room"])
        except ProducerBufferFullError:
            refused += 1
        if i % 64 == 63:
            await asyncio.sleep(0)  # a loop of emits that never waits holds the loop
    return {"refused": refused} if refused else "ok"


async def http(scope, receive, send):
    """/ready, /stats, /healthz and /close."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    status, body = 404, {"error": "not found"}
    if path == "/ready":
        ready = await mgr.wait_ready(0)
        status, body = (200, "ready") if ready else (503, "starting")
    elif path == "/stats":
        status, body = 200, mgr.stats()
    elif path == "/healthz":
        body = mgr.health()
        status = 200 if body["ok"] else 503
    elif path == "/close" and scope["method"] == "POST":
        await mgr.close()
        await asyncio.sleep(0.2)  # let the pool's threads see their shutdown
        threads = [t.name for t in threading.enumerate()
                   if t.ident not in THREADS_AT_START and t.is_alive()]
        tasks = [t.get_name() for t in asyncio.all_tasks() if "kafka" in t.get_name()]
        status, body = 200, {"threads": threads, "tasks": tasks}
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


async def on_shutdown():
    await mgr.close()


app = socketio.ASGIApp(sio, other_asgi_app=http, on_shutdown=on_shutdown)
