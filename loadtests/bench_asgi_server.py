"""One asyncio dyno of the benchmark: bench_server.py's twin on
python-socketio's AsyncServer under uvicorn, with the same control API
(/ready, /sids, /burst, /received).

BACKEND: ``ours-async`` (flask_signalr_kafka.AsyncKafkaManager) or
``async-redis`` (python-socketio's AsyncRedisManager). Env: PORT, BOOTSTRAP,
PREFIX, REDIS_URL, FETCH_MAX_WAIT_MS (ours only).
"""
import asyncio
import json
import os
import time

import socketio
import uvicorn

BACKEND = os.environ["BACKEND"]
ROOM = "bench"


def make_manager():
    if BACKEND == "ours-async":
        from flask_signalr_kafka import AsyncKafkaManager, KafkaTopicConfig

        consumer = {}
        if os.environ.get("FETCH_MAX_WAIT_MS"):
            consumer["fetch_max_wait_ms"] = int(os.environ["FETCH_MAX_WAIT_MS"])
        return AsyncKafkaManager(bootstrap_servers=os.environ["BOOTSTRAP"],
                                 consumer_config=consumer,
                                 topic_config=KafkaTopicConfig(prefix=os.environ["PREFIX"]))
    if BACKEND == "async-redis":
        return socketio.AsyncRedisManager(os.environ["REDIS_URL"], channel=os.environ["PREFIX"])
    raise SystemExit(f"unknown BACKEND {BACKEND!r}")


mgr = make_manager()
sio = socketio.AsyncServer(client_manager=mgr, async_mode="asgi")


@sio.on("connect")
async def on_connect(sid, environ, auth=None):
    await sio.enter_room(sid, ROOM)


async def burst(target, n, rate):
    """Emit ``n`` messages ``[seq, send time]`` to ``target``, at ``rate``
    per second (0: as fast as the server goes)."""
    to = None if target == "all" else target
    started = time.time()
    for seq in range(n):
        if rate:
            delay = started + seq / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        elif seq % 64 == 0:
            await asyncio.sleep(0)  # let the loop deliver what came in
        await sio.emit("m", (seq, time.time()), to=to)
    return time.time() - started


async def _body(receive) -> dict:
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            return json.loads(body or b"{}")


async def control(scope, receive, send):
    if scope["type"] != "http":
        return
    path, status, out = scope["path"], 200, None
    if path == "/ready":
        ready = await mgr.wait_ready(0) if hasattr(mgr, "wait_ready") else True
        status, out = (200, "ready") if ready else (503, "starting")
    elif path == "/sids":
        out = [sid for sid, _ in mgr.get_participants("/", ROOM)]
    elif path == "/burst":
        body = await _body(receive)
        out = {"seconds": await burst(body["target"], body["n"], body.get("rate", 0))}
    elif path == "/received":
        out = {"bytes": 0}  # not counted under asyncio
    else:
        status, out = 404, ""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(out).encode()})


app = socketio.ASGIApp(sio, control)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning",
                access_log=False)
