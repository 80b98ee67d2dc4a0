#!/usr/bin/env bash
# The README's quick start as one script, timed, through the `lethe` command: serve, register
# data and a model, delete 100 samples and wait for it, download version 2 (its sha256
# checked against the ETag), then check the signed receipt and the audit trail.
#
#   scripts/quickstart.sh                                   # scikit-learn digits, mlp
#   DATASET=cifar10-jpeg.tar.gz ARCH=allcnn EPOCHS=2 scripts/quickstart.sh
#   SERVER_URL=http://127.0.0.1:58000 TOKEN=... scripts/quickstart.sh
#                      # against a service already running (scripts/compose-smoke.sh): no
#                      # server of its own, TOKEN an API key of that service's
#
# Exits 0 when every step succeeded; if the server cannot start (its port is taken, say) it
# stops at once with the server's own error.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
PORT=${PORT:-8765}
ARCH=${ARCH:-mlp}
EPOCHS=${EPOCHS:-30}
METHOD=${METHOD:-finetune}
START_TIMEOUT=${START_TIMEOUT:-120}
SERVER_URL=${SERVER_URL:-}
if [ -n "$SERVER_URL" ] && [ -z "${TOKEN:-}" ]; then
  echo "quickstart: SERVER_URL needs TOKEN, an API key of that service" >&2
  exit 2
fi
WORK=$(mktemp -d)
export LETHE_HOME="$WORK/home" LETHE_URL="${SERVER_URL:-http://127.0.0.1:$PORT}"
unset LETHE_DATABASE_URL LETHE_BROKER_URL LETHE_STORAGE_URL LETHE_TOKEN
lethe() { "$BIN/lethe" "$@"; }

SERVER=
cleanup() {
  local status=$?
  if [ -n "$SERVER" ]; then
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true  # its 143 (killed by us) is not the script's status
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

now() { python3 -c 'import time; print(time.time())'; }
took() { python3 -c 'import sys, time; print(f"{sys.argv[1]:<52} {time.time() - float(sys.argv[2]):7.1f} s")' "$1" "$2"; }

if [ -z "$SERVER_URL" ]; then
  "$BIN/lethe" serve --port "$PORT" >"$WORK/serve.log" 2>&1 &  # not the function: $! is the server
  SERVER=$!
  # Ready when this server says it listens, not when anything at all answers on the port.
  deadline=$((SECONDS + START_TIMEOUT))
  until grep -qs "Uvicorn running on" "$WORK/serve.log"; do
    if ! kill -0 "$SERVER" 2>/dev/null; then
      wait "$SERVER" 2>/dev/null || true
      SERVER=
      echo "quickstart: lethe serve --port $PORT exited before it was ready:" >&2
      tail -n 20 "$WORK/serve.log" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "quickstart: lethe serve was not ready after ${START_TIMEOUT} s:" >&2
      tail -n 20 "$WORK/serve.log" >&2
      exit 1
    fi
    sleep 0.2
  done

  LETHE_TOKEN=$(lethe apikey create quickstart | tail -n 1)
else
  LETHE_TOKEN=$TOKEN
fi
export LETHE_TOKEN

if [ -z "${DATASET:-}" ]; then
  DATASET="$WORK/digits.npz"
  lethe data export-digits --out "$DATASET" >/dev/null
fi

t=$(now)
lethe train --dataset "$DATASET" --architecture "$ARCH" --epochs "$EPOCHS" \
  --out "$WORK/model.safetensors" 2>/dev/null | sed -n 1p
took "lethe train ($ARCH, $EPOCHS epochs)" "$t"

t=$(now)
lethe datasets upload "$DATASET" --name quickstart | sed -n 1p
took "upload + decode $(basename "$DATASET")" "$t"

# The architecture and its configs come from the file: `lethe train` recorded them there.
lethe models register "$WORK/model.safetensors" --dataset quickstart --name quickstart \
  | sed -n 1p
lethe datasets samples quickstart --limit 100 --ids >"$WORK/forget.txt"

t=$(now)
OUT=$(lethe forget quickstart --ids-file "$WORK/forget.txt" --method "$METHOD" --wait)
REQUEST=$(echo "$OUT" | tail -n 1)
echo "$OUT" | sed '$d'
took "deletion of 100 samples ($METHOD), submit to completed" "$t"

lethe versions download quickstart latest --out "$WORK/v2.safetensors" | sed -n 1p
lethe receipts get "$REQUEST" --out "$WORK/receipt.json" >/dev/null
lethe receipts key --out "$WORK/key.json" >/dev/null
lethe receipts verify "$WORK/receipt.json" --public-key "$WORK/key.json" \
  --sample-ids "$WORK/forget.txt"
lethe audit verify --anchor "$WORK/receipt.json"
