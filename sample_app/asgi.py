"""The chat of sample_app/app.py on python-socketio's AsyncServer, served as
an ASGI app by uvicorn, with the AsyncKafkaManager:

    uvicorn sample_app.asgi:app --port 5100

It shares the chat's topics with the Flask-SocketIO dynos: one fleet, the
same page, rooms, private messages and broadcasts crossing between the two
kinds of server (``make demo-asgi`` runs two gevent dynos and this one).
"""
import logging
import os
import socket
from pathlib import Path

import jinja2
import socketio

from flask_signalr_kafka import AckTimeoutError, AsyncKafkaManager, KafkaTopicConfig, user

logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
logging.getLogger("kafka").setLevel(logging.WARNING)

HERE = Path(__file__).parent
TOPIC_PREFIX = os.environ.get("CHAT_TOPIC_PREFIX", "chat")
DYNO = os.environ.get("DYNO") or f"{socket.gethostname()}:{os.environ.get('PORT', '5100')} (asgi)"
SOCKETIO_JS = HERE.parent / "node_modules/socket.io-client/dist/socket.io.min.js"

# KAFKA_URL and friends (Heroku's config vars), else the local broker.
mgr = AsyncKafkaManager.from_env(
    topic_config=KafkaTopicConfig(prefix=TOPIC_PREFIX),
    ack_timeout=10,
    connection_state_recovery=True,  # as the gevent dynos: a client may come back here
    consumer_config={"fetch_max_wait_ms": 20}
    if os.environ.get("BROKER_ENGINE") == "tansu" else None,
)
sio = socketio.AsyncServer(async_mode="asgi", client_manager=mgr)


def _url_for(endpoint, filename=None):
    """The two URLs the Flask template asks for."""
    return f"/static/{filename}" if endpoint == "static" else "/socket.io.min.js"


PAGE = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                          autoescape=True).get_template("index.html")


async def post(sid, kind, text, **fields):
    """A chat line: who said it, on which dyno it was sent."""
    session = await sio.get_session(sid)
    return {"kind": kind, "from": session.get("name", "?"), "text": text, "dyno": DYNO,
            **fields}


@sio.on("connect")
async def on_connect(sid, environ, auth):
    name = (auth or {}).get("name", "").strip()
    if not name:
        return False  # refuse: the page always sends a name
    await sio.save_session(sid, {"name": name})
    await sio.enter_room(sid, user(name))  # to=user(name) reaches this tab, on any dyno
    await sio.emit("welcome", {"sid": sid, "name": name, "dyno": DYNO,
                               "recovered": mgr.is_recovered(sid)}, to=sid)


@sio.on("join")
async def on_join(sid, msg):
    await sio.enter_room(sid, msg["room"])
    await sio.emit("line", await post(sid, "join", f"joined {msg['room']}", room=msg["room"]),
                   to=msg["room"])


@sio.on("leave")
async def on_leave(sid, msg):
    await sio.emit("line", await post(sid, "leave", f"left {msg['room']}", room=msg["room"]),
                   to=msg["room"])
    await sio.leave_room(sid, msg["room"])


@sio.on("say")
async def on_say(sid, msg):
    await sio.emit("line", await post(sid, "room", msg["text"], room=msg["room"]),
                   to=msg["room"])


@sio.on("whisper")
async def on_whisper(sid, msg):
    line = await post(sid, "private", msg["text"], to=msg["to"])
    me = (await sio.get_session(sid)).get("name", "?")
    # Every tab of the recipient, and the sender's own tabs, wherever they are.
    await sio.emit("line", line, to=[user(msg["to"]), user(me)])


@sio.on("shout")
async def on_shout(sid, msg):
    await sio.emit("line", await post(sid, "all", msg["text"]))


@sio.on("pull")
async def on_pull(sid, msg):
    """Put another connection (on any dyno) into a room: a remote join,
    awaited without blocking this server."""
    try:
        await sio.enter_room(msg["sid"], msg["room"])
    except AckTimeoutError:
        return {"ok": False, "error": f"no dyno holds {msg['sid']}"}
    await sio.emit("line", await post(sid, "join", f"pulled {msg['sid']} into {msg['room']}",
                                      room=msg["room"]), to=msg["room"])
    return {"ok": True}


async def pages(scope, receive, send):
    """The chat page, the Socket.IO client, /healthz."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    status, kind, body = 404, b"text/plain", b"not found"
    if path == "/":
        status, kind = 200, b"text/html; charset=utf-8"
        body = PAGE.render(dyno=DYNO, url_for=_url_for).encode()
    elif path == "/socket.io.min.js" and SOCKETIO_JS.exists():
        status, kind, body = 200, b"application/javascript", SOCKETIO_JS.read_bytes()
    elif path == "/healthz":
        ok = mgr.health()["ok"]
        status, kind, body = (200 if ok else 503), b"text/plain", b"ok" if ok else b"unhealthy"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind)]})
    await send({"type": "http.response.body", "body": body})


async def on_shutdown():
    await mgr.close()  # flush what is queued, stop consuming


app = socketio.ASGIApp(
    sio, other_asgi_app=pages, on_shutdown=on_shutdown,
    static_files={"/static": str(HERE / "static")},
)
