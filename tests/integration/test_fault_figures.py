"""The fault tests' figures (faults.py) on made-up runs, no broker: what
counts as a delivery the broker's copies do not account for.

CI at d895dcf failed the uvicorn outage run with ``duplicated=14 >
held_twice=13``: the check compared deliveries beyond the first with the
number of records held more than once, so a record a producer's retries
wrote three times (two deliveries beyond the first, one record "held
twice") failed it. The figure is now per record: ``redelivered`` counts
deliveries beyond the copies the broker holds of that record."""
from collections import Counter

from faults import Stream


class FakeReceiver:
    def __init__(self, origin: str, deliveries: Counter) -> None:
        self.arrivals = [(float(i), f"{origin}|{ident.replace(':', '|')}")
                         for i, ident in enumerate(deliveries.elements())]

    def received(self, origin: str) -> list[tuple[float, str, str]]:
        out = []
        for at, tag in self.arrivals:
            source, kind, n = tag.split("|")
            if source == origin:
                out.append((at, kind, f"{kind}:{n}"))
        return out


def figures(held: Counter, delivered: Counter):
    """Origin A's records ("kind:n"): ``held`` copies on the broker,
    ``delivered`` times at B's receiver."""
    stream = Stream.__new__(Stream)
    stream.started = 0.0
    stream.reports = {"A": {"emitted": list(held), "acked": list(held), "failed": [],
                            "raised": [], "joins": []}}
    stream.rx = {"B": FakeReceiver("A", delivered)}
    stream.held = lambda: Counter({f"A|{ident}": n for ident, n in held.items()})
    return stream.figures("made-up")


def test_a_record_written_three_times_may_be_delivered_three_times():
    held = Counter({"all:1": 3, "room:2": 2, "sid:3": 1})
    fig = figures(held, held)
    assert (fig.duplicated, fig.held_twice, fig.held_extra) == (3, 2, 3)
    assert fig.redelivered == 0, fig.line()
    assert fig.lost == 0


def test_a_delivery_beyond_the_copies_held_is_counted():
    held = Counter({"all:1": 2, "room:2": 1, "sid:3": 1})
    delivered = Counter({"all:1": 3, "room:2": 2, "sid:3": 1})
    fig = figures(held, delivered)
    assert fig.redelivered == 2, fig.line()
    assert fig.extra["redelivered_of"] == {"A|all:1": (3, 2), "A|room:2": (2, 1)}


def test_a_record_delivered_but_not_found_on_the_broker_counts_once():
    # Not read back (the broker's read stopped early): its first delivery is
    # not a repeat.
    fig = figures(Counter({"all:1": 1}), Counter({"all:1": 1, "all:2": 2}))
    assert fig.redelivered == 1, fig.line()
