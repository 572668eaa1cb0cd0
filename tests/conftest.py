import os
from pathlib import Path

import pytest

from flask_signalr_kafka.broker import Broker

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def broker(artifacts):
    """The embedded Tansu broker, on a free port, for the whole session."""
    with open(artifacts / "tansu.log", "ab") as log, Broker(log=log) as b:
        yield b
