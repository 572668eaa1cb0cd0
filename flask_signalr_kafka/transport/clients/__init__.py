"""The Kafka client interface the core uses, its two adapters (kafka-python,
confluent-kafka) and their settings. The bottom of the transport: imports
none of its other modules.
"""
