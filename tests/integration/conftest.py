import pytest

from testkit.harness import Client, Fleet, RawTopic, close_all, close_quietly


@pytest.fixture(scope="module")
def fleet(broker, artifacts):
    """Two servers for a whole test module (tests use unique rooms and data)."""
    f = Fleet(broker, artifacts)
    f.a, f.b = f.start_servers("A", "B", ACK_TIMEOUT=3)
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
    made = []

    def make(server, **kwargs):
        client = Client(server, **kwargs)
        made.append(client)
        return client

    yield make
    close_all(made, close_quietly)


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
