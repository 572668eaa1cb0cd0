"""The ``flask-signalr-kafka`` command line."""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys

from .broker import DEFAULT_PORT, BrokerNotFound, broker_command


def cmd_broker(args: argparse.Namespace) -> int:
    """Run the embedded Tansu broker in the foreground until Ctrl-C."""
    try:
        command = broker_command(args.port, args.host)
    except BrokerNotFound as exc:
        print(f"flask-signalr-kafka: {exc}", file=sys.stderr)
        return 2
    print(f"Tansu broker on {args.host}:{args.port} (in memory; Ctrl-C stops it)", flush=True)
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flask-signalr-kafka",
        description="Tools for the flask-signalr-kafka backplane.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    broker = commands.add_parser(
        "broker", help="run the embedded Tansu broker (development only)",
        description=cmd_broker.__doc__,
    )
    broker.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    broker.add_argument("--host", default="127.0.0.1", help="default %(default)s")
    broker.set_defaults(func=cmd_broker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
