"""`flask-signalr-kafka broker`: a local Apache Kafka in the foreground that
prints its bootstrap servers and stops on Ctrl-C, and a one-line error when
Java is missing, and three nodes that survive one's death."""
import contextlib
import os
import signal
import subprocess
import sys

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from flask_signalr_kafka.cli.broker import free_port
from testkit.harness import wait_until

CLI = [sys.executable, "-m", "flask_signalr_kafka", "broker"]


@contextlib.contextmanager
def broker_command(*args):
    """``flask-signalr-kafka broker ARGS`` with stdin and stdout piped,
    killed if the test leaves it running."""
    process = subprocess.Popen([*CLI, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_kafka_broker_runs_until_ctrl_c(artifacts):
    port = free_port()
    with broker_command("--engine", "kafka", "--port", str(port)) as process:
        first = process.stdout.readline()
        assert first.startswith(f"bootstrap servers: 127.0.0.1:{port} "), first
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        assert len(admin.describe_cluster()["brokers"]) == 1
        admin.close()
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    # The JVM went with it: nothing listens on the port any more.
    result = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"],
                            capture_output=True)
    assert result.returncode != 0


def test_missing_java_says_what_to_install(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(tmp_path)  # no java, no mvn
    result = subprocess.run([*CLI, "--engine", "kafka"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "flask-signalr-kafka: Apache Kafka 4 needs Java 17 or newer: install it "
        "(apt-get install openjdk-17-jre-headless), or use --engine tansu"
    ]


def test_three_nodes_survive_one_and_restart_it(artifacts):
    """One node of `broker --nodes 3` dies: the command says which, the two
    others go on serving, and `restart 2` on stdin brings it back."""
    port = free_port()
    with broker_command("--engine", "kafka", "--nodes", "3", "--port", str(port)) as process:

        def read_until(prefix):
            for line in process.stdout:
                if line.startswith(prefix):
                    return line
            raise AssertionError(f"the command ended before a line starting {prefix!r}")

        bootstrap = read_until("bootstrap servers: ").split()[2]
        node2 = read_until("node 2: ")
        pid = int(node2.rsplit("pid ", 1)[1].rstrip(")\n"))
        os.kill(pid, signal.SIGKILL)
        exited = read_until("node 2 ")
        assert "exited with status -9; nodes still running: [1, 3]" in exited, exited
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)

        def served(query):
            # The cluster's metadata still names node 2 for a while, and the
            # admin client may pick it: a real client retries, so does this.
            def attempt():
                try:
                    return query() is not None
                except KafkaError:
                    return False
            return attempt

        wait_until(served(admin.list_topics), 30, 0.5, "the two other nodes serving")
        assert process.poll() is None
        process.stdin.write("restart 2\n")
        process.stdin.flush()
        assert read_until("node 2 ").startswith("node 2 starting")
        assert read_until("node 2 ").startswith("node 2 is back")

        def three_brokers():
            return len(admin.describe_cluster()["brokers"]) == 3
        wait_until(served(lambda: three_brokers() or None), 60, 0.5, "node 2 back in the cluster")
        admin.close()
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
