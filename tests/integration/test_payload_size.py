"""Payload size: an emit too large for the producer or the topic raises
PayloadTooLargeError and reaches nobody, local or remote, for every kind of
target and for binary data; up to the limit it reaches everyone; raised
limits carry 2 MB end to end.

Payloads are made on the server (``size`` in the emit request): a Socket.IO
client may send a server at most 1 MB."""
import json
import re

import pytest

from testkit.harness import unique, wait_until

# The combinations besides the default one that run this module (make test).
pytestmark = [pytest.mark.confluent]

#: Kafka's defaults: the producer's max_request_size (1 MiB) is the smaller.
LIMIT = 1_048_576
#: A string this long fits one record with room for the record's own items.
FITS = LIMIT - 1_000
#: Binary data travels twice (base64 in the JSON frame, raw in MessagePack).
FITS_BINARY = 440_000
TOO_LARGE_BINARY = 460_000


@pytest.fixture
def members(fleet, connect):
    """One member of a room and a user on each server, and the targets of
    every kind, as the emit request names them."""
    room, name = unique("room"), unique("user")
    a, b = connect(fleet.a, user=name), connect(fleet.b, user=name)
    for client in (a, b):
        assert client.call("join", {"room": room}) == "ok"
    targets = {
        "broadcast": ({}, (a, b)),
        "room": ({"to": room}, (a, b)),
        "user": ({"user": name}, (a, b)),
        "local sid": ({"to": a.sid}, (a,)),
        "remote sid": ({"to": b.sid}, (b,)),
        "list": ({"to": [room, b.sid, a.sid]}, (a, b)),
    }
    return a, b, targets


def test_up_to_the_limit_everyone_gets_it(members):
    a, b, targets = members
    for kind, (target, reached) in targets.items():
        for binary, size in ((False, FITS), (True, FITS_BINARY)):
            event = unique("fits")
            answer = a.call("emit", {"event": event, "size": size, "binary": binary, **target})
            assert answer == "ok", (kind, answer)
            for client in reached:
                wait_until(lambda c=client, e=event: c.got(e), 20, what=f"{kind} {size}")
                (got,) = client.got(event)
                assert len(got[0]) == size and isinstance(got[0], bytes) == binary


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_too_large_reaches_nobody(members, binary):
    a, b, targets = members
    size = TOO_LARGE_BINARY if binary else LIMIT + 1
    big = unique("big")
    for kind, (target, reached) in targets.items():
        if kind == "local sid":
            continue  # never in Kafka (below)
        answer = a.call("emit", {"event": big, "size": size, "binary": binary, **target})
        assert isinstance(answer, dict), (kind, answer)
        assert answer["error"] == "PayloadTooLargeError"
        message = answer["message"]
        record = int(re.search(r"record of up to ([\d,]+) bytes", message)[1].replace(",", ""))
        assert record > LIMIT and f"limit of {LIMIT:,}" in message
        for setting in ("max_request_size", "max.message.bytes", "max_partition_fetch_bytes",
                        "fetch_max_bytes"):
            assert setting in message
        # What follows on the same path arrives; the big one never did.
        after = unique("after")
        assert a.call("emit", {"event": after, "data": 1, **target}) == "ok"
        for client in reached:
            client.wait_for(after, (1,))
    assert a.got(big) == [] and b.got(big) == []


def test_a_local_sid_is_not_limited_by_kafka(fleet, members):
    """An emit to a connection of the emitting server alone is never
    published (without connection state recovery): no Kafka limit applies."""
    if fleet.a.env.get("CONNECTION_STATE_RECOVERY") == "1":
        pytest.skip("with recovery, a local connection's events are in Kafka too")
    a, _, targets = members
    event = unique("local")
    assert a.call("emit", {"event": event, "size": LIMIT + 1, **targets["local sid"][0]}) == "ok"
    wait_until(lambda: a.got(event), 20, what="the local emit")


def test_the_topic_limit_is_learnt(new_fleet, connect):
    """A topic with a smaller max.message.bytes than the producer's limit
    sets the limit, read from the cluster at startup."""
    configs = json.dumps({"max.message.bytes": "300000"})
    a = new_fleet.client(new_fleet.server("A", TOPIC_CONFIGS=configs))
    b = new_fleet.client(new_fleet.server("B", TOPIC_CONFIGS=configs))
    answer = a.call("emit", {"event": "big", "size": 300_001, "to": b.sid})
    assert answer["error"] == "PayloadTooLargeError"
    assert "max.message.bytes 300,000" in answer["message"], answer
    assert a.call("emit", {"event": "fits", "size": 299_000, "to": b.sid}) == "ok"
    wait_until(lambda: b.got("fits"), 20, what="the emit just under the topic's limit")
    assert b.got("big") == []


def test_raised_limits_carry_two_megabytes(new_fleet):
    """The recipe for payloads above 1 MB (docs/guide/payloads.md), end to end."""
    limit = 3 * 1024 * 1024
    env = {"TOPIC_CONFIGS": json.dumps({"max.message.bytes": str(limit)}),
           "PRODUCER_JSON": json.dumps({"max_request_size": limit})}
    a = new_fleet.client(new_fleet.server("A", **env))
    b = new_fleet.client(new_fleet.server("B", **env))
    size = 2 * 1024 * 1024
    for target in ({}, {"to": b.sid}):
        event = unique("two-mb")
        assert a.call("emit", {"event": event, "size": size, **target}) == "ok"
        wait_until(lambda e=event: b.got(e), 30, what="2 MB on the other server")
        assert len(b.got(event)[0][0]) == size
