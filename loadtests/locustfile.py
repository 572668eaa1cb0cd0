"""Locust load kit for a multi-dyno Flask-SocketIO fleet on the Kafka backplane.

Every simulated user is one chat user (a uuid-based name, unique across all
workers and machines) with TWO Socket.IO connections on two DIFFERENT dynos:
a sender and a receiver. Both join the user's own room ``r-<name>``. The
sender ``say``s to that room, ``whisper``s to its own name and ``shout``s to
everyone; the text of each message is ``"<send time>|<message id>"``. When the
line reaches the receiver, which sits on another dyno and so only gets it
through Kafka, the end-to-end latency is reported as a Locust request of type
``deliver`` (names ``room``, ``private``, ``broadcast``).

Loss is counted exactly: each room and private message, and each user's own
shout, must reach that user's receiver exactly once. A message not received
within the grace period (``--loss-grace``, 5 s) is reported as a failed
``deliver`` request and counted as lost; at the end the totals of every worker
are summed on the master and printed, and the exit code is 1 if anything was
lost. See loadtests/README.md.

This file holds the Locust side: the simulated users and the event wiring
between master and workers. The counting is testkit/delivery.py (the ledger)
and the table testkit/delivery_report.py, both tested without Locust.

    locust -f loadtests/locustfile.py --host http://a:5000,http://b:5000
    python loadtests/locustfile.py --check [--host HOSTS]   # one line across each dyno pair
"""
from gevent import monkey

# Under the `locust` command this has already been done; in `--check` mode it
# must happen before socketio (requests, ssl) is imported.
monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import gevent  # noqa: E402
import socketio  # noqa: E402
from gevent.event import Event  # noqa: E402
from locust import User, events, task  # noqa: E402
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner  # noqa: E402

from testkit.delivery import Ledger, add_up, fire, option  # noqa: E402
from testkit.delivery_report import delivery_table  # noqa: E402

DEFAULT_HOSTS = "http://127.0.0.1:5000,http://127.0.0.1:5001,http://127.0.0.1:5002"
REPORT_KEY = "flask_signalr_kafka_delivery"  # in report_to_master / worker_report data
MSG_DRAIN = "flask_signalr_kafka_drain"  # master -> workers: stop sending, settle
MSG_DRAINED = "flask_signalr_kafka_drained"  # worker -> master: final counters

log = logging.getLogger("loadtest")


def host_list(text):
    """``"http://a:5000, http://b:5000"`` -> ``["http://a:5000", "http://b:5000"]``."""
    return [h.strip().rstrip("/") for h in (text or "").split(",") if h.strip()]


class ConnectionDropped(Exception):
    pass


# -- the master's (or the single process's) view of the fleet -------------------


class Fleet:
    """On the master: the latest cumulative counters of every worker."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.snapshots = {}  # worker id -> snapshot
        self.final = set()  # workers whose snapshot is final (after draining)
        self.drained = False


_environment = None  # this process's Locust environment
_ledger = None  # this process's Ledger (workers and single-process runs)
_fleet = Fleet()  # the master's sum of the workers
_printed = False


def summary(environment):
    """The delivery table of the whole run, as text, and its failure count."""
    total, workers = totals(environment)
    stats = environment.runner.stats if environment.runner else None
    return delivery_table(total, workers, float(option(environment, "loss_grace", 5.0)), stats)


def local_only(environment):
    return not isinstance(environment.runner, (MasterRunner, WorkerRunner))


def totals(environment):
    if isinstance(environment.runner, MasterRunner):
        return add_up(_fleet.snapshots.values()), len(_fleet.snapshots)
    return add_up([_ledger.snapshot()] if _ledger else []), 1


def drain_fleet(environment):
    """Master: tell every worker to stop sending and settle, and wait for their
    final counters (the grace period, plus a margin)."""
    if _fleet.drained:
        return
    runner = environment.runner
    workers = {c.id for c in runner.clients.all if c.state != STATE_MISSING}
    grace = float(option(environment, "loss_grace", 5.0))
    log.info("Draining %d worker(s): no new messages, %g s for those in flight",
             len(workers), grace)
    runner.send_message(MSG_DRAIN, {"grace": grace})
    deadline = time.time() + grace + 10
    while not workers <= _fleet.final and time.time() < deadline:
        gevent.sleep(0.1)
    missing = workers - _fleet.final
    if missing:
        log.warning("No final delivery counters from %d worker(s) (%s): their "
                    "last periodic report is used", len(missing), ", ".join(sorted(missing)))
    _fleet.drained = True


# -- command line options (sent by the master to its workers) -------------------


@events.init_command_line_parser.add_listener
def _add_options(parser):
    group = parser.add_argument_group("flask-signalr-kafka load kit")
    group.add_argument("--loss-grace", type=float, env_var="LOSS_GRACE", default=5.0,
                       help="seconds a message may take before it counts as lost (5)")
    group.add_argument("--task-weights", env_var="TASK_WEIGHTS", default="say=5,whisper=3,shout=1",
                       help="relative weights of the tasks (say=5,whisper=3,shout=1)")
    group.add_argument("--user-wait", env_var="USER_WAIT", default="0.5,1.5",
                       help="seconds each user waits between two sends: MIN,MAX (0.5,1.5)")
    group.add_argument("--sio-timeout", type=float, env_var="SIO_TIMEOUT", default=10.0,
                       help="seconds to wait for a connection, its welcome, or an emit's ack (10)")
    group.add_argument("--socketio-path", env_var="SOCKETIO_PATH", default="socket.io",
                       help="the Socket.IO endpoint path on the dynos (socket.io)")


def _apply_weights(environment):
    weights = dict(say=5, whisper=3, shout=1)
    for item in str(option(environment, "task_weights", "")).split(","):
        if "=" in item:
            name, _, weight = item.partition("=")
            if name.strip() not in weights:
                raise ValueError(f"--task-weights: unknown task {name.strip()!r}")
            weights[name.strip()] = int(weight)
    ChatPair.tasks = [getattr(ChatPair, name) for name, w in weights.items() for _ in range(w)]


# -- Locust events ------------------------------------------------------------------


@events.init.add_listener
def _on_init(environment, **_kw):
    global _environment, _ledger
    _environment = environment
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        def on_drained(environment, msg, **_kw):
            _fleet.snapshots[msg.node_id] = msg.data
            _fleet.final.add(msg.node_id)

        def on_worker_report(client_id, data, **_kw):
            if REPORT_KEY in data and client_id not in _fleet.final:
                _fleet.snapshots[client_id] = data[REPORT_KEY]

        runner.register_message(MSG_DRAINED, on_drained)
        environment.events.worker_report.add_listener(on_worker_report)
        if not environment.host:  # workers get the master's host with each spawn
            environment.host = os.environ.get("DYNO_HOSTS") or DEFAULT_HOSTS
        return
    _ledger = Ledger(environment)
    gevent.spawn(_ledger.sweeper)
    if isinstance(runner, WorkerRunner):
        def on_drain(environment, msg, **_kw):
            _ledger.drain()
            c = add_up([_ledger.snapshot()])["counts"]
            log.info("Worker drained: sent %d, received %d, lost %d",
                     *(sum(row[k] for row in c.values()) for k in ("sent", "received", "lost")))
            environment.runner.send_message(MSG_DRAINED, _ledger.snapshot())

        def on_report(client_id, data, **_kw):
            data[REPORT_KEY] = _ledger.snapshot()

        runner.register_message(MSG_DRAIN, on_drain, concurrent=True)
        environment.events.report_to_master.add_listener(on_report)
    elif runner is not None and not environment.host:
        environment.host = os.environ.get("DYNO_HOSTS") or DEFAULT_HOSTS


@events.test_start.add_listener
def _on_test_start(environment, **_kw):
    global _printed
    _printed = False
    if isinstance(environment.runner, MasterRunner):
        _fleet.reset()
        return
    _apply_weights(environment)
    if _ledger is not None:
        _ledger.reset()


@events.test_stopping.add_listener
def _on_test_stopping(environment, **_kw):
    # Before any user is stopped: let every message in flight arrive.
    if isinstance(environment.runner, MasterRunner):
        drain_fleet(environment)
    elif local_only(environment) and _ledger is not None:
        _ledger.drain()


@events.test_stop.add_listener
def _on_test_stop(environment, **_kw):
    if isinstance(environment.runner, WorkerRunner):
        return
    if not option(environment, "headless", False):  # web UI: a table after each run
        print(summary(environment)[0], flush=True)


@events.quitting.add_listener
def _on_quitting(environment, **_kw):
    if isinstance(environment.runner, WorkerRunner):
        if _ledger is not None and not _ledger.drained:  # Ctrl-C on the worker's terminal
            _ledger.drain()
            environment.runner.send_message(MSG_DRAINED, _ledger.snapshot())
        return
    # Ctrl-C reaches here before the runner stops: drain now.
    if isinstance(environment.runner, MasterRunner):
        drain_fleet(environment)
    elif _ledger is not None:
        _ledger.drain()
    if summary(environment)[1]:
        environment.process_exit_code = 1


@events.quit.add_listener
def _on_quit(exit_code, **_kw):
    # After Locust's own tables: the fleet totals.
    global _printed
    env = _environment
    if env is None or isinstance(env.runner, WorkerRunner) or _printed:
        return
    _printed = True
    print(summary(env)[0], flush=True)


# -- the simulated user --------------------------------------------------------------


class Conn:
    """One Socket.IO connection of a chat user, on one dyno."""

    def __init__(self, user_name, role, on_line, on_drop=None):
        self.user_name = user_name
        self.role = role  # "sender" or "receiver"
        self.dyno = None  # the dyno's name, from its welcome
        self.closing = False
        self.dropped = False
        self.welcomed = Event()
        self._on_drop = on_drop
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("welcome", self._welcome)
        self.sio.on("line", lambda data: on_line(self, data))
        self.sio.on("disconnect", self._disconnect)

    def open(self, url, timeout, path="socket.io"):
        self.sio.connect(url, auth={"name": self.user_name}, transports=["websocket"],
                         socketio_path=path, wait_timeout=timeout)
        if not self.welcomed.wait(timeout):
            raise TimeoutError(f"no welcome from {url} within {timeout:g} s")

    def _welcome(self, data):
        self.dyno = (data or {}).get("dyno")
        self.welcomed.set()

    def _disconnect(self, reason=None):
        if not self.closing:
            self.dropped = True
            if self._on_drop:
                self._on_drop(self, reason)

    def close(self):
        self.closing = True
        try:
            self.sio.disconnect()
        except Exception:
            pass


class ChatPair(User):
    """A chat user with a sender and a receiver connection on two dynos.

    Hosts: ``--host`` (comma-separated), else ``DYNO_HOSTS``, else the three
    demo dynos. With a single host (a load balancer), the receiver reconnects
    until the welcome names another dyno than the sender's (5 more tries).
    """

    def wait_time(self):
        low, _, high = str(option(self.environment, "user_wait", "0.5,1.5")).partition(",")
        low = float(low)
        return random.uniform(low, float(high or low))

    def on_start(self):
        self.name = f"lt-{uuid.uuid4().hex}"
        self.room = f"r-{self.name}"
        self.sender = self.receiver = None
        _ledger.other["users"] += 1
        self._open()

    def on_stop(self):
        # Let this user's messages in flight arrive before hanging up; in the
        # background, so that a ramp-down is not held up.
        sender, receiver, name = self.sender, self.receiver, self.name
        self.sender = self.receiver = None

        def close_later():
            deadline = time.time() + _ledger.grace
            while time.time() < deadline and any(
                    entry[2] == name for entry in list(_ledger.pending.values())):
                gevent.sleep(0.1)
            for conn in (sender, receiver):
                if conn is not None:
                    conn.close()

        gevent.spawn(close_later)

    # -- connections

    @property
    def timeout(self):
        return float(option(self.environment, "sio_timeout", 10.0))

    def _hosts(self):
        hosts = host_list(self.environment.host or os.environ.get("DYNO_HOSTS") or DEFAULT_HOSTS)
        if not hosts:
            raise ValueError("no dyno hosts: pass --host or DYNO_HOSTS")
        return hosts

    def _dropped(self, conn, reason):
        _ledger.other["dropped"] += 1
        fire(self.environment, "WS", "disconnect", 0,
             ConnectionDropped(f"the dyno closed the {conn.role} connection ({reason})"))

    def _connect(self, url, role):
        conn = Conn(self.name, role, _ledger.on_line, self._dropped)
        start = time.perf_counter()
        try:
            conn.open(url, self.timeout, option(self.environment, "socketio_path", "socket.io"))
        except Exception as exc:
            conn.close()
            _ledger.other["connect_failed"] += 1
            fire(self.environment, "WS", "connect", (time.perf_counter() - start) * 1000, exc)
            raise
        fire(self.environment, "WS", "connect", (time.perf_counter() - start) * 1000)
        _ledger.other["connections"] += 1
        return conn

    def _open(self):
        """Connect the pair and join the user's room on both; False on failure."""
        sender_url, receiver_url = _ledger.pick_pair(self._hosts())
        try:
            self.sender = self._connect(sender_url, "sender")
            self.receiver = self._connect(receiver_url, "receiver")
            for _ in range(5):
                if self.receiver.dyno != self.sender.dyno:
                    break
                self.receiver.close()  # same dyno behind one address: try again
                self.receiver = self._connect(receiver_url, "receiver")
            else:
                _ledger.other["same_dyno"] += 1
                if _ledger.other["same_dyno"] == 1:
                    log.warning("Sender and receiver both on dyno %s after 6 tries (one "
                                "dyno behind %s?): their messages do not cross Kafka",
                                self.sender.dyno, receiver_url)
            # The receiver first: it must be in the room before the sender talks.
            for conn in (self.receiver, self.sender):
                self._call(conn, "join", {"room": self.room}, "join")
            return True
        except Exception:
            for conn in (self.sender, self.receiver):
                if conn is not None:
                    conn.close()
            self.sender = self.receiver = None
            return False

    def _call(self, conn, event, data, name):
        """An emit with an ack, timed: the dyno's handling of the event."""
        start = time.perf_counter()
        try:
            conn.sio.call(event, data, timeout=self.timeout)
        except Exception as exc:
            fire(self.environment, "emit", name, (time.perf_counter() - start) * 1000, exc)
            raise
        fire(self.environment, "emit", name, (time.perf_counter() - start) * 1000)

    def _ready(self):
        if self.sender and self.receiver and not (self.sender.dropped or self.receiver.dropped):
            return True
        for conn in (self.sender, self.receiver):  # a connection dropped: start over
            if conn is not None:
                conn.close()
        self.sender = self.receiver = None
        return self._open()

    def _send(self, kind, event, make_payload):
        if _ledger.draining:
            return  # the test is stopping: nothing new
        if not self._ready():
            return
        msgid, sent_at = _ledger.register(kind, self.name)
        try:
            self._call(self.sender, event, make_payload(f"{sent_at:.6f}|{msgid}"), event)
        except socketio.exceptions.TimeoutError:
            pass  # reported; the emit went out, so the message is still expected
        except Exception:
            _ledger.unregister(msgid)  # reported; never sent (the connection is gone)

    # -- tasks (weights: --task-weights)

    @task(5)
    def say(self):
        self._send("room", "say", lambda text: {"room": self.room, "text": text})

    @task(3)
    def whisper(self):
        self._send("private", "whisper", lambda text: {"to": self.name, "text": text})

    @task(1)
    def shout(self):
        self._send("broadcast", "shout", lambda text: {"text": text})


# -- python loadtests/locustfile.py --check -----------------------------------------------


def probe(sender_url, receiver_url, timeout):
    """One room line from a connection on one dyno to one on another: the
    latency in ms, or raises."""
    name = f"lt-check-{uuid.uuid4().hex}"
    text = f"{time.time():.6f}|check-{uuid.uuid4().hex}"
    got = Event()

    def on_line(_conn, data):
        if isinstance(data, dict) and data.get("text") == text:
            got.set()

    sender = Conn(name, "sender", on_line)
    receiver = Conn(name, "receiver", on_line)
    try:
        receiver.open(receiver_url, timeout)
        sender.open(sender_url, timeout)
        receiver.sio.call("join", {"room": f"r-{name}"}, timeout=timeout)
        sender.sio.call("join", {"room": f"r-{name}"}, timeout=timeout)
        start = time.time()
        sender.sio.call("say", {"room": f"r-{name}", "text": text}, timeout=timeout)
        if not got.wait(2.0):
            raise TimeoutError(f"{receiver.dyno} did not get a line said on {sender.dyno}")
        return (time.time() - start) * 1000
    finally:
        sender.close()
        receiver.close()


def check(hosts, timeout):
    """Until ``timeout``: a line from each dyno to the next one (a ring)."""
    deadline = time.time() + timeout
    pairs = [(hosts[i], hosts[(i + 1) % len(hosts)]) for i in range(len(hosts))]
    for sender_url, receiver_url in pairs:
        while True:
            try:
                ms = probe(sender_url, receiver_url, 5.0)
                print(f"ok  {sender_url} -> {receiver_url}: {ms:.0f} ms", flush=True)
                break
            except Exception as exc:
                if time.time() > deadline:
                    print(f"FAIL {sender_url} -> {receiver_url}: {exc!r}", flush=True)
                    return 1
                gevent.sleep(0.5)
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--check", action="store_true",
                     help="send one line across each pair of dynos (a ring) and exit")
    cli.add_argument("--host", default=os.environ.get("DYNO_HOSTS") or DEFAULT_HOSTS,
                     help="comma-separated dyno URLs (DYNO_HOSTS; the demo's three)")
    cli.add_argument("--timeout", type=float, default=60.0,
                     help="seconds --check keeps trying (60)")
    args = cli.parse_args()
    if not args.check:
        cli.error("run me with `locust -f loadtests/locustfile.py`, or with --check")
    sys.exit(check(host_list(args.host), args.timeout))
