"""Idle CPU of one test dyno (tests/server_app.py with its defaults, three
connected clients, no traffic) on a three-node Apache Kafka cluster, with
kafka-python and with confluent: what a client's background work (metadata
refreshes, stall watches) costs. Run it under the shared lock:

    flock /work/heavy.lock .venv/bin/python loadtests/idle_three_nodes.py 30
"""
import os
import sys
import tempfile
import time
from pathlib import Path

import socketio

from flask_signalr_kafka.cli.broker import start_broker
from testkit.harness import Fleet
from testkit.measure import cpu_seconds

secs = float(sys.argv[1]) if len(sys.argv) > 1 else 30
art = Path(tempfile.mkdtemp(prefix="h9idle"))
cluster = start_broker("kafka", nodes=3, log_dir=art)
try:
    for client in ("kafka-python", "confluent"):
        os.environ["KAFKA_CLIENT"] = client
        fleet = Fleet(cluster, art)
        server = fleet.server("A", REPLICATION_FACTOR=3)
        clients = []
        for _ in range(3):
            c = socketio.Client(reconnection=False)
            c.connect(server.url, transports=["websocket"], wait_timeout=10)
            clients.append(c)
        time.sleep(5)
        c0 = cpu_seconds(server.process.pid)
        time.sleep(secs)
        pct = (cpu_seconds(server.process.pid) - c0) / secs * 100
        print(f"IDLE {client}: {pct:.2f}% of a core over {secs:g} s ", flush=True)
        for c in clients:
            c.disconnect()
        fleet.close()
finally:
    cluster.stop()
