"""The arguments both managers take are documented on each (the class a user
creates), with the signature autodoc and help() show."""
import inspect

import pytest

from flask_signalr_kafka import AsyncKafkaManager, KafkaManager
from flask_signalr_kafka.managers.manager_base import ManagerBase

ARGS = [name for name in inspect.signature(ManagerBase.__init__).parameters if name != "self"]


@pytest.mark.parametrize("cls", [KafkaManager, AsyncKafkaManager])
def test_every_argument_is_documented_on_the_manager_itself(cls):
    doc = inspect.getdoc(cls)
    assert [name for name in ARGS if f":param {name}:" not in doc] == []
    assert list(inspect.signature(cls).parameters) == ARGS
    # The class's own text comes first, the arguments after it.
    assert doc.startswith("A python-socketio client manager")
