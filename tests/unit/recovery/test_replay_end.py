"""The end of a replay and a live step for the same connection, in two
threads (threading mode): the step is held back while the replay runs
(``Recovery.replaying``), and the replay ends when it finds nothing more
held back. Held back just after that look, and before the replay let the
connection go live, the event was never sent."""
import json
import threading

from flask_signalr_kafka.managers import socketio_hooks
from flask_signalr_kafka.recovery.recovery import Restore
from flask_signalr_kafka.recovery.sessions import SAVED, Session
from tests.unit.recovery.test_delivery_order import one_client


class RacedHeld(list):
    """The held-back events of a replaying connection: the moment the replay
    finds none, the consumer's thread delivers one more step to it."""

    def __init__(self, deliver):
        super().__init__()
        self.consumer = threading.Thread(target=deliver)

    def __bool__(self):
        found = len(self) > 0
        if not found and not self.consumer.is_alive() and self.consumer.ident is None:
            self.consumer.start()
            self.consumer.join(0.3)  # it may have to wait for the replay to end
        return found


def test_a_step_held_back_as_the_replay_ends_is_sent():
    arrived = []
    mgr, r = one_client(lambda eio_sid, pkt: arrived.append(json.loads(pkt.encode()[2:])[1]),
                        "s1")
    held = r.replaying["s1"] = RacedHeld(lambda: socketio_hooks.emit(
        mgr, r, "ev", "live", "/", "s1", None, [["send-conn", "s1", 0, 9]]))
    session = Session(SAVED, "s1", "/", [], "host_2", "cd", 0.0)
    missed = [([["send-conn", "s1", 0, 8]], "ev", ["missed"])]
    for event, args, given in r.replay_steps(Restore("pid", session, None), "s1", missed):
        socketio_hooks.send_event(mgr.server, "e1", "/", event, args, given)
    held.consumer.join(5)
    assert held.consumer.ident is not None and not held.consumer.is_alive()
    assert arrived == ["missed", "live"], "the event held back as the replay ended was lost"
