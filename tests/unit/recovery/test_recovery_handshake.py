"""The recovery handshake under faults (issue 22): Kafka errors and hangs
while a recovery is decided, a client that leaves or tries again meanwhile,
a server disconnect, and untrusted pids and offsets."""
import threading
import time
from types import SimpleNamespace

import pytest
import socketio
from bidict import ValueDuplicationError
from kafka.errors import KafkaTimeoutError
from socketio import packet

from flask_signalr_kafka import ConnectionStateRecovery
from flask_signalr_kafka.errors import MalformedRecord
from flask_signalr_kafka.managers import socketio_hooks
from flask_signalr_kafka.recovery import handshake as handshake_module
from flask_signalr_kafka.recovery.handshake import RecoveryFailed
from flask_signalr_kafka.recovery.recovery import SERVER_DISCONNECT, Recovery
from flask_signalr_kafka.recovery.sessions import (
    LIVE,
    SAVED,
    Session,
    encode,
    home_partition,
    new_pid,
)
from tests.unit.recovery.test_recovery_state import FakeCore, FakeReader, _put


class Core(FakeCore):
    """FakeCore with what a whole decision uses: claims, flush, threads."""

    runtime = SimpleNamespace(spawn=lambda fn, *a: _thread(fn, *a), sleep=time.sleep)

    def __init__(self):
        self.claimed, self.released = [], []

    def claim(self, sid):
        self.claimed.append(sid)

    def release(self, sid):
        self.released.append(sid)

    def flush(self, timeout):
        pass


def _thread(fn, *args):
    task = threading.Thread(target=fn, args=args, daemon=True)
    task.start()
    return task


class Host:
    """The manager's side: which sids are connected here."""

    def __init__(self):
        self.local = {}  # sid -> eio_sid
        self.closed = []
        self.server = SimpleNamespace(eio=SimpleNamespace(ping_interval=25, ping_timeout=20))

    def is_local(self, sid, namespace):
        return sid in self.local

    def eio_sid_from_sid(self, sid, namespace):
        return self.local.get(sid)

    def get_rooms(self, sid, namespace):
        return [sid]

    def close_socket(self, eio_sid):
        self.closed.append(eio_sid)
        # The attempt that held it sees its socket closed and lets the sid go.
        for sid, e in list(self.local.items()):
            if e == eio_sid:
                threading.Timer(0.1, self.local.pop, (sid, None)).start()


class Reader(FakeReader):
    """FakeReader that counts reads and fails as told."""

    def __init__(self, fail=None):
        super().__init__()
        self.reads = []
        self.fail = fail  # partition -> exception or threading.Event (a hang)

    def read(self, partition, since):
        self.reads.append(partition)
        trouble = (self.fail or {}).get(partition)
        if isinstance(trouble, threading.Event):
            trouble.wait(30)
        elif trouble is not None:
            raise trouble
        return super().read(partition, since)


def make(reader=None, **options):
    r = Recovery(Core(), Host(), ConnectionStateRecovery(**options))
    r.store.reader = reader or Reader()
    r.store._publish = lambda key, value, partition: _put(r.store.reader, key, value, partition)
    return r


def saved(r, pid, sid="sid~a", owner="host_2"):
    session = Session(SAVED, sid, "/", ["room"], owner, "1hab", time.time())
    _put(r.store.reader, f"s:{pid}", encode(session), int(pid.split(".")[0]))
    return session


PID = new_pid(3)


def test_a_kafka_timeout_while_deciding_is_a_new_connection():
    """kafka-python's KafkaTimeoutError is no TimeoutError: it escaped, and
    the client got no answer at all."""
    r = make(Reader({3: KafkaTimeoutError("beginning_offsets")}))
    assert r.prepare("e1", "/", PID, None) is None
    assert r.stats["failed:error"] == 1


def test_a_malformed_checkpoint_is_a_new_connection():
    """The session is live on a dyno whose checkpoint cannot be decoded."""
    reader = Reader({home_partition("host_2", 10): MalformedRecord("not a checkpoint")})
    r = make(reader)
    live = Session(LIVE, "sid~a", "/", ["room"], "host_2", "1hab", time.time())
    _put(reader, f"s:{PID}", encode(live), 3)
    assert r.prepare("e1", "/", PID, None) is None
    assert r.stats["failed:error"] == 1


def test_a_hung_kafka_gets_an_answer_in_time(monkeypatch):
    """A read that hangs: the client is answered (a new connection) within
    the budget; once the hung decision has lasted twice the budget the next
    fail at once; when it ends, it leaves nothing behind."""
    monkeypatch.setattr(handshake_module, "PREPARE_BUDGET", 0.3)
    hang = threading.Event()
    reader = Reader()
    r = make(reader)
    saved(r, PID)
    reader.reads, reader.fail = [], {3: hang}
    started = time.monotonic()
    assert r.prepare("e1", "/", PID, None) is None
    assert time.monotonic() - started < 1.0
    time.sleep(0.4)  # hung for twice the budget: a hang, not a busy moment
    assert r.prepare("e2", "/", PID, None) is None
    assert time.monotonic() - started < 1.0
    assert reader.reads == [3], "the second must not queue behind the hung read"
    assert r.stats["failed:not-ready"] == 2
    hang.set()
    deadline = time.monotonic() + 5
    while r.handshake._overdue and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not r.handshake._overdue and not r.handshake._pending
    assert r.core.released == ["sid~a"], "the late decision's claim is let go"
    reader.fail = None
    assert r.prepare("e3", "/", PID, None) is not None


@pytest.mark.parametrize(("pid", "offset"), [
    ("x", None),
    ("3.short", None),
    (f"99.{PID.split('.')[1]}", None),  # no such partition
    ("3." + "a" * 5000, None),
    (PID, "junk"),
    (PID, "77hab.12"),  # a home partition that does not exist
    # PID is random per process: named ids, so that xdist's workers agree.
], ids=["no-dot", "short", "no-partition", "huge", "junk-offset", "no-home"])
def test_a_bogus_pid_or_offset_reads_nothing(pid, offset):
    r = make()
    assert r.prepare("e1", "/", pid, offset) is None
    assert r.store.reader.reads == []
    assert r.stats["failed:unknown"] == 1


def test_a_client_that_left_during_prepare_leaves_nothing():
    r = make()
    saved(r, PID)
    assert r.prepare("e1", "/", PID, None) is not None
    assert r.core.claimed == ["sid~a"]
    r.abandon("e1", "/")
    assert r.take_pending("e1", "/") is None
    assert r.core.released == ["sid~a"]


def test_a_newer_attempt_takes_over_from_one_still_connecting():
    """An earlier attempt of the same client holds the sid (connecting, its
    client gave up): it was refused as a duplicate; now that attempt's
    socket is closed and the newer one is recovered."""
    r = make()
    saved(r, PID)
    r.host.local["sid~a"] = "e-old"
    restore = r.prepare("e-new", "/", PID, None)
    assert restore is not None and restore.session.sid == "sid~a"
    assert r.host.closed == ["e-old"] and r.stats["superseded"] == 1


def test_an_older_attempt_that_lost_does_not_put_its_session_back():
    r = make()
    session = saved(r, PID)
    older = r.prepare("e-old", "/", PID, None)
    r.take_pending("e-old", "/")
    assert r.prepare("e-new", "/", PID, None) is not None
    puts = []
    r.store.put = lambda pid, s: puts.append(pid)
    r.abandoned(session.sid, "/", older)
    assert puts == []
    r.abandoned(session.sid, "/", r.take_pending("e-new", "/"))
    assert puts == [PID]


def test_a_connection_the_server_ended_is_not_recovered():
    """A kick (Server.disconnect) deletes the session and refuses the pid,
    even before the deletion can be read back."""
    r = make()
    pid = r.new_pid()
    session = Session(SAVED, "sid~a", "/", ["room"], r.owner, "1hab", time.time())
    r.store.put(pid, session)
    r.registered("sid~a", "/", pid, True)
    r.on_disconnect("sid~a", "/", SERVER_DISCONNECT)
    assert r.store.find(pid)[0] is None and r.live_sessions == 0
    r.store.put(pid, session)  # as if the tombstone were not read yet
    with pytest.raises(RecoveryFailed, match="on purpose"):
        r.handshake._restorable(pid, "/", None)
    assert session.sid not in r.announced


def test_browser_offsets_is_an_explicit_option():
    assert ConnectionStateRecovery().browser_offsets is True
    assert ConnectionStateRecovery(browser_offsets=False).browser_offsets is False
    with pytest.raises(ValueError, match="browser_offsets"):
        ConnectionStateRecovery(browser_offsets="no")


# -- the connect hook (socketio_hooks) with a real python-socketio Server ------

class HookManager(socketio.Manager):
    """python-socketio's Manager taking a recovered sid as KafkaManager's
    pre_connect does."""

    recovery = None

    def pre_connect(self, eio_sid, namespace):
        restore = self.recovery.take_pending(eio_sid, namespace)
        sid = restore.session.sid if restore else self.server.eio.generate_id()
        try:
            self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        except ValueDuplicationError:
            return None
        self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        if restore:
            self.recovery.begin(sid, namespace, restore.session)
        self.pending_connect.setdefault(namespace, []).append(sid)
        return sid


class ManagerHost(Host):
    """The host recovery sees: the manager's connections."""

    def __init__(self, mgr):
        super().__init__()
        self.mgr = mgr

    def is_local(self, sid, namespace):
        return self.mgr.is_sid_room(namespace, sid) if hasattr(self.mgr, "is_sid_room") \
            else sid in self.mgr.rooms.get(namespace, {}).get(None, {})

    def eio_sid_from_sid(self, sid, namespace):
        return self.mgr.eio_sid_from_sid(sid, namespace)


def hooked_server(**options):
    mgr = HookManager()
    server = socketio.Server(client_manager=mgr, async_mode="threading")
    server.on("connect", lambda sid, environ, auth=None: True)
    r = make(**options)
    r.host = ManagerHost(mgr)
    r.host.server = server
    mgr.recovery = r
    socketio_hooks.install(server, r)
    sent = []
    server._send_packet = lambda eio_sid, pkt: sent.append((eio_sid, pkt.packet_type))
    return server, mgr, r, sent


def open_socket(server, eio_sid):
    server.eio.sockets[eio_sid] = SimpleNamespace(closed=False)
    server.environ[eio_sid] = {"REMOTE_ADDR": "127.0.0.1"}


def test_a_client_that_leaves_while_its_recovery_is_decided_leaves_no_ghost():
    """It used to stay registered with the restored sid (events to its rooms
    held for it forever), KeyError out of the hook, and every later attempt
    of the same client was refused as a duplicate."""
    server, mgr, r, sent = hooked_server()
    saved(r, PID)
    decide = r.prepare

    def prepare_then_leave(eio_sid, namespace, pid, offset):
        restore = decide(eio_sid, namespace, pid, offset)
        server.eio.sockets.pop(eio_sid)  # the client gave up meanwhile
        server.environ.pop(eio_sid)
        return restore

    r.prepare = prepare_then_leave
    open_socket(server, "e1")
    server._handle_connect("e1", "/", {"pid": PID})
    assert not r.host.is_local("sid~a", "/") and "sid~a" not in r.replaying
    assert r.core.released == ["sid~a"] and sent == []
    r.prepare = decide
    open_socket(server, "e2")
    server._handle_connect("e2", "/", {"pid": PID})
    assert mgr.is_connected("sid~a", "/") and mgr.eio_sid_from_sid("sid~a", "/") == "e2"
    assert sent == [("e2", packet.CONNECT)] and r.is_recovered("sid~a", "/")


def test_a_client_that_leaves_during_the_connect_handler_is_saved_not_registered():
    """Gone between its registration and the app's connect handler: the
    handler is not given a missing environ, and the session stays."""
    server, mgr, r, sent = hooked_server()
    session = saved(r, PID)
    real_pre_connect = mgr.pre_connect

    def pre_connect_then_leave(eio_sid, namespace):
        sid = real_pre_connect(eio_sid, namespace)
        server.eio.sockets.pop(eio_sid)
        server.environ.pop(eio_sid)
        return sid

    mgr.pre_connect = pre_connect_then_leave
    puts = []
    r.store.put = lambda pid, s: puts.append((pid, s))
    open_socket(server, "e1")
    server._handle_connect("e1", "/", {"pid": PID})
    assert not r.host.is_local("sid~a", "/") and "sid~a" not in r.replaying
    assert puts == [(PID, session)] and sent == []


def test_attempts_leave_no_bookkeeping_behind():
    """Every attempt's entry goes when it ends: refused, abandoned, or
    registered."""
    r = make()
    session = saved(r, PID)
    assert r.prepare("e1", "/", "3.bogus", None) is None
    assert r.prepare("e2", "/", new_pid(4), None) is None  # unknown
    r.prepare("e3", "/", PID, None)
    r.abandon("e3", "/")
    restore = r.prepare("e4", "/", PID, None)
    r.take_pending("e4", "/")
    r.begin(session.sid, "/", restore.session)
    r.registered(session.sid, "/", PID, True)
    assert r.handshake._attempt_of == {} and r.handshake._pending == {}



def test_a_claim_two_attempts_share_goes_only_with_the_last():
    """The first attempt's client left while a second attempt, already
    holding the same claim, was still being decided: the claim stays
    (letting it go lost the live events to the client's sid in the JS
    test of a retried recovery)."""
    r = make()
    saved(r, PID)
    assert r.prepare("e1", "/", PID, None) is not None
    caught_up, go_on = threading.Event(), threading.Event()
    catch_up = r.handshake._catch_up

    def slow_catch_up(session):
        caught_up.set()
        go_on.wait(5)
        catch_up(session)

    r.handshake._catch_up = slow_catch_up
    second = []
    task = _thread(lambda: second.append(r.prepare("e2", "/", PID, None)))
    assert caught_up.wait(5)
    r.abandon("e1", "/")
    assert r.core.released == [] and r.claiming("sid~a")
    go_on.set()
    task.join(5)
    assert second[0] is not None and r.take_pending("e2", "/") is second[0]
    assert r.core.released == [] and not r.claiming("sid~a")


def test_a_second_attempt_waits_for_the_claim_the_first_is_making():
    """The core's claim returns at once to a second caller while the first
    still positions the partitions: the second attempt's replay then began
    before them, and the events sent to the client's sid in between were
    lost (the JS test of a retried recovery)."""
    r = make()
    saved(r, PID)
    positioned, claims = threading.Event(), []

    def claim(sid):  # as KafkaCore.claim: a known sid returns at once
        claims.append(sid)
        if len(claims) == 1:
            time.sleep(0.5)
            positioned.set()

    r.core.claim = claim
    first = _thread(r.prepare, "e1", "/", PID, None)
    while not claims:
        time.sleep(0.01)
    assert r.prepare("e2", "/", PID, None) is not None
    assert positioned.is_set(), "the second attempt went on before the partitions were read"
    first.join(5)


@pytest.mark.parametrize("browser_offsets", [True, False])
def test_browsers_get_offsets_unannounced_only_with_browser_offsets(browser_offsets):
    server, mgr, r, sent = hooked_server(browser_offsets=browser_offsets)
    open_socket(server, "e1")
    server.environ["e1"]["HTTP_USER_AGENT"] = "Mozilla/5.0 (X11; Linux x86_64)"
    server._handle_connect("e1", "/", None)
    (sid,) = mgr.rooms["/"][None].keys()
    assert (sid in r.announced) is browser_offsets
