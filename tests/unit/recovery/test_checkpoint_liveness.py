"""Whether a session's dyno is alive, from its checkpoints (issue 22, item
5): a live dyno whose clock differs from ours, or whose checkpoint rounds
are slow, must not count as dead (its clients would be taken over while it
still holds them: duplicates); a dead one must, soon; and pruning must not
hold the checkpoints back."""
import threading
import time
from types import SimpleNamespace

import pytest

from flask_signalr_kafka.recovery import resume as resume_module
from flask_signalr_kafka.recovery import saves as saves_module
from flask_signalr_kafka.recovery.sessions import (
    Checkpoint,
    decode_checkpoint,
    encode,
    home_partition,
)
from flask_signalr_kafka.runtime.concurrency import Runtime
from tests.unit.recovery.test_recovery_state import _put, recovery


class Clocks:
    """Our monotonic and wall clocks, moved by the test."""

    def __init__(self):
        self.mono, self.wall = 500.0, 1_800_000_000.0

    def advance(self, seconds):
        self.mono += seconds
        self.wall += seconds


@pytest.fixture
def clocks(monkeypatch):
    clocks = Clocks()
    monkeypatch.setattr(resume_module, "time", SimpleNamespace(
        monotonic=lambda: clocks.mono, time=lambda: clocks.wall, sleep=time.sleep))
    return clocks


def write(r, owner, at, step):
    """``owner``'s checkpoint, in its home partition."""
    _put(r.store.reader, f"d:{owner}", encode(Checkpoint(owner, "cd", at, [], 0, step=step)),
         home_partition(owner, 10))


def watch(r, clocks, every, skew=0.0, seconds=20.0):
    """The other dyno writes a checkpoint every ``every`` seconds on a clock
    ``skew`` seconds off ours; return what ``_alive`` said, 0.1 s apart."""
    said, next_write, step = [], 0.0, 0
    t = 0.0
    while t < seconds:
        if t >= next_write:
            step += 1
            write(r, "other", clocks.wall + skew, step)
            next_write += every
        said.append(r.handshake.resume.alive("other"))
        clocks.advance(0.1)
        t += 0.1
    return said


@pytest.mark.parametrize("skew", [-2.5, 2.5])
def test_a_live_dyno_whose_clock_differs_is_alive(clocks, skew):
    """Its clock 2.5 s behind or ahead of ours; before, a checkpoint 2.5 s
    'old' counted it dead after 1.75 s."""
    assert all(watch(recovery(), clocks, every=0.25, skew=skew))


def test_a_live_dyno_with_slow_rounds_is_alive(clocks):
    """A round that waits a second for acks, another for a slow write: a
    checkpoint every 2 s. Before, dead 1.75 s after each."""
    assert all(watch(recovery(), clocks, every=2.0))


def test_a_dead_dyno_counts_dead_within_the_bound(clocks):
    r = recovery()
    assert all(watch(r, clocks, every=0.25, seconds=2.0))
    # It stops writing: dead once the bound has passed on our clock.
    said = []
    for _ in range(60):
        said.append(r.handshake.resume.alive("other"))
        clocks.advance(0.1)
    first_dead = said.index(False) * 0.1
    assert r.state.liveness() - 0.3 <= first_dead <= r.state.liveness() + 0.3
    assert not any(said[int(first_dead * 10) + 1:])


def test_a_checkpoint_long_old_when_first_seen_is_dead_at_once(clocks):
    r = recovery()
    write(r, "other", clocks.wall - 10, 7)
    assert r.handshake.resume.alive("other") is False
    assert r.handshake.resume.alive("nobody") is False


def test_pruning_does_not_hold_the_checkpoints_back(monkeypatch):
    """Pruning reads partitions for up to seconds; in the checkpoint loop it
    delayed the next checkpoint by as long."""
    monkeypatch.setattr(saves_module, "_PRUNE_EVERY", 0.2)
    r = recovery(checkpoint_interval=0.05)
    r.core.runtime = Runtime.threads("threading")
    written = []
    put = r.store.put_checkpoint
    r.store.put_checkpoint = lambda checkpoint: (written.append(time.monotonic()),
                                                 put(checkpoint))
    pruned = threading.Event()

    def slow_prune(partition, liveness):
        pruned.set()
        time.sleep(2.0)
        return 0

    r.store.prune = slow_prune
    loop = threading.Thread(target=r.saves._run_checkpoints, daemon=True)
    loop.start()
    try:
        assert pruned.wait(5)
        time.sleep(2.0)
    finally:
        r.saves._stopping = True
        loop.join(5)
    gaps = [b - a for a, b in zip(written, written[1:], strict=False)]
    assert gaps and max(gaps) < 1.0, gaps
    checkpoint = decode_checkpoint(next(iter(r.store.reader.read(r.store.home, 0)
                                            .checkpoints.values())))
    assert checkpoint.owner == r.owner
