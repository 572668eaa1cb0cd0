"""The Kafka transport: ``KafkaCore`` (the server's name, producer, consumers,
claims, acks), topics, home partitions, the payload limit. Knows records and
topics, not Socket.IO.
"""
