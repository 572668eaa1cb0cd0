#!/usr/bin/env bash
# `make loadtest`: the Locust load kit against the sample chat's three dynos.
#
# If nothing answers on http://127.0.0.1:5000, starts sample_app/demo.sh (the
# embedded broker and three gunicorn dynos) in the background and stops it at
# the end, also on Ctrl-C. Waits until each dyno answers and a line crosses
# from each dyno to the next, then runs Locust headless and prints its summary
# and the delivery table. Exits non-zero if a message was lost (or Locust saw
# any other failure).
#
#   USERS=30 SPAWN_RATE=10 DURATION=30s PROCESSES=2 loadtests/run_loadtest.sh [LOCUST ARGS...]
#
# Extra arguments go to locust (e.g. --csv out/run, --loss-grace 10).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
USERS=${USERS:-30}
SPAWN_RATE=${SPAWN_RATE:-10}
DURATION=${DURATION:-30s}
PROCESSES=${PROCESSES:-}
HOSTS=http://127.0.0.1:5000,http://127.0.0.1:5001,http://127.0.0.1:5002
LOCUST="$VENV/bin/locust"
PYTHON="$VENV/bin/python"

if [ ! -x "$LOCUST" ]; then
  echo "$LOCUST is missing: $VENV/bin/pip install locust" >&2
  exit 2
fi

answers() { curl -s -o /dev/null --max-time 2 "$1/"; }

demo=
demo_log=
stop_demo() {
  [ -n "$demo" ] || return 0
  echo "Stopping the demo (pid $demo)..."
  kill -TERM "$demo" 2>/dev/null || true
  for _ in $(seq 150); do
    kill -0 "$demo" 2>/dev/null || break
    sleep 0.1
  done
  # demo.sh stops its broker and dynos itself; its process group is only a
  # backstop (setsid made the demo the leader of a group of its own).
  kill -TERM -- "-$demo" 2>/dev/null || true
  sleep 0.5
  kill -KILL -- "-$demo" 2>/dev/null || true
  wait "$demo" 2>/dev/null || true
  demo=
}
finish() {
  status=$?
  trap - EXIT INT TERM
  stop_demo
  [ -n "$demo_log" ] && rm -f "$demo_log"
  exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if answers http://127.0.0.1:5000; then
  echo "Dynos already answer on http://127.0.0.1:5000: using them."
else
  demo_log=$(mktemp -t loadtest-demo.XXXXXX)
  echo "Starting the demo (sample_app/demo.sh; log: $demo_log)..."
  # A session of its own: Ctrl-C here reaches locust, and the demo is
  # stopped by finish(), in order.
  setsid bash sample_app/demo.sh >"$demo_log" 2>&1 </dev/null &
  demo=$!
fi

deadline=$((SECONDS + 90))
for url in ${HOSTS//,/ }; do
  until answers "$url"; do
    if [ -n "$demo" ] && ! kill -0 "$demo" 2>/dev/null; then
      echo "The demo exited:" >&2
      cat "$demo_log" >&2
      demo=
      exit 2
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$url does not answer" >&2
      [ -n "$demo_log" ] && tail -n 30 "$demo_log" >&2
      exit 2
    fi
    sleep 0.3
  done
done
echo "The three dynos answer; checking that a line crosses from each dyno to the next:"
"$PYTHON" loadtests/locustfile.py --check --host "$HOSTS" --timeout 60

args=(-f loadtests/locustfile.py --headless --only-summary
      -u "$USERS" -r "$SPAWN_RATE" -t "$DURATION" --host "$HOSTS")
[ -n "$PROCESSES" ] && args+=(--processes "$PROCESSES")
echo
echo "locust ${args[*]} $*"
set +e
"$LOCUST" "${args[@]}" "$@"
status=$?
set -e
if [ "$status" -ne 0 ]; then
  echo "Locust exited with status $status: messages lost, or other failures (see above)." >&2
fi
exit "$status"
