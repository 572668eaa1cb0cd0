"""The test kit: what the integration tests (tests/) and the benchmarks and
load tests (loadtests/) share. Not part of the published package; the dev
venv installs it editable (`make .venv/.installed`, testkit/pyproject.toml),
so ``import testkit`` works from pytest, ``python loadtests/x.py``,
``locust -f`` and subprocesses alike, with no ``sys.path`` edits.

- ``testkit.harness``: server processes running tests/server_app.py
  (``ServerProcess``), a fleet of them on one topic prefix (``Fleet``),
  recording Socket.IO clients (``Client``), raw topic readers (``RawTopic``),
  a TCP proxy that cuts connections (``TcpProxy``), ``wait_until``, ``unique``.
- ``testkit.node_clients``: ``NodeClients``, the Node socket.io-client driver
  (tests/js/csr_clients.mjs).
- ``testkit.restart``: the rolling-restart proof's engine (``run``,
  ``count_client``, ``markdown``, ``print_run``).
- ``testkit.soak``: the soak's engine (``run``, ``client_ledger``,
  ``report_text``; docs/soak.md).
- ``testkit.ws_reader``: lean raw websocket Socket.IO clients (``Connection``,
  ``Reader``) for the benchmarks.
- ``testkit.measure``: CPU seconds and RSS of a process, percentiles, and the
  benchmarks' JSON/Markdown report writer.
- ``testkit.delivery``: the Locust kit's delivery ledger; ``testkit.delivery_report``:
  its end-of-run table. Both run without Locust.
"""
