"""SignalR hub-protocol frames carried inside an Invocation's map."""

import base64
import json

import msgspec
import pytest

from flask_signalr_kafka.errors import MalformedRecord
from flask_signalr_kafka.wire import hub_protocol

SEND_HELLO_MSGPACK = bytes.fromhex("11 96 01 80 C0 A4 53 65 6E 64 91 A5 68 65 6C 6C 6F 90")
SEND_HELLO_JSON = b'{"type":1,"target":"Send","arguments":["hello"]}\x1e'


def test_messagepack_vector_encode():
    assert hub_protocol.encode_messagepack("Send", ["hello"]) == SEND_HELLO_MSGPACK


def test_messagepack_vector_decode():
    assert hub_protocol.decode_messagepack(SEND_HELLO_MSGPACK) == ("Send", ["hello"])


def test_json_frame_exact_bytes():
    assert hub_protocol.encode_json("Send", ["hello"]) == SEND_HELLO_JSON


def test_json_frame_decode():
    assert hub_protocol.decode_json(SEND_HELLO_JSON) == ("Send", ["hello"])


def test_json_frame_has_no_invocation_id_and_one_separator():
    frame = hub_protocol.encode_json("Send", ["a", 1])
    assert frame.endswith(b"\x1e") and frame.count(b"\x1e") == 1
    body = json.loads(frame[:-1])
    assert body == {"type": 1, "target": "Send", "arguments": ["a", 1]}
    assert "invocationId" not in body


def test_messagepack_frame_layout():
    frame = hub_protocol.encode_messagepack("Ev", [1, "x"])
    body = msgspec.msgpack.decode(frame[1:])
    assert frame[0] == len(frame) - 1
    assert body == [1, {}, None, "Ev", [1, "x"], []]


ROUND_TRIP_ARGS = [
    pytest.param([], id="no-arguments"),
    pytest.param(["hello"], id="one-string"),
    pytest.param([1, -7, 2.5, True, False, None], id="scalars"),
    pytest.param(["a", 2, ["b", 3], {"c": 4}], id="several"),
    pytest.param([{"a": [1, {"b": [None, {"c": "deep"}]}], "e": {}}], id="nested"),
    pytest.param(["héllo ✓ 日本語 🎉", {"ключ": "значение"}], id="unicode"),
    pytest.param([2**40, -(2**40)], id="large-ints"),
]


@pytest.mark.parametrize("arguments", ROUND_TRIP_ARGS)
def test_json_round_trip(arguments):
    frame = hub_protocol.encode_json("Target", arguments)
    assert hub_protocol.decode_json(frame) == ("Target", arguments)


@pytest.mark.parametrize("arguments", ROUND_TRIP_ARGS)
def test_messagepack_round_trip(arguments):
    frame = hub_protocol.encode_messagepack("Target", arguments)
    assert hub_protocol.decode_messagepack(frame) == ("Target", arguments)


@pytest.mark.parametrize("arguments", ROUND_TRIP_ARGS)
def test_frames_round_trip(arguments):
    frames = hub_protocol.encode_frames("Tä", arguments, ("json", "messagepack"))
    assert set(frames) == {"json", "messagepack"}
    assert hub_protocol.decode_frames(frames) == ("Tä", arguments)
    assert hub_protocol.decode_frames({"json": frames["json"]}) == ("Tä", arguments)


def test_encode_frames_only_the_requested_protocols():
    frames = hub_protocol.encode_frames("Send", ["hello"], ("json",))
    assert frames == {"json": SEND_HELLO_JSON}


def test_unicode_target_round_trip():
    for encode, decode in (
        (hub_protocol.encode_json, hub_protocol.decode_json),
        (hub_protocol.encode_messagepack, hub_protocol.decode_messagepack),
    ):
        assert decode(encode("événement✓", ["x"])) == ("événement✓", ["x"])


def test_messagepack_keeps_bytes():
    args = [b"\x00\xff\x1e", {"blob": b"\x01\x02"}, [b""]]
    frame = hub_protocol.encode_messagepack("Bin", args)
    target, decoded = hub_protocol.decode_messagepack(frame)
    assert target == "Bin"
    assert decoded == args
    assert type(decoded[0]) is bytes
    assert type(decoded[1]["blob"]) is bytes


def test_json_turns_bytes_into_base64_strings():
    data = b"\x00\xff\x1e"
    frame = hub_protocol.encode_json("Bin", [data, {"blob": b"\x01\x02"}])
    # The separator byte inside the data must not leak raw into the frame.
    assert frame.count(b"\x1e") == 1
    target, decoded = hub_protocol.decode_json(frame)
    assert target == "Bin"
    assert decoded == [base64.b64encode(data).decode(), {"blob": "AQI="}]


@pytest.mark.parametrize(
    "frame",
    [
        b'{"arguments":["x"],"target":"T","type":1}\x1e',
        b'{"target":"T","type":1,"arguments":["x"]}\x1e',
        b'{"type":1,"arguments":["x"],"target":"T"}\x1e',
        b'{ "target" : "T" , "arguments" : [ "x" ] , "type" : 1 , "headers" : {} }\x1e',
    ],
)
def test_decode_json_any_property_order(frame):
    assert hub_protocol.decode_json(frame) == ("T", ["x"])


def test_decode_json_missing_arguments():
    assert hub_protocol.decode_json(b'{"type":1,"target":"T"}\x1e') == ("T", [])


def test_decode_frames_prefers_messagepack():
    frames = {
        "json": hub_protocol.encode_json("FromJson", ["AAE="]),
        "messagepack": hub_protocol.encode_messagepack("FromMsgpack", [b"\x00\x01"]),
    }
    assert list(frames)[0] == "json"
    assert hub_protocol.decode_frames(frames) == ("FromMsgpack", [b"\x00\x01"])


def test_decode_frames_ignores_unknown_protocols():
    frames = {"p1": b"\x2a", "json": SEND_HELLO_JSON}
    assert hub_protocol.decode_frames(frames) == ("Send", ["hello"])


def test_long_messagepack_frame_has_multibyte_varint():
    arguments = ["x" * 200]
    frame = hub_protocol.encode_messagepack("Send", arguments)
    body = msgspec.msgpack.encode([1, {}, None, "Send", arguments, []])
    n = len(body)
    assert 128 <= n < 2**14
    assert frame == bytes([(n & 0x7F) | 0x80, n >> 7]) + body
    assert hub_protocol.decode_messagepack(frame) == ("Send", arguments)


def test_very_long_messagepack_frame_has_three_byte_varint():
    arguments = ["y" * 20000]
    frame = hub_protocol.encode_messagepack("Send", arguments)
    n = len(frame) - 3
    assert 2**14 <= n < 2**21
    assert frame[:3] == bytes([(n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14])
    assert hub_protocol.decode_messagepack(frame) == ("Send", arguments)


@pytest.mark.parametrize(("size", "prefix"), [(127, b"\x7f"), (128, b"\x80\x01")])
def test_decode_messagepack_at_the_varint_boundary(size, prefix):
    # [1, {}, nil, "T", [str8 of n bytes], []] is 10 + n bytes long.
    n = size - 10
    body = b"\x96\x01\x80\xc0\xa1T\x91" + b"\xd9" + bytes([n]) + b"z" * n + b"\x90"
    assert len(body) == size
    assert hub_protocol.decode_messagepack(prefix + body) == ("T", ["z" * n])


MALFORMED_JSON = [
    pytest.param(b"not json\x1e", id="not-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\x1e", id="separator-only"),
    pytest.param(b'{"type":1,"target":"T"', id="truncated"),
    pytest.param(b"\xff\xfe\x1e", id="not-utf8"),
    pytest.param(b'[1,"T",[]]\x1e', id="array-not-object"),
    pytest.param(b'"text"\x1e', id="string-not-object"),
    pytest.param(b'{"type":3,"target":"T","arguments":[]}\x1e', id="type-3"),
    pytest.param(b'{"target":"T","arguments":[]}\x1e', id="no-type"),
    pytest.param(b'{"type":"1","target":"T","arguments":[]}\x1e', id="type-str"),
    pytest.param(b'{"type":1,"target":5,"arguments":[]}\x1e', id="target-int"),
    pytest.param(b'{"type":1,"target":null,"arguments":[]}\x1e', id="target-null"),
    pytest.param(b'{"type":1,"arguments":[]}\x1e', id="no-target"),
    pytest.param(b'{"type":1,"target":"T","arguments":"x"}\x1e', id="arguments-str"),
    pytest.param(b'{"type":1,"target":"T","arguments":null}\x1e', id="arguments-null"),
]


@pytest.mark.parametrize("frame", MALFORMED_JSON)
def test_malformed_json_frames_raise(frame):
    with pytest.raises(MalformedRecord):
        hub_protocol.decode_json(frame)
    with pytest.raises(MalformedRecord):
        hub_protocol.decode_frames({"json": frame})


def _mp_frame(message) -> bytes:
    body = msgspec.msgpack.encode(message)
    assert len(body) < 128
    return bytes([len(body)]) + body


MALFORMED_MSGPACK = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x80", id="truncated-varint"),
    pytest.param(b"\xff\xff\xff\xff\xff\x01", id="varint-too-long"),
    pytest.param(SEND_HELLO_MSGPACK[:-1], id="shorter-than-length"),
    pytest.param(b"\x11", id="length-only"),
    pytest.param(b"\x01\xc1", id="invalid-opcode"),
    pytest.param(b"\x02\x91", id="truncated-body"),
    pytest.param(_mp_frame(1), id="not-array"),
    pytest.param(_mp_frame([1, {}, None, "T"]), id="short-array"),
    pytest.param(_mp_frame([3, {}, None, "T", [], []]), id="type-3"),
    pytest.param(_mp_frame([1, {}, None, 5, [], []]), id="target-int"),
    pytest.param(_mp_frame([1, {}, None, b"T", [], []]), id="target-bin"),
    pytest.param(_mp_frame([1, {}, None, "T", "args", []]), id="arguments-str"),
]


@pytest.mark.parametrize("frame", MALFORMED_MSGPACK)
def test_malformed_messagepack_frames_raise(frame):
    with pytest.raises(MalformedRecord):
        hub_protocol.decode_messagepack(frame)
    with pytest.raises(MalformedRecord):
        hub_protocol.decode_frames({"messagepack": frame, "json": SEND_HELLO_JSON})


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param({}, id="empty-map"),
        pytest.param({"p1": b"\x2a", "p2": b"\x2a"}, id="unknown-protocols"),
        pytest.param({"JSON": SEND_HELLO_JSON}, id="wrong-case"),
    ],
)
def test_decode_frames_without_a_known_protocol_raises(frames):
    with pytest.raises(MalformedRecord):
        hub_protocol.decode_frames(frames)


@pytest.mark.parametrize(
    ("decode", "frame"),
    [
        pytest.param(
            hub_protocol.decode_json,
            b'{"type":true,"target":"T","arguments":[]}\x1e',
            id="json-true",
        ),
        pytest.param(
            hub_protocol.decode_json,
            b'{"type":1.0,"target":"T","arguments":[]}\x1e',
            id="json-float",
        ),
        pytest.param(
            hub_protocol.decode_messagepack,
            _mp_frame([True, {}, None, "T", [], []]),
            id="msgpack-true",
        ),
        pytest.param(
            hub_protocol.decode_messagepack,
            _mp_frame([1.0, {}, None, "T", [], []]),
            id="msgpack-float",
        ),
    ],
)
def test_non_integer_frame_type_is_rejected(decode, frame):
    with pytest.raises(MalformedRecord):
        decode(frame)
