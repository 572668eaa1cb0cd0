"""The ``flask-signalr-kafka`` command (broker, create-topics, tail, emit,
doctor, top) and the local brokers for development and tests. Nothing below
imports it.
"""
from .cli import main

__all__ = ["main"]
