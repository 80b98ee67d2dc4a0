#!/usr/bin/env bash
# The README's quick start as one script, timed: serve, register data and a model, delete 100
# samples, poll the job, download version 2 and check its sha256 against the ETag.
#
#   scripts/quickstart.sh                                   # scikit-learn digits, mlp
#   DATASET=../shared/data/cifar10-jpeg.tar.gz ARCH=allcnn EPOCHS=2 scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
PORT=${PORT:-8765}
ARCH=${ARCH:-mlp}
EPOCHS=${EPOCHS:-30}
METHOD=${METHOD:-finetune}
WORK=$(mktemp -d)
export LETHE_HOME="$WORK/home"
unset LETHE_DATABASE_URL LETHE_BROKER_URL LETHE_STORAGE_URL
API="http://127.0.0.1:$PORT"

now() { python3 -c 'import time; print(time.time())'; }
took() { python3 -c 'import sys, time; print(f"{sys.argv[1]:<52} {time.time() - float(sys.argv[2]):7.1f} s")' "$1" "$2"; }

"$BIN/lethe" serve --port "$PORT" >"$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
until curl -sf "$API/healthz" >/dev/null; do sleep 0.2; done

TOKEN=$("$BIN/lethe" apikey create quickstart | tail -n 1)
AUTH="Authorization: Bearer $TOKEN"

if [ -z "${DATASET:-}" ]; then
  DATASET="$WORK/digits.npz"
  "$BIN/lethe" data export-digits --out "$DATASET" >/dev/null
fi

t=$(now)
"$BIN/lethe" train --dataset "$DATASET" --architecture "$ARCH" --epochs "$EPOCHS" \
  --out "$WORK/model.safetensors" >"$WORK/train.json"
took "lethe train ($ARCH, $EPOCHS epochs)" "$t"

t=$(now)
DATASET_ID=$(curl -sf -H "$AUTH" -F name=quickstart -F "file=@$DATASET" "$API/v1/datasets" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
took "upload + decode $(basename "$DATASET")" "$t"

MODEL_ID=$(curl -sf -H "$AUTH" -F name=quickstart -F "architecture=$ARCH" \
  -F "dataset_id=$DATASET_ID" -F "weights=@$WORK/model.safetensors" "$API/v1/models" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

IDS=$(curl -sf -H "$AUTH" "$API/v1/datasets/$DATASET_ID/samples?limit=100" \
  | python3 -c 'import json,sys; print(json.dumps([s["id"] for s in json.load(sys.stdin)["items"]]))')

t=$(now)
JOB_ID=$(curl -sf -H "$AUTH" -H 'Content-Type: application/json' \
  -d "{\"sample_ids\": $IDS, \"method\": \"$METHOD\"}" \
  "$API/v1/models/$MODEL_ID/deletion-requests" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
while :; do
  JOB=$(curl -sf -H "$AUTH" "$API/v1/jobs/$JOB_ID")
  STATUS=$(echo "$JOB" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  case $STATUS in succeeded|failed|cancelled) break ;; esac
  sleep 0.5
done
took "deletion of 100 samples ($METHOD), submit to $STATUS" "$t"
echo "$JOB" | python3 -c 'import json,sys; m=json.load(sys.stdin)["metrics"]; print("  metrics:", {k: m[k] for k in ("forget_accuracy","retain_accuracy","test_accuracy","mia_efficacy","duration_s")})'
[ "$STATUS" = succeeded ]

curl -sf -H "$AUTH" -D "$WORK/headers" -o "$WORK/v2.safetensors" \
  "$API/v1/models/$MODEL_ID/versions/2/checkpoint"
ETAG=$(grep -i '^etag:' "$WORK/headers" | tr -d '\r"' | awk '{print $2}')
SHA=$(sha256sum "$WORK/v2.safetensors" | awk '{print $1}')
[ "$ETAG" = "$SHA" ] && echo "version 2 downloaded: sha256 $SHA matches its ETag"
