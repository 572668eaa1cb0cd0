"""The Node Socket.IO client driver (tests/js/csr_clients.mjs, many real
socket.io-client clients in one Node process) behind a Python object: the
recovery tests and the rolling-restart proof drive browsers' own client with
it."""
from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
from pathlib import Path

from testkit.harness import wait_until

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "js" / "csr_clients.mjs"


class NodeClients:
    """tests/js/csr_clients.mjs in a child process: commands in, JSON lines
    out. Live lines (connect, disconnect, ready, ...) are kept in ``lines``."""

    def __init__(self, max_seconds: float = 900, log_path: Path | None = None):
        node = shutil.which("node")
        if not node:
            raise RuntimeError("node is not on PATH")
        self.process = subprocess.Popen(
            [node, str(DRIVER), "--max-seconds", str(int(max_seconds))], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(log_path, "ab") if log_path else subprocess.DEVNULL,
        )
        self.lines: list[dict] = []
        self._replies: dict[int, queue.Queue] = {}
        self._req = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.process.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            req = line.get("req")
            if req is not None and req in self._replies:
                self._replies[req].put(line)
            with self._cond:
                if line.get("type") not in ("report", "status"):
                    self.lines.append(line)
                self._cond.notify_all()

    def request(self, cmd: dict, timeout: float = 60.0) -> dict:
        with self._lock:
            self._req += 1
            req = self._req
            self._replies[req] = queue.Queue()
        self.process.stdin.write((json.dumps({**cmd, "req": req}) + "\n").encode())
        self.process.stdin.flush()
        try:
            reply = self._replies[req].get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"the Node driver did not answer {cmd['cmd']} in {timeout:g} s") from None
        finally:
            self._replies.pop(req, None)
        if reply.get("type") == "error":
            raise AssertionError(f"Node driver: {reply['message']}")
        return reply

    def add(self, clients: list[dict], **options) -> None:
        self.request({"cmd": "add", "clients": clients, "options": options})

    def wait_ready(self, ids, timeout: float = 60.0) -> dict[str, str]:
        """The first sid of each client once all are connected and joined."""
        ids = set(ids)

        def ready():
            with self._cond:
                got = {ln["id"]: ln["sid"] for ln in self.lines if ln.get("type") == "ready"}
            return got if ids <= set(got) else None

        return wait_until(ready, timeout, 0.1, f"{len(ids)} JS clients ready")

    def status(self) -> list[dict]:
        return self.request({"cmd": "status"})["clients"]

    def drop(self, mode: str = "cut", **target) -> dict:
        return self.request({"cmd": "drop", "mode": mode, **target})

    def upstreams(self, down) -> dict:
        """Mark the dynos the ``balance`` policy must skip (all others live)."""
        return self.request({"cmd": "upstreams", "down": sorted(down)})

    def since(self, index: int) -> tuple[list[dict], int]:
        """The live lines from ``index`` on, and the index after them."""
        with self._cond:
            return self.lines[index:], len(self.lines)

    def emit(self, client_id: str, event: str, data=None, timeout: float = 15.0) -> dict:
        return self.request({"cmd": "emit", "id": client_id, "event": event, "data": data,
                             "timeoutMs": int(timeout * 1000)}, timeout + 5)

    def report(self, events: str = "seq") -> list[dict]:
        return self.request({"cmd": "report", "events": events}, 120)["clients"]

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(b'{"cmd":"close"}\n')
                self.process.stdin.close()
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
