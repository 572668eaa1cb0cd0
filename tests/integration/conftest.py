import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import RawTopic, ServerProcess, unique  # noqa: E402


class Fleet:
    """Servers sharing one topic prefix, plus raw topic readers."""

    def __init__(self, broker, artifacts, prefix=None):
        self.broker = broker
        self.artifacts = artifacts
        self.prefix = prefix or unique("t")
        self.servers = []
        self.clients = []
        self.readers = []

    def server(self, label, **env):
        if os.environ.get("TEST_RECOVERY") == "1":
            # Run any test with connection state recovery on (python-socketio
            # Clients must not notice it).
            env.setdefault("CONNECTION_STATE_RECOVERY", 1)
        if self.broker.engine == "tansu":
            # Tansu workaround: it answers a fetch only at its deadline.
            env.setdefault("FETCH_MAX_WAIT_MS", 20)
        server = ServerProcess(self.broker.bootstrap, self.prefix, label, self.artifacts, **env)
        self.servers.append(server)
        return server.start()

    def topic(self, base):
        return f"{self.prefix}-{base}"

    def raw(self, base):
        reader = RawTopic(self.broker.bootstrap, self.topic(base))
        self.readers.append(reader)
        return reader

    def client(self, server, **kwargs):
        from harness import Client

        client = Client(server, **kwargs)
        self.clients.append(client)
        return client

    def close(self):
        for c in self.clients:
            try:
                c.close()
            except Exception:
                pass
        for r in self.readers:
            r.close()
        for s in self.servers:
            s.stop()


@pytest.fixture(scope="module")
def fleet(broker, artifacts):
    """Two servers for a whole test module (tests use unique rooms and data)."""
    f = Fleet(broker, artifacts)
    f.a = f.server("A", ACK_TIMEOUT=3)
    f.b = f.server("B", ACK_TIMEOUT=3)
    yield f
    f.close()


@pytest.fixture
def new_fleet(broker, artifacts):
    """A fleet of its own, for tests that stop or break servers."""
    f = Fleet(broker, artifacts)
    yield f
    f.close()


@pytest.fixture
def connect(fleet):
    """Connect real Socket.IO clients for one test; closed after it."""
    from harness import Client

    made = []

    def make(server, **kwargs):
        client = Client(server, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        try:
            client.close()
        except Exception:
            pass


@pytest.fixture
def raw(fleet):
    """Plain kafka-python readers of the fleet's raw topics, for one test."""
    made = []

    def make(base):
        reader = RawTopic(fleet.broker.bootstrap, fleet.topic(base))
        made.append(reader)
        return reader

    yield make
    for reader in made:
        reader.close()
