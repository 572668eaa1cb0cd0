#!/usr/bin/env bash
# `make demo`: a local broker (Apache Kafka; BROKER_ENGINE=tansu for the
# pip-only emulator), the chat topics, and three web dynos from the Procfile,
# all in the foreground; Ctrl-C stops everything. KAFKA_CLIENT=confluent runs
# the dynos (and create-topics) on confluent-kafka.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/${VENV:-.venv}/bin:$PATH"
DYNOS=${DYNOS:-3}
export BROKER_ENGINE=${BROKER_ENGINE:-kafka}

if (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
  echo "Port 9092 is taken: the demo starts its own broker there. Stop what uses it." >&2
  exit 1
fi
flask-signalr-kafka broker --engine "$BROKER_ENGINE" --port 9092 &
broker=$!
dynos=
stop() {
  trap - INT TERM EXIT
  if [ -n "$dynos" ]; then
    kill -TERM "$dynos" 2>/dev/null || true
    wait "$dynos" 2>/dev/null || true
  fi
  kill "$broker" 2>/dev/null || true
  wait "$broker" 2>/dev/null || true
  exit 0
}
trap stop INT TERM EXIT
until (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; do
  kill -0 "$broker" 2>/dev/null || { echo "the broker did not start" >&2; exit 1; }
  sleep 0.2
done

flask-signalr-kafka create-topics --prefix "${CHAT_TOPIC_PREFIX:-chat}"
echo
echo "Three dynos of the chat; open two of them side by side:"
for i in $(seq 0 $((DYNOS - 1))); do echo "  http://127.0.0.1:$((5000 + i))"; done
echo "Ctrl-C stops the dynos and the broker."
echo
# ASGI_DYNOS=1 (make demo-asgi): also the chat on uvicorn and the
# AsyncKafkaManager (the Procfile's asgi process, port 5100), in the same fleet.
if [ -n "${ASGI_DYNOS:-}" ]; then echo "  http://127.0.0.1:5100 (uvicorn, asyncio)"; fi
honcho start -f Procfile -c "web=$DYNOS${ASGI_DYNOS:+,asgi=$ASGI_DYNOS}" web ${ASGI_DYNOS:+asgi} &
dynos=$!
wait "$dynos"
