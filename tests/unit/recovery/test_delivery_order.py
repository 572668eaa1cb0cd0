"""Steps reach a client in the order of their numbers, whichever threads
deliver them (issue 22, soak seed 873700 on the threading dyno: a plain
client got step 1849 before step 1846, its last offset named 1846, and its
next recovery sent 1849's event again). In threading mode the consumer's
thread and the handlers' threads (a dyno's own emits are delivered at emit
time) deliver side by side: a step was numbered under the delivery log's
lock and written after it."""
import json
import threading
import time

import socketio
from socketio import manager

from flask_signalr_kafka.managers import socketio_hooks
from flask_signalr_kafka.wire import offsets
from tests.unit.recovery.test_drop_inside_emit import dyno
from tests.unit.recovery.test_recovery_state import recovery


def one_client(send, room):
    """A python-socketio manager with one connection, s1, in ``room``, whose
    writes go to ``send``; and a Recovery to which s1 announced itself."""
    server = socketio.Server()
    server._send_eio_packet = send
    mgr = manager.Manager()
    mgr.set_server(server)
    mgr.basic_enter_room("s1", "/", None, eio_sid="e1")
    mgr.basic_enter_room("s1", "/", room, eio_sid="e1")
    r = recovery()
    r.announced.add("s1")
    return mgr, r


def test_a_client_receives_the_steps_of_two_threads_in_their_order():
    arrived = []
    writing, release = threading.Event(), threading.Event()

    def send(eio_sid, pkt):
        if threading.current_thread().name == "consumer":
            writing.set()
            release.wait(5)  # its step is numbered; its write is late
        arrived.append(json.loads(pkt.encode()[2:])[-1])

    mgr, r = one_client(send, "r1")

    def deliver(data, coords):
        socketio_hooks.emit(mgr, r, "ev", data, "/", "r1", None, coords)

    consumer = threading.Thread(target=deliver, args=("read", [["send-group", "r1", 0, 5]]),
                                name="consumer")
    consumer.start()
    assert writing.wait(5)
    handler = threading.Thread(target=deliver, args=("own", []), name="handler")
    handler.start()  # a handler's emit, delivered at emit time
    handler.join(0.3)
    release.set()
    consumer.join(5)
    handler.join(5)
    steps = [offsets.parse(given).step for given in arrived]
    assert steps == sorted(steps), f"steps arrived as {steps}: its last offset understates"


def test_a_drop_noticed_inside_a_delivery_does_not_wait_for_emits_behind_it():
    """The send that finds a socket dead runs the disconnect handler, and the
    save, inside the delivery: a handler's emit counted meanwhile waits for
    that delivery to end, and the save waits for that emit. Run inline, the
    save waited its whole second and the session was refused as window-lost."""
    r, saved = dyno()
    counted, delivered = threading.Event(), threading.Event()

    def handler_emit():
        seq = r.log.next_emit()
        counted.set()
        with r.log.delivering():  # its local delivery, behind the consumer's
            delivered.set()
        r.log.emit_done(seq)

    with r.log.delivering():  # the consumer thread sends ...
        emitter = threading.Thread(target=handler_emit)
        emitter.start()
        assert counted.wait(5)
        began = time.monotonic()
        r.on_disconnect("sid~a", "/", "ping timeout")  # ... and finds sid~a's socket dead
        inside = time.monotonic() - began
    emitter.join(5)
    assert delivered.is_set() and r.saves._saving["pid"].done.wait(5.0)
    assert inside < 0.5, f"the delivery waited {inside:.1f} s for the save"
    assert saved[-1].exact, "refused as window-lost at its recovery"
