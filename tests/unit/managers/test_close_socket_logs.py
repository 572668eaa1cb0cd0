"""socketio_hooks.close_socket says what a slow close waited for: a
websocket's writer, or a long-polling client that never polled the CLOSE
(a threading dyno's drain was held 10 s by one socket and nothing said
which)."""
import logging
import queue
import time
from types import SimpleNamespace

from flask_signalr_kafka.managers import socketio_hooks

LOGGER = "flask_signalr_kafka.managers.socketio_hooks"


class PollingSocket:
    """A long-polling socket: close() queues the CLOSE and the end-of-queue None."""

    upgraded = False

    def __init__(self):
        self.queue = queue.Queue()

    def close(self, wait=True, reason=None):
        self.queue.put("CLOSE")
        self.queue.put(None)


def server_with(socket, disconnect=lambda eio_sid: None):
    eio = SimpleNamespace(sockets={"e1": socket}, disconnect=disconnect,
                          reason=SimpleNamespace(SERVER_DISCONNECT="server disconnect"))
    return SimpleNamespace(eio=eio)


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_polling_client_that_never_polls_the_close_is_named(caplog):
    server = server_with(PollingSocket())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        socketio_hooks.close_socket(server, "e1", 0.2, time.sleep)
    (message,) = warnings(caplog)
    assert "long-polling socket e1" in message and "did not poll the CLOSE within 0.2 s" in message
    assert "e1" not in server.eio.sockets


def test_a_polling_client_that_polls_the_close_at_once_logs_nothing(caplog):
    socket = PollingSocket()

    def poll_soon(seconds):
        if socket.queue.qsize() > 1:
            socket.queue.get_nowait()  # the client's poll takes the CLOSE
        time.sleep(seconds)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        socketio_hooks.close_socket(server_with(socket), "e1", 5, poll_soon)
    assert warnings(caplog) == []


def test_a_slow_websocket_close_is_logged(caplog, monkeypatch):
    monkeypatch.setattr(socketio_hooks, "SLOW_CLOSE", 0.05)
    socket = SimpleNamespace(upgraded=True)
    server = server_with(socket, disconnect=lambda eio_sid: time.sleep(0.1))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        socketio_hooks.close_socket(server, "e1", 5, time.sleep)
    (message,) = warnings(caplog)
    assert message.startswith("closing the websocket e1 took")


def test_a_quick_websocket_close_logs_nothing(caplog):
    server = server_with(SimpleNamespace(upgraded=True))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        socketio_hooks.close_socket(server, "e1", 5, time.sleep)
    assert warnings(caplog) == []
