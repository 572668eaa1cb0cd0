"""Real parts for the integration tests and the load tests: server processes
running tests/server_app.py, a fleet of them sharing one topic prefix,
Socket.IO clients that record what they receive, a plain kafka-python reader
of the raw topics, and a TCP proxy that can cut connections."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import socketio
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from flask_signalr_kafka.cli.broker import free_port

SERVER_APP = Path(__file__).resolve().parent.parent / "tests" / "server_app.py"


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def close_all(closables: Iterable, close=lambda c: c.close()) -> None:
    """``close(c)`` for each of ``closables`` at once, each in a thread, then
    the first error raised: one close may take seconds (a server drains on
    SIGTERM; websocket-client waits 3 s for a close frame a threading-mode
    server may leave unanswered), and a teardown would wait for their sum."""
    items = list(closables)
    if items:
        with ThreadPoolExecutor(len(items)) as pool:
            done = [pool.submit(close, c) for c in items]
        for future in done:
            future.result()


def close_quietly(client) -> None:
    """Close ``client``, ignoring errors (a teardown after a broken server)."""
    with contextlib.suppress(Exception):
        client.close()


def unique(label="x"):
    return f"{label}-{uuid.uuid4().hex[:10]}"


#: Seconds a server may take to exit after SIGTERM (Heroku kills at 30 s; a
#: threading-mode drain may wait 10 s for a long-polling client's next poll).
STOP_WITHIN_S = 25


class ServerProcess:
    """tests/server_app.py in its own process: gevent, Flask-SocketIO and a
    KafkaManager, like one dyno; run as ``socketio.run(app)``, or, with
    ``RUNNER="gunicorn"``, by gunicorn as the Procfile runs the sample."""

    def __init__(self, bootstrap, prefix, label, log_dir, **env):
        self.runner = env.pop("RUNNER", "socketio.run")
        self.port = free_port()
        self.label = label
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"{prefix}-{label}.log"
        self.env = dict(
            os.environ, BOOTSTRAP=bootstrap, PREFIX=prefix, PORT=str(self.port),
            SERVER_LABEL=label, **{k: str(v) for k, v in env.items()},
        )
        self.process = None

    def start(self, ready_timeout=30.0):
        self._log = open(self.log_path, "ab")
        command = [sys.executable, str(SERVER_APP)]
        if self.runner == "gunicorn":
            # As the Procfile runs a dyno: one worker, of the async mode's kind.
            workers = (["--worker-class", "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"]
                       if self.env.get("ASYNC_MODE", "gevent") == "gevent"
                       else ["--threads", "100"])
            command = [
                str(Path(sys.executable).parent / "gunicorn"), *workers, "--workers", "1",
                "--bind", f"127.0.0.1:{self.port}", "--no-control-socket",
                "--graceful-timeout", "5", "--chdir", str(SERVER_APP.parent), "server_app:app",
            ]
        if self.runner == "uvicorn":
            # tests/asgi_server_app.py: an AsyncServer with the AsyncKafkaManager.
            command = [
                sys.executable, "-m", "uvicorn", "--app-dir", str(SERVER_APP.parent),
                "asgi_server_app:app", "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "warning", "--no-access-log",
            ]
        self.process = subprocess.Popen(
            command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_until(self.ready, ready_timeout, 0.05, f"server {self.label} ready")
        return self

    def ready(self):
        if self.process.poll() is not None:
            raise AssertionError(f"server {self.label} exited: {self.log()[-2000:]}")
        try:
            return requests.get(self.url + "/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=None):
        if self.process and self.process.poll() is None:
            if sig is None:
                self.process.terminate()
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                if sig in (None, signal.SIGTERM):
                    # A dyno that outlives its SIGTERM is killed by the
                    # platform with what it still holds: never silently.
                    self._log.close()
                    raise AssertionError(f"server {self.label} still ran {STOP_WITHIN_S} s after "
                                         "SIGTERM "
                                         f"(killed): {self.log()[-3000:]}") from None
        self._log.close()


class Fleet:
    """Servers sharing one topic prefix, plus raw topic readers."""

    def __init__(self, broker, artifacts, prefix=None):
        self.broker = broker
        self.artifacts = artifacts
        self.prefix = prefix or unique("t")
        self.servers = []
        self.clients = []
        self.readers = []

    def server(self, label, **env):
        if os.environ.get("TEST_RECOVERY") == "1":
            # Run any test with connection state recovery on (python-socketio
            # Clients must not notice it).
            env.setdefault("CONNECTION_STATE_RECOVERY", 1)
        if self.broker.engine == "tansu":
            # Tansu workaround: it answers a fetch only at its deadline.
            env.setdefault("FETCH_MAX_WAIT_MS", 20)
        server = ServerProcess(self.broker.bootstrap, self.prefix, label, self.artifacts, **env)
        self.servers.append(server)
        return server.start()

    def start_servers(self, *labels, **env):
        """:meth:`server` for each of ``labels`` (the same ``env``), all
        starting at once: a server takes seconds to get ready."""
        with ThreadPoolExecutor(len(labels)) as pool:
            return list(pool.map(lambda label: self.server(label, **env), labels))

    def topic(self, base):
        return f"{self.prefix}-{base}"

    def raw(self, base):
        reader = RawTopic(self.broker.bootstrap, self.topic(base))
        self.readers.append(reader)
        return reader

    def client(self, server, **kwargs):
        client = Client(server, **kwargs)
        self.clients.append(client)
        return client

    def close(self):
        close_all(self.clients, close_quietly)
        for r in self.readers:
            r.close()
        close_all(self.servers, lambda s: s.stop())


class Client:
    """A real socketio.Client that records every event it receives."""

    def __init__(self, server, user=None, namespaces=("/",), answers=None):
        self.server = server
        self.events = []  # (namespace, event, args)
        self._cond = threading.Condition()
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("*", self._record)
        for ns in namespaces:
            if ns != "/":
                self.sio.on("*", self._record_ns(ns), namespace=ns)
        for event, fn in (answers or {}).items():
            self.sio.on(event, fn)
        self.disconnected = threading.Event()
        self.sio.on("disconnect", lambda *a: self.disconnected.set())
        self.sio.connect(server.url, transports=["websocket"], namespaces=list(namespaces),
                         auth={"user": user} if user else None, wait_timeout=10)

    def _record(self, event, *args):
        with self._cond:
            self.events.append(("/", event, args))
            self._cond.notify_all()

    def _record_ns(self, ns):
        def record(event, *args):
            with self._cond:
                self.events.append((ns, event, args))
                self._cond.notify_all()
        return record

    @property
    def sid(self):
        return self.sio.get_sid()

    def sid_in(self, namespace):
        return self.sio.get_sid(namespace)

    def call(self, event, data=None, namespace="/", timeout=40):
        return self.sio.call(event, data, namespace=namespace, timeout=timeout)

    def got(self, event, namespace="/"):
        with self._cond:
            return [args for ns, ev, args in self.events if ev == event and ns == namespace]

    def wait_for(self, event, args, namespace="/", timeout=10.0):
        """Wait until ``event`` arrived with exactly ``args`` (a tuple)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while args not in self.got(event, namespace):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"client on {self.server.label} never got {event}{args!r} in "
                        f"{namespace}; it got {self.events!r}"
                    )
                self._cond.wait(remaining)

    def close(self):
        self.sio.disconnect()


class RawTopic:
    """A plain kafka-python reader of one backplane topic, from its start."""

    def __init__(self, bootstrap, topic):
        self.topic = topic
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                      enable_auto_commit=False, fetch_max_wait_ms=20)
        # Right after a topic is created, metadata may not list the partitions
        # whose leader is not elected yet: wait for all of them.
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            count = len(wait_until(lambda: _described(admin, topic), 10,
                                   what=f"topic {topic}"))
        finally:
            admin.close()
        partitions = wait_until(
            lambda: len(self.consumer.partitions_for_topic(topic) or ()) == count
            and self.consumer.partitions_for_topic(topic), 10,
            what=f"all {count} partitions of {topic}")
        tps = [TopicPartition(topic, p) for p in partitions]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records = []

    def read_until(self, predicate, timeout=10.0, what="record"):
        """Read until ``predicate(record)`` holds for a record; return it."""
        deadline = time.monotonic() + timeout
        for record in self.records:
            if predicate(record):
                return record
        while time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.records.extend(batch)
                for record in batch:
                    if predicate(record):
                        return record
        raise AssertionError(f"no {what} on {self.topic} after {timeout:g} s")

    def drain(self, quiet=0.5):
        """Everything on the topic, once nothing new came for ``quiet`` s."""
        while True:
            batches = self.consumer.poll(timeout_ms=int(quiet * 1000))
            if not batches:
                return self.records
            for batch in batches.values():
                self.records.extend(batch)

    def close(self):
        self.consumer.close()


def _described(admin, topic):
    """The partitions of ``topic`` that have a leader, once the topic exists."""
    try:
        (described,) = admin.describe_topics([topic])
    except Exception:
        return None
    partitions = described.get("partitions") or []
    return partitions if partitions and all(
        p.get("leader_id", p.get("leader", -1)) >= 0 for p in partitions) else None


class TcpProxy:
    """A TCP forwarder on a free loopback port, between clients and a dyno:
    new connections go to ``upstream`` (switch it to send reconnects to
    another dyno), and :meth:`cut` closes every connection under way, as a
    network drop does. For clients, such as a browser, that always reconnect
    to the address they were given."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._open = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 5)
            except OSError:
                client.close()  # the dyno is down: the client retries
                continue
            with self._lock:
                self._open.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source, target):
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        for s in (source, target):
            self._close(s)

    def _close(self, sock):
        with self._lock:
            self._open.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def cut(self):
        with self._lock:
            live = list(self._open)
        for sock in live:
            self._close(sock)
        return len(live)

    def close(self):
        self._closed = True
        self._listener.close()
        self.cut()


@contextlib.contextmanager
def bootstrap_or_broker(bootstrap: str | None, engine: str, log_dir: Path) -> Iterator[str]:
    """The command lines' broker: ``bootstrap`` when given (a broker the
    user runs), else a broker of ``engine`` started here and stopped after."""
    if bootstrap:
        yield bootstrap
        return
    from flask_signalr_kafka.cli.broker import start_broker

    print(f"starting {engine} ...", flush=True)
    broker = start_broker(engine, log_dir=log_dir)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
