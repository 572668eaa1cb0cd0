"""The fault tests' stream, in the test servers (tests/server_app.py,
tests/asgi_server_app.py): each numbered emit carries
``S|<origin>|<kind>|<n>``; with ``TRACK_PRODUCE=1`` the producer's own
futures say which records the broker acknowledged."""
from __future__ import annotations

import re

from flask_signalr_kafka import user

TAG = re.compile(rb"S\|([^|\"]+)\|(\w+)\|(\d+)")
#: The stream's records the broker acknowledged, or failed: ``kind:n``.
produced: dict[str, set[str]] = {"acked": set(), "failed": set()}


def track(producer_class) -> None:
    """Note the outcome of every stream record ``producer_class.send``
    writes from now on (kafka-python's ``KafkaProducer`` or our
    ``ConfluentProducer``: both return a future with callbacks)."""
    send = producer_class.send

    def tracked_send(self, topic, value=None, key=None, *args, **kwargs):
        future = send(self, topic, value, key, *args, **kwargs)
        found = TAG.search(value or b"")
        if found:
            ident = f"{found[2].decode()}:{found[3].decode()}"
            future.add_callback(lambda _: produced["acked"].add(ident))
            future.add_errback(lambda _: produced["failed"].add(ident))
        return future

    producer_class.send = tracked_send


def stream_round(msg: dict, n: int) -> list[tuple[str, object, str]]:
    """Round ``n`` of a "stream" request: ``(ident, to, text)`` of one emit
    to every kind of target (all, room, user, sid)."""
    targets = {"all": None, "room": msg["room"], "user": user(msg["user"]), "sid": msg["sid"]}
    return [(f"{kind}:{n}", to, f"S|{msg['origin']}|{kind}|{n}")
            for kind, to in targets.items()]
