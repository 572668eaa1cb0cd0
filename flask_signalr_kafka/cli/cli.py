"""The ``flask-signalr-kafka`` command line (also ``python -m flask_signalr_kafka``).

Every command but ``broker`` finds the cluster as the sample app does: from
``--bootstrap-servers``, else the Heroku-style ``KAFKA_*`` variables, else the
local broker at 127.0.0.1:9092.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from ..config.env_config import DEFAULT_PORT
from .broker import ENGINES, BrokerNotFound, start_broker, tansu_command


def cmd_broker(args: argparse.Namespace) -> int:
    """Run a local broker in the foreground until Ctrl-C: Apache Kafka (one
    KRaft node, or a three-node cluster), or the Tansu emulator. Prints the
    bootstrap servers. For development, tests and demos only."""
    try:
        if args.engine == "tansu":
            if args.nodes != 1:
                return _fail("Tansu runs as one node: use --nodes 1")
            command = tansu_command(args.port)
            print(f"bootstrap servers: 127.0.0.1:{args.port} (Tansu, in memory; "
                  "Ctrl-C stops it)", flush=True)
            # Become the broker: Ctrl-C and SIGTERM reach it, nothing is left behind.
            os.execv(command[0], command)
        broker = start_broker("kafka", nodes=args.nodes, port=args.port)
    except BrokerNotFound as exc:
        return _fail(str(exc))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        print(f"bootstrap servers: {broker.bootstrap} (Apache Kafka, {args.nodes} node(s); "
              "Ctrl-C stops it)", flush=True)
        print(f"logs: {', '.join(map(str, broker.log_paths))}", flush=True)
        return _supervise(broker)
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


_BROKER_HELP = ("commands: status, stop N, kill N, start N, restart N "
                "(SIGUSR1 starts every node that is down)")


def _supervise(broker) -> int:
    """Watch the nodes until Ctrl-C: a node that exits is reported and the
    others keep running; commands on stdin (and SIGUSR1) stop and start
    nodes, to try a failover by hand. Returns when every node is down."""
    import queue
    import threading

    from .broker import wait_for_port

    commands: queue.Queue[str] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            commands.put(line.strip())

    threading.Thread(target=read_stdin, daemon=True).start()
    signal.signal(signal.SIGUSR1, lambda *_: commands.put("start down"))
    for node in broker.nodes:
        print(f"node {node.node_id}: {node.address} (pid {node.process.pid})", flush=True)
    if broker.size > 1:
        print(_BROKER_HELP, flush=True)
    up = {node.node_id for node in broker.nodes}
    starting: set[int] = set()
    while True:
        for node in broker.nodes:
            if node.node_id in up and not node.running():
                up.discard(node.node_id)
                starting.discard(node.node_id)
                others = sorted(up) or "none"
                print(f"node {node.node_id} ({node.address}) exited with status "
                      f"{node.process.returncode}; nodes still running: {others}. "
                      f"`start {node.node_id}` starts it again; its log: {node.log_path}",
                      flush=True)
            if node.node_id in starting:
                try:
                    wait_for_port(node.port, timeout=0)
                except TimeoutError:
                    continue
                starting.discard(node.node_id)
                print(f"node {node.node_id} is back on {node.address} "
                      f"(pid {node.process.pid})", flush=True)
        if not up:
            return _fail("every Kafka node is down")
        try:
            command = commands.get(timeout=0.5)
        except queue.Empty:
            continue
        _broker_command(broker, command, up, starting)


def _broker_command(broker, command: str, up: set[int], starting: set[int]) -> None:
    """One stdin command of :func:`_supervise`."""
    verb, _, arg = command.partition(" ")
    if verb == "status":
        for node in broker.nodes:
            state = "running" if node.running() else "down"
            print(f"node {node.node_id}: {node.address} {state}", flush=True)
        return
    if verb == "start" and arg == "down":
        ids = [n.node_id for n in broker.nodes if not n.running()]
    elif verb in ("stop", "kill", "start", "restart") and arg.isdigit() and (
            1 <= int(arg) <= broker.size):
        ids = [int(arg)]
    else:
        if command:
            print(f"unknown command {command!r}; {_BROKER_HELP}", flush=True)
        return
    for node_id in ids:
        node = broker.node(node_id)
        if verb in ("stop", "kill", "restart") and node.running():
            if verb == "kill":
                node.signal(signal.SIGKILL)
            else:
                node.stop()
            up.discard(node_id)
            print(f"node {node_id} stopped", flush=True)
        if verb in ("start", "restart") and not node.running():
            broker.start_node(node_id)
            up.add(node_id)
            starting.add(node_id)
            print(f"node {node_id} starting (pid {node.process.pid})", flush=True)


def cmd_create_topics(args: argparse.Namespace) -> int:
    """Create the six backplane topics that are missing; existing ones are
    left as they are. Idempotent: what a release phase runs. With
    KAFKA_PREFIX set (Heroku's multi-tenant plans refuse topic creation from
    clients), print the ``heroku kafka:topics:create`` commands instead."""
    manager = _manager(args)
    from ..transport import topics

    if manager.topic_config.tenant_prefix:
        return _print_heroku_commands(manager)
    created = manager.create_topics()
    names = [*manager.topic_config.names.values(), manager.topic_config.name(topics.FLEET)]
    print(f"created: {', '.join(created)}" if created else "all topics exist")
    print(f"topics: {', '.join(names)}")
    return 0


def _print_heroku_commands(manager) -> int:

    from ..transport import topics

    admin = manager.core.connect_admin()
    try:
        missing = topics.missing_topics(admin, manager.topic_config, sessions=True)
    finally:
        admin.close()
    print("KAFKA_PREFIX is set: topics are not created here (multi-tenant plans refuse it).")
    bases = [b for b in missing if b != topics.SESSIONS]
    if bases:
        print("create the missing ones with:")
        print("\n".join(topics.heroku_commands(manager.topic_config, bases)))
    else:
        print("all topics exist")
    if topics.SESSIONS in missing:
        print("and, with connection_state_recovery on:")
        print("\n".join(topics.heroku_commands(manager.topic_config, [topics.SESSIONS])))
    return 0


def cmd_emit(args: argparse.Namespace) -> int:
    """Send an event to every client, a room, a user or a connection, on
    every server of the fleet."""
    from ..wire.addressing import user

    manager = _manager(args)
    to = args.room or args.sid or (user(args.user) if args.user else None)
    data = tuple(_parse(d) for d in args.data)
    manager.emit(args.event, data[0] if len(data) == 1 else data or None,
                 namespace=args.namespace, to=to)
    manager.close()
    print(f"sent {args.event!r} to {to or 'everyone'} [{args.namespace}]")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Follow the six topics and the fleet topic and print every record
    decoded: the tool for "why did my message not arrive"."""
    from ..transport.clients.kafka_client import TopicPartition
    from ..transport.topics import FLEET

    manager = _manager(args)
    consumer = manager.core.new_consumer()
    partitions = []
    bases = {name: base for base, name in manager.topic_config.names.items()}
    bases[manager.topic_config.name(FLEET)] = FLEET
    for name in bases:
        ids = consumer.partitions_for_topic(name)
        if not ids:
            print(f"# topic {name} does not exist (yet)", file=sys.stderr)
        partitions += [TopicPartition(name, p) for p in sorted(ids)]
    consumer.assign(partitions)
    if args.from_beginning:
        consumer.seek_to_beginning(*partitions)
    else:
        consumer.seek_to_end(*partitions)
    for tp in partitions:
        consumer.position(tp)  # fix the start now: what comes after is printed
    servers = manager.core.servers()
    print(f"# following {len(partitions)} partitions on {servers} (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    seen = 0
    try:
        while args.max_records is None or seen < args.max_records:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    print(describe(bases[record.topic], record), flush=True)
                    seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the cluster and the backplane topics the app would use (present,
    partitions, replication, min.insync.replicas, retention, cleanup policy,
    brokers and their versions) and say what is risky. Exit status 0 when
    healthy, 1 on warnings, 2 on errors (a missing topic, an unreachable
    cluster)."""
    from . import doctor

    if not args.recovery_window > 0:
        raise ValueError(f"--recovery-window must be a positive number of seconds, "
                         f"not {args.recovery_window}")
    manager = _manager(args)
    report = doctor.diagnose(manager.admin_config, manager.topic_config, args.recovery_window)
    print(doctor.to_json(report) if args.json else doctor.render(report), flush=True)
    return report.exit_code


def cmd_top(args: argparse.Namespace) -> int:
    """Records per second on each backplane topic across the whole cluster,
    from the log ends (no consumer group), refreshed every second like top:
    the first thing to look at when nothing arrives. Ctrl-C stops."""
    from . import top

    if not args.interval > 0:
        raise ValueError(f"--interval must be a positive number of seconds, not {args.interval}")
    manager = _manager(args)
    iterations = 1 if args.once else args.iterations
    return top.run(manager.admin_config, manager.topic_config, args.interval, iterations)


def describe(base: str, record: Any) -> str:
    """One line for a backplane record: where it is and what it says."""
    from ..errors import MalformedRecord
    from ..wire import hub_protocol, records

    key = None if record.key is None else record.key.decode(errors="replace")
    head = f"{base} p{record.partition}@{record.offset} key={key!r}"
    try:
        if base == "fleet":
            from ..wire import fleet_records

            return f"{head} {fleet_records.decode(record.value)!r}"
        if base == "ack":
            ack = records.decode(record.value, records.AckExt)
            answer = "" if ack.args is None else f" answer={ack.args!r}"
            return f"{head} ack id={ack.id}{answer}"
        if base == "group-mgmt":
            cmd = records.decode(record.value, records.GroupCommandExt)
            what = {records.OP_CLOSE_ROOM: "close-room", records.OP_DISCONNECT: "disconnect"}.get(
                cmd.op, "add" if cmd.action == records.ADD else "remove"
            )
            return (f"{head} {what} group={cmd.group!r} connection={cmd.connection_id!r} "
                    f"ns={cmd.namespace} id={cmd.id} from={cmd.server_name}")
        inv = records.decode(record.value, records.InvocationExt)
        target, arguments = hub_protocol.decode_frames(inv.frames)
        origin = inv.origin or "(.NET)"
        return (f"{head} ns={inv.namespace} target={target!r} args={arguments!r} "
                f"excluded={inv.excluded!r} protocols={sorted(inv.frames)} origin={origin}"
                + (f" callback={inv.callback_id}" if inv.callback_id else "")
                + (f" earlier={inv.earlier_targets!r}" if inv.earlier_targets else ""))
    except MalformedRecord as exc:
        return f"{head} MALFORMED: {exc}"


def _manager(args: argparse.Namespace):
    from ..managers.manager import KafkaManager
    from ..transport.topics import KafkaTopicConfig

    kwargs: dict[str, Any] = {
        "topic_config": KafkaTopicConfig(prefix=args.prefix),
        "write_only": True,
        "connect_timeout": args.timeout,
        "client": args.client,
    }
    if args.bootstrap_servers:
        kwargs["bootstrap_servers"] = args.bootstrap_servers.split(",")
    return KafkaManager.from_env(**kwargs)


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _fail(message: str) -> int:
    print(f"flask-signalr-kafka: {message}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flask-signalr-kafka", description="Tools for the flask-signalr-kafka backplane."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=func.__doc__)
        sub.set_defaults(func=func)
        if func is not cmd_broker:
            sub.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]",
                             help="default: KAFKA_URL, else 127.0.0.1:9092")
            sub.add_argument("--prefix", default="", help="topic prefix (default: none)")
            sub.add_argument("--timeout", type=float, default=10.0,
                             help="seconds to reach the cluster (default %(default)s)")
            sub.add_argument("--client", choices=("kafka-python", "confluent"),
                             default=os.environ.get("KAFKA_CLIENT") or "kafka-python",
                             help="the Kafka client library (default: KAFKA_CLIENT, "
                                  "else kafka-python)")
        return sub

    broker = command("broker", cmd_broker, "run a local Kafka or Tansu broker (development only)")
    broker.add_argument("--engine", choices=ENGINES, default="kafka",
                        help="Apache Kafka (needs Java 17 and Maven) or the Tansu emulator "
                             "(pip only); default %(default)s")
    broker.add_argument("--nodes", type=int, choices=(1, 3), default=1,
                        help="Kafka cluster size (default %(default)s)")
    broker.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="the first node's port (default %(default)s)")

    command("create-topics", cmd_create_topics, "create the missing backplane topics")

    tail = command("tail", cmd_tail, "print every backplane record as it arrives")
    tail.add_argument("--from-beginning", action="store_true",
                      help="start at the oldest record, not the newest")
    tail.add_argument("--max-records", type=int, metavar="N", help="stop after N records")

    doctor = command("doctor", cmd_doctor, "check the cluster and topics for this backplane")
    doctor.add_argument("--recovery-window", type=float, default=120.0, metavar="SECONDS",
                        help="how long a client may be away and still be recovered; "
                             "retention shorter than this is a warning (default %(default)s)")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")

    top = command("top", cmd_top, "records/s per topic across the cluster, live")
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                     help="seconds between screens (default %(default)s)")
    once = top.add_mutually_exclusive_group()
    once.add_argument("--once", action="store_true", help="print one screen and exit")
    once.add_argument("--iterations", type=int, metavar="N", help="print N screens and exit")

    emit = command("emit", cmd_emit, "send an event to clients from the shell")
    emit.add_argument("event")
    emit.add_argument("data", nargs="*",
                      help="arguments, each JSON if it parses, else a string")
    target = emit.add_mutually_exclusive_group()
    target.add_argument("--room")
    target.add_argument("--user")
    target.add_argument("--sid")
    emit.add_argument("--namespace", default="/")
    return parser


def main(argv: list[str] | None = None) -> int:
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    from ..errors import KafkaBackplaneError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KafkaBackplaneError, ValueError) as exc:
        return _fail(str(exc))
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        where = args.bootstrap_servers or "the servers of KAFKA_URL (or 127.0.0.1:9092)"
        return _fail(f"could not reach Kafka at {where}: {exc}")
