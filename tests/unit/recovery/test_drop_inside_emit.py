"""A drop noticed inside an emit (issue 22, the confluent soak of seed
873330, replayed: "the saved window of ... is not exact: an emit it counts
was not published within 1 s", then "window-lost").

engine.io closes a socket whose client missed its ping when something is
sent to it (``Socket.send`` checks the ping timeout first), so the
disconnect handler, and recovery's save of the session, ran inside the emit
that was sending. The save waits for every emit it counts to be published,
this one included: it waited for itself for a second, and the session was
saved inexact. The save must run once that emit is published, and its
window must hold the emit's record (the dead socket never got it).
"""
import asyncio
import time
from types import SimpleNamespace

from flask_signalr_kafka import ConnectionStateRecovery
from flask_signalr_kafka.managers import socketio_hooks
from flask_signalr_kafka.recovery.recovery import Recovery
from flask_signalr_kafka.runtime.concurrency import Runtime
from tests.unit.recovery.test_recovery_state import FakeCore


def dyno():
    eio = SimpleNamespace(ping_interval=5, ping_timeout=5)
    host = SimpleNamespace(get_rooms=lambda sid, ns: [sid, "r1"],
                           is_local=lambda sid, ns: False, server=SimpleNamespace(eio=eio))
    core = FakeCore()
    core.runtime = Runtime.threads("threading")
    r = Recovery(core, host, ConnectionStateRecovery())
    saved = []
    r.store.put = lambda pid, session: saved.append(session)
    r.state.pids[("sid~a", "/")] = "pid"
    return r, saved


def test_a_drop_noticed_inside_an_emit_is_saved_once_the_emit_is_published():
    r, saved = dyno()
    seq = r.log.next_emit()  # this thread emits to r1 ...
    coords: list = []
    r.log.step(coords)  # ... one step to its local clients ...
    began = time.monotonic()
    r.on_disconnect("sid~a", "/", "ping timeout")  # ... sid~a's socket found dead
    inside = time.monotonic() - began
    landed = SimpleNamespace(partition=3, offset=41)
    r.log.track(SimpleNamespace(add_callback=lambda fn: fn(landed),
                                add_errback=lambda fn: None), coords, "send-group", "r1")
    r.log.emit_done(seq)
    assert r.saves._saving["pid"].done.wait(5.0)
    assert inside < 0.5, f"the emit waited {inside:.1f} s for the save"
    session = saved[-1]
    assert session.exact, "refused as window-lost at its recovery"
    assert [entry[1:] for entry in session.window] == [("send-group", 3, 41)]
    assert session.rooms == ["r1"]


def test_a_drop_outside_an_emit_is_saved_before_the_disconnect_handler_returns():
    """python-socketio forgets the connection once the handler returns."""
    r, saved = dyno()
    r.log.emit_done(r.log.next_emit())
    r.on_disconnect("sid~a", "/", "transport close")
    assert saved and saved[-1].exact


def test_under_asyncio_a_drop_noticed_inside_an_emit_does_not_wait_for_it():
    """The same inside an emit of the event loop: the disconnect hook awaited
    the save (in a thread), which waited for the emit awaiting the hook."""
    r, saved = dyno()

    async def run():
        loop = asyncio.get_running_loop()

        async def call(fn):
            return await loop.run_in_executor(None, fn)

        seq = r.log.next_emit()  # an emit on the loop, sending to sid~a ...
        coords: list = []
        r.log.step(coords)
        began = time.monotonic()
        await socketio_hooks._forget(r, call, "sid~a", "/", "ping timeout")  # ... found dead
        inside = time.monotonic() - began
        landed = SimpleNamespace(partition=3, offset=41)
        r.log.track(SimpleNamespace(add_callback=lambda fn: fn(landed),
                                    add_errback=lambda fn: None), coords, "send-group", "r1")
        r.log.emit_done(seq)
        deadline = time.monotonic() + 5.0
        while not r.saves._saving["pid"].done.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the save, in its thread
        return inside

    inside = asyncio.run(run())
    assert inside < 0.5, f"the emit waited {inside:.1f} s for the save"
    assert saved[-1].exact
    assert [entry[1:] for entry in saved[-1].window] == [("send-group", 3, 41)]


def test_a_save_apart_keeps_where_the_connection_stood_when_it_was_forgotten():
    """Records read after the connection was forgotten, for a room with no
    other member here, make no step: the save, run once the emit is
    published, must not take positions past them (they were never sent)."""
    r, saved = dyno()
    at = {("send-group", 3): 40}
    r.core.positions = lambda bases: dict(at)
    seq = r.log.next_emit()
    coords: list = []
    r.log.step(coords)
    r.on_disconnect("sid~a", "/", "ping timeout")
    at[("send-group", 3)] = 45  # five records for r1 read since: no one here to get them
    landed = SimpleNamespace(partition=3, offset=45)
    r.log.track(SimpleNamespace(add_callback=lambda fn: fn(landed),
                                add_errback=lambda fn: None), coords, "send-group", "r1")
    r.log.emit_done(seq)
    assert r.saves._saving["pid"].done.wait(5.0)
    assert saved[-1].positions == [("send-group", 3, 40)]
