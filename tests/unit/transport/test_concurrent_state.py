"""State that consumer threads, the event loop and handlers change at once:
the delivery log's step ring, the home partitions' claims and the core's
claim times. Each test reads while another thread writes, as a dyno does
under load in threading mode, and fails with the "mutated during iteration"
errors these reads once raised."""
import threading
import time

from flask_signalr_kafka.recovery.steps import DROP_WINDOW, DeliveryLog
from flask_signalr_kafka.transport.core import KafkaCore
from flask_signalr_kafka.transport.home_partitions import HomePartitions

#: Seconds each race runs: long enough for hundreds of thread switches.
RACE = 1.5


def race(write, read, seconds=RACE):
    """Run ``write`` in a loop on a thread while ``read`` runs in a loop
    here; return the errors either raised."""
    done = threading.Event()
    errors = []

    def writer():
        while not done.is_set():
            try:
                write()
            except RuntimeError as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not errors:
            try:
                read()
            except RuntimeError as exc:
                errors.append(exc)
    finally:
        done.set()
        thread.join(5)
    return errors


def busy_log(steps=50_000):
    log = DeliveryLog(window_steps=steps * 2)
    log.tag = "0h1"
    for n in range(steps):
        log.step([["send-all", None, 0, n]])
    return log


def test_windows_while_steps_are_appended():
    """A drop's window is read while consumers deliver: before, iterating
    the ring raised "deque mutated during iteration" out of the disconnect
    hook, and the session was never saved."""
    log = busy_log()
    n = iter(range(10**9))
    errors = race(lambda: log.step([["send-all", None, 1, next(n)]]),
                  lambda: log.windows({"sid~a": ["r"]}, 3600))
    assert errors == []
    window, _ = log.windows({"sid~a": ["r"]}, 3600)["sid~a"]
    assert len(window) == min(log.last_step, 100_000)


def test_checkpoint_while_steps_are_appended(monkeypatch):
    monkeypatch.setattr("flask_signalr_kafka.recovery.steps.TAIL_STEPS", 10**6)  # the whole ring
    log = busy_log()
    n = iter(range(10**9))
    errors = race(lambda: log.step([["send-all", None, 1, next(n)]]),
                  lambda: log.checkpoint("me", [], time.sleep, DROP_WINDOW))
    assert errors == []


def test_checkpoint_tail_emit_seq_is_the_step_before_the_tail(monkeypatch):
    """The emit counter before the tail comes from the step just before it,
    also when the tail is cut by its length limit."""
    monkeypatch.setattr("flask_signalr_kafka.recovery.steps.TAIL_STEPS", 4)
    log = DeliveryLog(window_steps=100)
    log.tag = "0h1"
    for n in range(10):
        log.next_emit()
        log.step([["send-all", None, 0, n]])
    checkpoint = log.checkpoint("me", [], time.sleep, DROP_WINDOW)
    assert checkpoint.tail_from == 7
    assert checkpoint.tail_emit_seq == 6  # the emit counter at step 6
    assert [e[0] for e in checkpoint.tail] == [7, 8, 9, 10]
    assert not checkpoint.tail_whole


def test_conn_wanted_while_sids_are_claimed_and_released():
    """The send-conn consumer asks which partitions to read while handlers
    claim and release sids: before, "dictionary changed size during
    iteration" failed the assignment, and a claim waited out its timeout."""
    home = HomePartitions("host_" + "ab" * 16, 100)
    sids = [f"sid~other{i:06d}" for i in range(20_000)]
    for sid in sids[:10_000]:
        home.claim(sid)
    i = iter(range(10**9))

    def churn():
        k = next(i) % 10_000
        home.release(sids[k])
        home.claim(sids[10_000 + k])
        home.claim(sids[k])

    errors = race(churn, lambda: home.conn_wanted(range(100)))
    assert errors == []


def core():
    from flask_signalr_kafka.transport.topics import KafkaTopicConfig

    return KafkaCore(server_name="host_" + "ab" * 16, producer_config={}, consumer_config={},
                     admin_config={}, topic_config=KafkaTopicConfig(), await_produce=False,
                     connect_timeout=1, home_partitions=False, write_only=False,
                     sessions=True, fetch_wait_given=False)


def test_claims_while_others_are_claimed_and_released():
    """Recoveries claim sids on handler threads while connections leave:
    before, a claim's sweep of stale claims raised "dictionary changed size
    during iteration" and the recovery failed."""
    kafka = core()
    for k in range(20_000):
        kafka.claim(f"sid~held{k}")
    i = iter(range(10**9))

    def churn():
        k = next(i)
        kafka.claim(f"sid~new{k}")
        kafka.release(f"sid~new{k}")

    j = iter(range(10**9))
    errors = race(churn, lambda: kafka.claim(f"sid~reader{next(j)}"))
    assert errors == []
