"""The soak's ledger on an event a plain client got in the same millisecond
as its first drop (issue 22, the confluent soak of seed 873700: c1 and c9 got
d2/all #16 at the instant their balancers closed them, then again in their
first recovery, and the ledger counted a failure). An event received on a
socket was had before that socket's close: a first-drop repeat."""
from test_soak_ledger import PLAIN, T0, history, ledger, sent_all

from testkit.soak import Fault


def test_an_event_got_in_the_millisecond_of_the_first_drop_is_a_first_drop_repeat():
    sent = sent_all(6)
    fault = Fault(1, "drop", T0 + 4.0, "d0", ["c1"])
    arrivals = [(1.1 + n, "all", n, None) for n in range(3)]
    arrivals += [(4.0, "all", 3, None)]  # the drop's own millisecond
    arrivals += [(5.6, "all", 2, None), (5.6, "all", 3, None)]  # replayed: the window
    arrivals += [(5.6, "all", 4, None), (6.1, "all", 5, None)]
    rep = history([(0, "A", False, None), (5.5, "A", True, None)],
                  [(4.0, "transport close")], sorted(arrivals))
    row = ledger(PLAIN, rep, sent, [fault])
    assert (row["lost"], row["first_drop_repeats"], row["dup"]) == (0, 2, 0), row["failures"]
