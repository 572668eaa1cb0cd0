"""How emit targets map to a backplane topic and key."""

import engineio
import pytest

from flask_signalr_kafka.wire import addressing
from flask_signalr_kafka.wire.addressing import (
    SEND_ALL,
    SEND_CONN,
    SEND_GROUP,
    SEND_USER,
    make_sid,
    route,
    user,
)

B64_20 = "AbCdEfGhIjKlMnOp-_09"
assert len(B64_20) == 20


def test_user_room_name():
    assert user("alice") == "user:alice"
    assert user("Alice Smith@example.com") == "user:Alice Smith@example.com"
    assert user("ünï") == "user:ünï"


def test_user_is_exported_from_the_package():
    import flask_signalr_kafka

    assert flask_signalr_kafka.user is user


@pytest.mark.parametrize("bad", ["", None, 42, b"alice", ["alice"], ("a",), 1.5])
def test_bad_user_ids_raise_type_error(bad):
    with pytest.raises(TypeError):
        user(bad)


def test_route_none_is_send_all():
    assert route(None) == (SEND_ALL, None)
    assert SEND_ALL == "send-all"


@pytest.mark.parametrize("uid", ["alice", "42", "a:b:c", "user:nested", " spaced ", "日本"])
def test_route_user_room(uid):
    assert route(user(uid)) == (SEND_USER, uid)
    assert SEND_USER == "send-user"


def test_route_sid_shaped_target():
    sid = "sid~" + B64_20
    assert route(sid) == (SEND_CONN, sid)
    assert SEND_CONN == "send-conn"


def test_route_sids_made_from_engineio_ids():
    eio = engineio.Server()
    for _ in range(20):
        sid = make_sid(eio.generate_id())
        assert addressing.looks_like_sid(sid)
        assert route(sid) == (SEND_CONN, sid)


@pytest.mark.parametrize(
    "room",
    [
        "lobby",
        "room with spaces",
        "",
        B64_20,  # 20 chars of base64 without the prefix
        "1fyhVr3eftjOS37lAAAA",
        "sid~" + B64_20[:19],  # one short
        "sid~" + B64_20 + "x",  # one long
        "sid~" + B64_20 + "\n",
        "sid~" + B64_20[:19] + "=",  # not URL-safe base64
        "sid~" + B64_20[:19] + "/",
        "sid~" + B64_20[:19] + "+",
        "SID~" + B64_20,
        "sid-" + B64_20,
        "xsid~" + B64_20,
        " sid~" + B64_20,
        "users:alice",
        "User:alice",
    ],
)
def test_route_ordinary_rooms(room):
    assert route(room) == (SEND_GROUP, room)
    assert SEND_GROUP == "send-group"
