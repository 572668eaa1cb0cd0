"""The whole cluster down when a dyno starts: every manager either comes up
once the cluster does, or fails at once with an error naming the bootstrap
servers (the platform restarts it).

- gevent and threading dynos (KafkaManager) fail at start, within
  ``connect_timeout``, with BrokerUnavailableError naming the servers;
- a uvicorn dyno whose app is imported before uvicorn's loop runs (``uvicorn
  module:app``) likewise: AsyncKafkaManager starts where it is built;
- a uvicorn dyno whose server is built on the running loop (``--factory``,
  an app made in an async main or a lifespan) stays up, logs why it cannot
  start, and comes up once the cluster does: its next connect or
  ``wait_ready`` starts it again.
"""
import subprocess
import sys
import time

import pytest

from flask_signalr_kafka.cli.broker import KafkaCluster, free_port
from testkit.harness import SERVER_APP, Fleet, ServerProcess, unique, wait_until

pytestmark = pytest.mark.timeout(240)
CONNECT_TIMEOUT = 2


def uvicorn(app, *options):
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(SERVER_APP.parent), app,
            *options, "--log-level", "warning", "--no-access-log"]


@pytest.mark.confluent  # cheap: no broker to start
@pytest.mark.parametrize("mode", ["gevent", "threading",
                                  pytest.param("uvicorn", marks=pytest.mark.asgi_only)])
def test_dyno_fails_fast_naming_the_servers(artifacts, mode):
    address = f"127.0.0.1:{free_port()}"
    server = ServerProcess(address, unique("down"), "A", artifacts, ASYNC_MODE=mode,
                           CONNECT_TIMEOUT=CONNECT_TIMEOUT)
    command = [sys.executable, str(SERVER_APP)]
    if mode == "uvicorn":
        command = uvicorn("asgi_server_app:app", "--port", str(server.port))
    started = time.monotonic()
    with open(server.log_path, "ab") as out:
        process = subprocess.Popen(command, env=server.env, stdout=out,
                                   stderr=subprocess.STDOUT)
        try:
            code = process.wait(CONNECT_TIMEOUT + 30)
        finally:
            process.kill()
    took = time.monotonic() - started
    log = server.log()
    assert code != 0
    assert "BrokerUnavailableError" in log and f"could not reach Kafka at {address}" in log, \
        log[-2000:]
    assert took < CONNECT_TIMEOUT + 15, took  # Python's imports come on top


def test_uvicorn_dyno_built_on_its_loop_comes_up_when_the_cluster_does(artifacts, engine):
    if engine != "kafka":
        pytest.skip("starts an Apache Kafka node of its own on a chosen port")
    cluster = KafkaCluster(port=free_port(), log_dir=artifacts)
    fleet = Fleet(cluster, artifacts)
    server = ServerProcess(cluster.bootstrap, fleet.prefix, "A", artifacts,
                           CONNECT_TIMEOUT=CONNECT_TIMEOUT)
    outage = 8.0
    try:
        server._log = open(server.log_path, "ab")
        server.process = subprocess.Popen(
            uvicorn("asgi_factory_app:make_app", "--factory", "--port", str(server.port)),
            env=server.env, stdout=server._log, stderr=subprocess.STDOUT)
        fleet.servers.append(server)
        time.sleep(outage)  # /ready answers 500 meanwhile: the process stays up
        assert server.process.poll() is None, server.log()[-2000:]
        cluster.start()
        back = time.monotonic()
        # /ready's wait_ready starts the core again, as a connect would.
        wait_until(server.ready, 60, 0.2, "the dyno up once the cluster is")
        up_after = time.monotonic() - back
        log = server.log()
        assert f"could not reach Kafka at {cluster.bootstrap}" in log, log[-2000:]
        assert "the next connect or emit tries again" in log, log[-2000:]
        # It serves: an emit from another dyno reaches its client, and back.
        b = fleet.server("B", RUNNER="uvicorn")
        here, there = fleet.client(server), fleet.client(b)
        room = unique("room")
        assert here.call("join", {"room": room}) == "ok"
        there.call("emit", {"event": "hello", "data": "from B", "to": room})
        here.wait_for("hello", ("from B",), timeout=15)
        here.call("emit", {"event": "hello", "data": "from A"})
        there.wait_for("hello", ("from A",), timeout=15)
        print(f"up {up_after:.1f} s after the cluster")
    finally:
        fleet.close()
        cluster.stop()
