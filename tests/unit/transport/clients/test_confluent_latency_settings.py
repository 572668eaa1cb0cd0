"""The librdkafka settings a paced record's latency depends on (issue 23):
each record is sent as soon as it is produced."""
from flask_signalr_kafka import KafkaManager


def test_a_produced_record_does_not_wait_for_a_linger_or_an_ack():
    mgr = KafkaManager("127.0.0.1:1", client="confluent")
    # At 200 records/s each is alone in its batch: a linger is pure delay.
    assert mgr.producer_config["linger.ms"] == 0
    # Nagle would hold a small request until the last one's ACK.
    assert mgr.producer_config["socket.nagle.disable"] is True
    assert mgr.consumer_config["socket.nagle.disable"] is True

