"""A lean Socket.IO reader for the benchmark: many websocket connections in
one thread, read with ``selectors``, costing a few microseconds a delivery.

python-socketio's own client spends a thread and a full packet decode per
message; 20 of them cap out near 4,000 deliveries/s on a 2-core machine, far
below what the servers can deliver. This reader speaks just enough
Engine.IO 4 / Socket.IO 5 over a plain socket: the upgrade, the namespace
connect, pings, and the event frames, whose timestamps it reads only when
asked to measure latency.
"""
from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import struct
import threading
import time


class Connection:
    def __init__(self, host: str, port: int, announce: bool = False) -> None:
        self.sock = socket.create_connection((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        head, self.buffer = response.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket upgrade refused: {head[:200]!r}")
        self.sid = None
        # Connect to the default namespace; announcing connection state
        # recovery makes the server append an offset to every event.
        self.send(b'40{"csr":true}' if announce else b"40")

    def send(self, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        header = bytes([0x81, 0x80 | len(payload)]) if len(payload) < 126 else (
            bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(payload)))
        self.sock.sendall(header + mask + masked)

    def frames(self):
        """Complete frames' payloads in the buffer."""
        buf = self.buffer
        pos = 0
        out = []
        while len(buf) - pos >= 2:
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length = struct.unpack_from(">H", buf, pos + 2)[0]
                start = pos + 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length = struct.unpack_from(">Q", buf, pos + 2)[0]
                start = pos + 10
            if len(buf) - start < length:
                break
            out.append(buf[start:start + length])
            pos = start + length
        self.buffer = buf[pos:]
        return out


class Reader:
    """``count`` connections to ``host:port``; counts event frames and, when
    ``measure`` is on, the latency from the send time in each event."""

    def __init__(self, host: str, port: int, count: int, announce: bool = False) -> None:
        self.connections = [Connection(host, port, announce) for _ in range(count)]
        self.selector = selectors.DefaultSelector()
        for conn in self.connections:
            conn.sock.setblocking(False)
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        self.received = 0
        self.last = 0.0
        self.measure = False
        self.latencies: list[float] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while any(c.sid is None for c in self.connections):
            if time.monotonic() > deadline:
                raise TimeoutError("Socket.IO connect did not complete")
            time.sleep(0.01)

    def reset(self, measure: bool = False) -> None:
        self.received = 0
        self.last = 0.0
        self.latencies = []
        self.measure = measure

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self.selector.select(0.2):
                conn = key.data
                try:
                    data = conn.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    self.selector.unregister(conn.sock)
                    continue
                conn.buffer += data
                now = time.time()
                for payload in conn.frames():
                    if payload[:2] == b"42":
                        self.received += 1
                        self.last = now
                        if self.measure:
                            self.latencies.append(now - json.loads(payload[2:])[2])
                    elif payload[:1] == b"2":
                        conn.send(b"3")
                    elif payload[:2] == b"40":
                        conn.sid = json.loads(payload[2:])["sid"]

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for conn in self.connections:
            conn.sock.close()
