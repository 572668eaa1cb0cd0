"""Byte-exact tests of the backplane records against docs/wire-format.md."""

import msgspec
import pytest

from flask_signalr_kafka.errors import MalformedRecord
from flask_signalr_kafka.wire import hub_protocol, records


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def mp(obj) -> bytes:
    """Encode with msgspec directly (a writer independent of records.py)."""
    return msgspec.msgpack.encode(obj)


# -- test vectors of docs/wire-format.md ------------------------------------

ACK_VECTORS = [
    (0, "91 00"),
    (42, "91 2A"),
    (180, "91 CC B4"),
    (384, "91 CD 01 80"),
    (70000, "91 CE 00 01 11 70"),
]

GROUP_VECTORS = [
    (records.ADD, "95 2A A1 53 01 A1 47 A1 43"),
    (records.REMOVE, "95 2A A1 53 02 A1 47 A1 43"),
]

_FRAMES = {"p1": b"\x2a", "p2": b"\x2a"}
INVOCATION_VECTORS = [
    ([], "92 90 82 A2 70 31 C4 01 2A A2 70 32 C4 01 2A"),
    (["a"], "92 91 A1 61 82 A2 70 31 C4 01 2A A2 70 32 C4 01 2A"),
    (
        ["a", "b", "c", "d", "e", "f"],
        "92 96 A1 61 A1 62 A1 63 A1 64 A1 65 A1 66 82 A2 70 31 C4 01 2A A2 70 32 C4 01 2A",
    ),
]


@pytest.mark.parametrize(("ack_id", "hexval"), ACK_VECTORS)
def test_ack_encode(ack_id, hexval):
    assert records.encode(records.Ack(ack_id)) == h(hexval)


@pytest.mark.parametrize(("ack_id", "hexval"), ACK_VECTORS)
def test_ack_decode(ack_id, hexval):
    ack = records.decode(h(hexval), records.AckExt)
    assert isinstance(ack, records.AckExt)
    assert ack.id == ack_id
    assert ack.args is None


@pytest.mark.parametrize(("action", "hexval"), GROUP_VECTORS)
def test_group_command_encode(action, hexval):
    assert records.encode(records.GroupCommand(42, "S", action, "G", "C")) == h(hexval)


@pytest.mark.parametrize(("action", "hexval"), GROUP_VECTORS)
def test_group_command_decode(action, hexval):
    cmd = records.decode(h(hexval), records.GroupCommandExt)
    assert isinstance(cmd, records.GroupCommandExt)
    assert (cmd.id, cmd.server_name, cmd.action, cmd.group, cmd.connection_id) == (
        42,
        "S",
        action,
        "G",
        "C",
    )
    assert cmd.namespace == "/"
    assert cmd.op == records.OP_GROUP == 0


@pytest.mark.parametrize(("excluded", "hexval"), INVOCATION_VECTORS)
def test_invocation_encode(excluded, hexval):
    assert records.encode(records.Invocation(excluded, dict(_FRAMES))) == h(hexval)


@pytest.mark.parametrize(("excluded", "hexval"), INVOCATION_VECTORS)
def test_invocation_decode(excluded, hexval):
    inv = records.decode(h(hexval), records.InvocationExt)
    assert isinstance(inv, records.InvocationExt)
    assert inv.excluded == excluded
    assert inv.frames == _FRAMES
    assert list(inv.frames) == ["p1", "p2"]
    assert all(type(v) is bytes for v in inv.frames.values())
    assert inv.origin == ""
    assert inv.namespace == "/"
    assert inv.callback_id == 0


def test_full_send_all_record_for_send_hello():
    frame = hub_protocol.encode_json("Send", ["hello"])
    value = records.encode(records.Invocation([], {"json": frame}))
    json_text = b'{"type":1,"target":"Send","arguments":["hello"]}\x1e'
    assert len(json_text) == 49
    expected = h("92 90 81 A4 6A 73 6F 6E C4 31") + json_text
    assert value == expected
    assert len(value) == 59


def test_full_send_all_record_decodes():
    json_text = b'{"type":1,"target":"Send","arguments":["hello"]}\x1e'
    value = h("92 90 81 A4 6A 73 6F 6E C4 31") + json_text
    inv = records.decode(value, records.InvocationExt)
    assert inv.excluded == []
    assert inv.frames == {"json": json_text}
    assert hub_protocol.decode_frames(inv.frames) == ("Send", ["hello"])


# -- extensions are trailing items --------------------------------------------


def test_invocation_ext_is_readable_by_a_dotnet_layout_reader():
    frames = {"json": hub_protocol.encode_json("Send", ["hi"]), "messagepack": b"\x01\x02"}
    value = records.encode(
        records.InvocationExt(["x", "y"], frames, origin="srv_1", namespace="/chat", callback_id=7)
    )
    plain = msgspec.msgpack.decode(value)
    assert isinstance(plain, list)
    assert len(plain) >= 2
    assert plain[0] == ["x", "y"]
    assert isinstance(plain[1], dict)
    assert plain[1] == frames
    assert all(isinstance(k, str) and type(v) is bytes for k, v in plain[1].items())
    # The .NET items come first, byte for byte: only the array header differs.
    net = records.encode(records.Invocation(["x", "y"], frames))
    assert value[0] == 0x90 | len(plain) and len(plain) > 2
    assert value[1 : len(net)] == net[1:]


def test_group_command_ext_keeps_the_dotnet_layout_first():
    value = records.encode(
        records.GroupCommandExt(42, "S", records.REMOVE, "G", "C", "/chat", records.OP_DISCONNECT)
    )
    plain = msgspec.msgpack.decode(value)
    assert plain[:5] == [42, "S", 2, "G", "C"]
    net = h("95 2A A1 53 02 A1 47 A1 43")
    assert value[1 : len(net)] == net[1:]


def test_ack_ext_keeps_the_dotnet_layout_first():
    value = records.encode(records.AckExt(384, ["answer", 1]))
    plain = msgspec.msgpack.decode(value)
    assert plain[0] == 384 and type(plain[0]) is int
    assert value[1:4] == h("CD 01 80")


def test_ext_round_trip_keeps_extension_values():
    inv = records.InvocationExt(
        ["a"], {"json": b"x"}, origin="o", namespace="/n", callback_id=2**31 - 1
    )
    assert records.decode(records.encode(inv), records.InvocationExt) == inv
    cmd = records.GroupCommandExt(1, "S", records.ADD, "G", "C", "/n", records.OP_CLOSE_ROOM)
    assert records.decode(records.encode(cmd), records.GroupCommandExt) == cmd
    ack = records.AckExt(5, [1, "two", None, {"k": b"\x00"}])
    assert records.decode(records.encode(ack), records.AckExt) == ack


@pytest.mark.parametrize(
    ("cls", "value", "expected"),
    [
        (records.AckExt, mp([5, None, "future"]), {"id": 5, "args": None}),
        (records.AckExt, mp([5, ["a"], "future", 1]), {"id": 5, "args": ["a"]}),
        (
            records.GroupCommandExt,
            mp([1, "S", 1, "G", "C", "/x", 2, "future", [1]]),
            {"id": 1, "group": "G", "namespace": "/x", "op": 2},
        ),
        (
            records.InvocationExt,
            mp([["a"], {"json": b"j"}, "o", "/x", 3, ["r"], 7, "future"]),
            {"excluded": ["a"], "origin": "o", "namespace": "/x", "callback_id": 3,
             "earlier_targets": ["r"], "emit_seq": 7},
        ),
    ],
)
def test_extra_trailing_items_are_accepted(cls, value, expected):
    record = records.decode(value, cls)
    for name, want in expected.items():
        assert getattr(record, name) == want


@pytest.mark.parametrize("ack_id", [2**31 - 1, -(2**31)])
def test_ack_id_int32_bounds_accepted(ack_id):
    assert records.decode(mp([ack_id]), records.AckExt).id == ack_id


# -- malformed input ----------------------------------------------------------

MALFORMED = [
    # empty / missing values
    ("empty ack", records.AckExt, b""),
    ("empty group", records.GroupCommandExt, b""),
    ("empty invocation", records.InvocationExt, b""),
    ("none value", records.InvocationExt, None),
    # garbage
    ("invalid opcode", records.AckExt, b"\xc1"),
    ("garbage bytes", records.InvocationExt, b"\xff\xfe\xfd\x00garbage"),
    ("ascii text", records.GroupCommandExt, b"not a record"),
    ("trailing bytes", records.AckExt, b"\x91\x2a\x00"),
    ("truncated array", records.InvocationExt, b"\x92\x90"),
    ("truncated int", records.AckExt, b"\x91\xcd\x01"),
    ("not an array", records.AckExt, mp({"id": 1})),
    # short arrays
    ("empty ack array", records.AckExt, b"\x90"),
    ("short invocation", records.InvocationExt, mp([[]])),
    ("empty invocation array", records.InvocationExt, b"\x90"),
    ("short group command", records.GroupCommandExt, mp([1, "S", 1, "G"])),
    # wrong types
    ("ack id str", records.AckExt, mp(["1"])),
    ("ack id float", records.AckExt, mp([1.5])),
    ("ack id bool", records.AckExt, mp([True])),
    ("ack args not list", records.AckExt, mp([1, "x"])),
    ("excluded ints", records.InvocationExt, mp([[1], {"json": b"x"}])),
    ("excluded map", records.InvocationExt, mp([{}, {"json": b"x"}])),
    ("frames list", records.InvocationExt, mp([[], []])),
    ("frame str not bin", records.InvocationExt, mp([[], {"json": "text"}])),
    ("frame key int", records.InvocationExt, mp([[], {1: b"x"}])),
    ("nil excluded list", records.InvocationExt, mp([None, {"json": b"x"}])),
    ("nil frames", records.InvocationExt, mp([[], None])),
    ("origin not str", records.InvocationExt, mp([[], {"json": b"x"}, 5])),
    ("namespace not str", records.InvocationExt, mp([[], {"json": b"x"}, "o", None])),
    ("group id str", records.GroupCommandExt, mp(["1", "S", 1, "G", "C"])),
    ("server name int", records.GroupCommandExt, mp([1, 2, 1, "G", "C"])),
    ("action str", records.GroupCommandExt, mp([1, "S", "1", "G", "C"])),
    ("group nil", records.GroupCommandExt, mp([1, "S", 1, None, "C"])),
    ("connection id int", records.GroupCommandExt, mp([1, "S", 1, "G", 3])),
    # bad values
    ("action 3", records.GroupCommandExt, h("95 2A A1 53 03 A1 47 A1 43")),
    ("action 0", records.GroupCommandExt, mp([42, "S", 0, "G", "C"])),
    ("unknown op", records.GroupCommandExt, mp([42, "S", 2, "G", "C", "/", 4])),
    ("negative op", records.GroupCommandExt, mp([42, "S", 2, "G", "C", "/", -1])),
    ("ack id beyond int32", records.AckExt, mp([2**31])),
    ("ack id below int32", records.AckExt, mp([-(2**31) - 1])),
    ("ack id uint64", records.AckExt, h("91 CF FF FF FF FF FF FF FF FF")),
    ("group id beyond int32", records.GroupCommandExt, mp([2**31, "S", 1, "G", "C"])),
    ("callback id beyond int32", records.InvocationExt, mp([[], {"json": b"x"}, "o", "/", 2**31])),
]


@pytest.mark.parametrize(
    ("cls", "value"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_records_raise(cls, value):
    with pytest.raises(MalformedRecord):
        records.decode(value, cls)


def test_malformed_record_is_a_value_error_with_a_message():
    with pytest.raises(ValueError, match="action 3"):
        records.decode(h("95 2A A1 53 03 A1 47 A1 43"), records.GroupCommandExt)
