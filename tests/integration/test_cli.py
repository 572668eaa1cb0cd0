"""The flask-signalr-kafka command line against the real broker and fleet."""
import subprocess
import sys
import threading

import pytest

from flask_signalr_kafka.cli.broker import free_port
from testkit.harness import unique

# The combinations besides the default one that run this module (make test).
pytestmark = [pytest.mark.tansu, pytest.mark.confluent]


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "flask_signalr_kafka", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_create_topics_is_idempotent(broker):
    prefix = unique("cli")
    first = cli("create-topics", "--bootstrap-servers", broker.bootstrap, "--prefix", prefix)
    assert first.returncode == 0, first.stderr
    assert f"{prefix}-send-user" in first.stdout and "created:" in first.stdout
    again = cli("create-topics", "--bootstrap-servers", broker.bootstrap, "--prefix", prefix)
    assert again.returncode == 0 and "all topics exist" in again.stdout


def test_emit_and_tail(fleet, connect):
    alice = unique("alice")
    tab = connect(fleet.b, user=alice)
    common = ("--bootstrap-servers", fleet.broker.bootstrap, "--prefix", fleet.prefix)
    tail = subprocess.Popen(
        [sys.executable, "-m", "flask_signalr_kafka", "tail", *common, "--max-records", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # tail says on stderr when it follows the topics; emit after that.
    assert "following" in tail.stderr.readline()
    sent = cli("emit", *common, "--user", alice, "note", '{"n": 1}', "two")
    assert sent.returncode == 0, sent.stderr
    tab.wait_for("note", ({"n": 1}, "two"))
    # The servers' fleet heartbeats are printed too: read up to the emit's.
    timer = threading.Timer(30, tail.kill)
    timer.start()
    try:
        out = next(line for line in tail.stdout if line.startswith("send-user"))
    finally:
        timer.cancel()
        tail.kill()
        tail.communicate()
    assert f"key='{alice}'" in out
    assert "target='note'" in out and "args=[{'n': 1}, 'two']" in out


def test_unreachable_broker_is_a_clear_error():
    address = f"127.0.0.1:{free_port()}"
    for command in ("create-topics", "emit", "tail"):
        extra = ["e"] if command == "emit" else []
        result = cli(command, "--bootstrap-servers", address, "--timeout", "1", *extra)
        assert result.returncode == 2
        assert f"could not reach Kafka at {address}" in result.stderr
