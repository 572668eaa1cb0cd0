"""SignalR hub-protocol invocation frames, as carried in an Invocation's map.

A frame is exactly what a SignalR client of that protocol receives: the
``"json"`` text protocol (a JSON object then the 0x1E record separator) or the
``"messagepack"`` binary protocol (a VarInt length prefix, then an array).
"""
from __future__ import annotations

from typing import Any

import msgspec

from ..errors import MalformedRecord

JSON = "json"
MESSAGEPACK = "messagepack"
PROTOCOLS = (JSON, MESSAGEPACK)

INVOCATION = 1  # HubMessageType.Invocation
RECORD_SEPARATOR = b"\x1e"

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_json_decoder = msgspec.json.Decoder()
_msgpack_decoder = msgspec.msgpack.Decoder()


def encode_json(target: str, arguments: list) -> bytes:
    """The ``"json"`` frame of an invocation. Bytes become base64 strings, as
    .NET's System.Text.Json writes ``byte[]``."""
    body = _json_encoder.encode({"type": INVOCATION, "target": target, "arguments": arguments})
    return body + RECORD_SEPARATOR


def encode_messagepack(target: str, arguments: list) -> bytes:
    """The ``"messagepack"`` frame: ``[1, {}, nil, target, arguments, []]``
    behind its VarInt length."""
    body = _msgpack_encoder.encode((INVOCATION, {}, None, target, arguments, ()))
    return _varint(len(body)) + body


def encode_frames(target: str, arguments: list, protocols: tuple[str, ...]) -> dict[str, bytes]:
    """The frame map of an Invocation for ``protocols``."""
    encoders = {JSON: encode_json, MESSAGEPACK: encode_messagepack}
    return {name: encoders[name](target, arguments) for name in protocols}


def decode_frames(frames: dict[str, bytes]) -> tuple[str, list]:
    """The ``(target, arguments)`` of an Invocation's frame map.

    The MessagePack frame wins when both are present: it carries binary
    arguments as bytes, where JSON has only base64 strings.

    :raises MalformedRecord: no frame we read, or one that does not parse.
    """
    if MESSAGEPACK in frames:
        return decode_messagepack(frames[MESSAGEPACK])
    if JSON in frames:
        return decode_json(frames[JSON])
    raise MalformedRecord(f"no json or messagepack frame (protocols: {sorted(frames)})")


def decode_json(frame: bytes) -> tuple[str, list]:
    """Parse a ``"json"`` invocation frame (any property order)."""
    try:
        message = _json_decoder.decode(frame.rstrip(RECORD_SEPARATOR))
    except msgspec.DecodeError as exc:
        raise MalformedRecord(f"json frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise MalformedRecord("json frame is not an object")
    return _invocation(message.get("type"), message.get("target"), message.get("arguments", []))


def decode_messagepack(frame: bytes) -> tuple[str, list]:
    """Parse a ``"messagepack"`` invocation frame."""
    length, start = _read_varint(frame)
    body = frame[start : start + length]
    if len(body) != length:
        raise MalformedRecord("messagepack frame is shorter than its length prefix")
    try:
        message = _msgpack_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedRecord(f"messagepack frame does not parse: {exc}") from None
    if not isinstance(message, list) or len(message) < 5:
        raise MalformedRecord("messagepack frame is not an invocation array")
    return _invocation(message[0], message[3], message[4])


def _invocation(kind: Any, target: Any, arguments: Any) -> tuple[str, list]:
    if type(kind) is not int or kind != INVOCATION:  # True == 1 in Python
        raise MalformedRecord(f"frame type {kind!r} is not an invocation (1)")
    if not isinstance(target, str) or not isinstance(arguments, list):
        raise MalformedRecord("invocation frame without a string target and an argument array")
    return target, arguments


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes) -> tuple[int, int]:
    """Return ``(value, bytes used)``; SignalR lengths fit in 5 bytes."""
    value = 0
    for i, byte in enumerate(data[:5]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise MalformedRecord("messagepack frame has no valid length prefix")


def frames_of(event: str, data: Any, protocols: tuple[str, ...]) -> dict[str, bytes]:
    """The frames of a python-socketio emit's ``data`` (one value, a tuple of
    several arguments, or ``None``), with MessagePack added when it carries
    binary."""
    if isinstance(data, tuple):
        arguments = list(data)
    elif data is None:
        arguments = []
    else:
        arguments = [data]
    if MESSAGEPACK not in protocols and has_binary(arguments):
        protocols = protocols + (MESSAGEPACK,)
    return encode_frames(event, arguments, protocols)


def has_binary(data: Any) -> bool:
    """Whether ``data`` holds bytes anywhere (python-socketio's own check is
    several times slower on the small payloads of a chat)."""
    kind = type(data)
    if kind is bytes or kind is bytearray:
        return True
    if kind is list or kind is tuple:
        return any(map(has_binary, data))
    if kind is dict:
        return any(map(has_binary, data.values()))
    return isinstance(data, (bytes, bytearray))
