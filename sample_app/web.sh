#!/usr/bin/env bash
# One web dyno of the chat (the Procfile's web command): gunicorn with one
# worker of the async mode ASYNC_MODE names, gevent by default.
set -euo pipefail
if [ "${ASYNC_MODE:-gevent}" = threading ]; then
  workers=(--threads 100)
else
  workers=(--worker-class geventwebsocket.gunicorn.workers.GeventWebSocketWorker)
fi
exec gunicorn "${workers[@]}" --workers 1 --graceful-timeout 10 --bind "0.0.0.0:${PORT:-5000}" \
  sample_app.app:app
