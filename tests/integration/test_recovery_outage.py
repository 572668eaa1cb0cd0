"""A client that comes back while Kafka hangs gets an answer within 10 s
(issue 22, item 5): the broker is frozen (SIGSTOP) on a cluster of this
module's own, the official JS client drops and reconnects to the other
dyno, whose recovery cannot read the sessions topic. It used to get no
answer at all (kafka-python's KafkaTimeoutError escaped the hook after
its request timeout, and no CONNECT nor CONNECT_ERROR was ever sent)."""
import signal
import time

import pytest
from test_recovery import Streams, add_client, js, received, servers, settled  # noqa: F401

from flask_signalr_kafka.cli.broker import start_broker
from testkit.harness import Fleet, wait_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def own_broker(artifacts, engine):
    if engine != "kafka":
        pytest.skip("freezes an Apache Kafka node")
    cluster = start_broker("kafka", nodes=1, log_dir=artifacts)
    yield cluster
    cluster.stop()


def test_a_client_back_while_kafka_hangs_is_answered_in_time(own_broker, artifacts, js):  # noqa: F811
    fleet = Fleet(own_broker, artifacts)
    try:
        a, b = servers(fleet, "A", "B")
        cid, sid = add_client(js, [a, b], announce=True,
                              reconnectionDelay=100, reconnectionDelayMax=300)
        Streams(fleet.client(b), cid, sid).one_round()
        settled(js, cid, 1)
        node = own_broker.nodes[0]
        node.signal(signal.SIGSTOP)
        try:
            dropped = time.time()
            assert js.drop("cut", ids=[cid])["count"] == 1
            wait_until(lambda: len(received(js, cid)[0]["connectLog"]) >= 2, 25, 0.1,
                       "an answer to the reconnect")
            client, _ = received(js, cid)
            again = client["connectLog"][1]
            waited = again["t"] / 1000 - dropped
            print(f"answered {waited:.1f} s after the drop: recovered={again['recovered']}")
        finally:
            node.signal(signal.SIGCONT)
        assert again["recovered"] is False and str(b.port) in str(again["upstream"])
        assert waited < 10.0, f"answered {waited:.1f} s after the drop"
    finally:
        fleet.close()
