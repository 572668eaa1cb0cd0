"""`flask-signalr-kafka top` against a real broker: the log ends and the
records per second it shows after known traffic."""
import subprocess
import sys
import threading
import time

import pytest
from kafka import KafkaProducer

from flask_signalr_kafka.transport.topics import KafkaTopicConfig
from testkit.harness import unique

#: It measures time: under xdist, no other test marked serial runs beside it.
pytestmark = pytest.mark.serial


def top(bootstrap, prefix, *extra):
    return subprocess.run(
        [sys.executable, "-m", "flask_signalr_kafka", "top", "--bootstrap-servers", bootstrap,
         "--prefix", prefix, *extra],
        capture_output=True, text=True, timeout=60,
    )


def screens(stdout, names):
    """[{topic: (rec/s, log end)}] of each screen, in order."""
    result = []
    for block in stdout.strip().split("\n\n"):
        rows = {}
        for line in block.splitlines():
            cells = line.split()
            if cells and cells[0] in names and cells[1] != "-":
                rows[cells[0]] = (float(cells[2].replace(",", "")),
                                  int(cells[3].replace(",", "")))
        result.append(rows)
    return result


def produce(bootstrap, topic, n, key=True):
    # One record a batch: every engine's ListOffsets is then exact (Tansu's
    # "latest" can be short after a multi-record batch).
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    for i in range(n):
        producer.send(topic, b"x", key=str(i).encode() if key else None)
        producer.flush()
    producer.close()


def test_log_ends_and_rates(broker):
    prefix = unique("top")
    subprocess.run([sys.executable, "-m", "flask_signalr_kafka", "create-topics",
                    "--bootstrap-servers", broker.bootstrap, "--prefix", prefix],
                   check=True, capture_output=True, timeout=60)
    names = KafkaTopicConfig(prefix=prefix).names
    produce(broker.bootstrap, names["send-conn"], 37)
    produce(broker.bootstrap, names["send-all"], 5, key=False)

    # A steady 50 records/s on send-group while top watches three intervals.
    stop = threading.Event()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    sent = []

    def stream():
        # At most 50/s, never catching up after a slow send: a catch-up burst
        # is a real rate above 50/s, and top rightly showed 75.1 (CI at
        # de4515c, a send slowed by a leader change on topics a second old).
        due = time.monotonic()
        while not stop.is_set():
            producer.send(names["send-group"], b"x", key=b"room").get(10)
            sent.append(time.monotonic())
            due = max(due + 1 / 50, time.monotonic())
            time.sleep(max(0.0, due - time.monotonic()))

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        time.sleep(1.0)
        result = top(broker.bootstrap, prefix, "--iterations", "3")
    finally:
        stop.set()
        thread.join()
        producer.close()
    assert result.returncode == 0, result.stderr
    assert "\033" not in result.stdout  # not a terminal: no cursor control
    shown = screens(result.stdout, set(names.values()))
    assert len(shown) == 3
    for screen in shown:
        assert screen[names["send-conn"]] == (0.0, 37)
        assert screen[names["send-all"]] == (0.0, 5)
        assert screen[names["ack"]] == (0.0, 0)
        assert 25 <= screen[names["send-group"]][0] <= 75, result.stdout
    ends = [s[names["send-group"]][1] for s in shown]
    assert ends == sorted(ends) and ends[-1] - ends[0] >= 50  # two intervals at 50/s
    # Each rate is the growth of the log end it shows over its interval: at
    # least the 1 s asked for, at most a few under load.
    rates = [s[names["send-group"]][0] for s in shown]
    for before, after, rate in zip(ends[:-1], ends[1:], rates[1:], strict=True):
        assert (after - before) / 3 <= rate <= (after - before) * 1.05 + 1, result.stdout
    assert ends[-1] <= len(sent)


def test_missing_topics_and_once(broker):
    prefix = unique("top")
    result = top(broker.bootstrap, prefix, "--once")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == len(KafkaTopicConfig(prefix=prefix).names) + 1  # and the fleet topic
    assert all(line.endswith("(missing)") for line in lines)
    assert "records/s in all" in result.stdout.splitlines()[0]
