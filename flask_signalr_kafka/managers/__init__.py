"""The python-socketio client managers on top of it all: ``KafkaManager``,
``AsyncKafkaManager``, what they share, the emit plan, inbound records,
rooms, the one place that uses python-socketio's private API, and the
managers' fleet and recovery mixins.
"""
