#!/usr/bin/env bash
# The container stack, built and run for real: build the images, start docker-compose.yml
# (with docker-compose.local.yml: host networking, PostgreSQL and Redis built from Debian's
# packages), run the quick start against it, check that the deletion request completed, that
# its checkpoint's sha256 is its ETag and that the receipt key survives a recreated API, then
# tear everything down (volumes included). Prints how long each step took.
#
#   scripts/compose-smoke.sh              # as root, with dockerd running (README "Containers")
#   BUILD=0 scripts/compose-smoke.sh      # the images of a previous run, as they are
#
# Needs docker (with `docker compose` or docker-compose), curl, python3, and for a first run
# debootstrap (the base image is made from Debian's archive: no registry is needed) and a pip
# that can download the dependencies (the wheelhouse; the builds then use --no-index).
# Too slow for .ci/run: on the 2-core development VM (vfs driver) about 35 minutes with a cold
# build, 5 minutes with BUILD=0 (README "Containers").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PROJECT=${PROJECT:-lethe-smoke}
BASE_IMAGE=${BASE_IMAGE:-lethe-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WHEELHOUSE_DIR=${WHEELHOUSE_DIR:-$ROOT/wheelhouse}
WHEELHOUSE_PORT=${WHEELHOUSE_PORT:-8731}
PIP=${PIP:-$ROOT/.venv/bin/pip}
API_PORT=${API_PORT:-58000}
DB_PORT=${DB_PORT:-55432}
REDIS_PORT=${REDIS_PORT:-56379}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-600}
# BUILD=0: start the images a previous run built, as they are (no wheelhouse, no build).
BUILD=${BUILD:-1}
# docker-compose 1.x gives up on an engine call after 60 s; on the vfs storage driver making
# a container copies its whole image (2 GB), which can take longer on a busy machine.
export COMPOSE_HTTP_TIMEOUT=${COMPOSE_HTTP_TIMEOUT:-600}
# debootstrap and pip share the machine with other work: they yield the CPU to it. (The image
# builds run in dockerd: start it under nice for the same.)
NICE=${NICE:-nice -n 15}

if docker compose version >/dev/null 2>&1; then
  COMPOSE_BIN=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE_BIN=(docker-compose)
else
  echo "compose-smoke: needs docker compose or docker-compose" >&2
  exit 1
fi

WORK=$(mktemp -d)
ENV_FILE="$WORK/stack.env"
compose() {
  "${COMPOSE_BIN[@]}" --project-name "$PROJECT" --env-file "$ENV_FILE" \
    -f docker-compose.yml -f docker-compose.local.yml "$@"
}

TIMINGS=()
now() { date +%s.%N; }
record() {  # record NAME START: the time since START, printed now and in the summary
  local line
  line=$(python3 -c 'import sys, time; print(f"{sys.argv[1]:<56} {time.time() - float(sys.argv[2]):7.1f} s")' "$1" "$2")
  echo "== $line"
  TIMINGS+=("$line")
}

SERVER=
STACK_UP=
cleanup() {
  local status=$?
  if [ -n "$STACK_UP" ]; then
    if [ "$status" -ne 0 ]; then
      echo "compose-smoke: failed; the stack's last logs:" >&2
      compose logs --no-color --tail 40 >&2 || true
    fi
    compose down --volumes --remove-orphans >/dev/null 2>&1 || true
  fi
  if [ -n "$SERVER" ]; then
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

# The same torch as `make install` (the Makefile holds the pin).
TORCH_SPEC=$(sed -n 's/^TORCH_SPEC ?= *//p' Makefile)
[ -n "$TORCH_SPEC" ] || { echo "compose-smoke: no TORCH_SPEC in the Makefile" >&2; exit 1; }

# One snapshot of the checkout (tracked and unignored files) for the wheelhouse, the build and
# the quick start: edits made meanwhile in a shared tree cannot make them disagree. (A file
# listed but deleted before it is copied is left out, as it would be from a later listing.)
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard \
  | xargs -0 cp --parents --no-dereference -t "$WORK/src" 2>/dev/null || true
cd "$WORK/src"

# 1. A base image from Debian's archive, when there is none yet.
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  t=$(now)
  $NICE debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; exit 1; }
  tar -C "$WORK/rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
  record "base image $BASE_IMAGE (debootstrap $SUITE)" "$t"
fi

# Throw-away passwords: the stack refuses to start without them (.env.example).
secret() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
cat >"$ENV_FILE" <<EOF
POSTGRES_PASSWORD=$(secret)
REDIS_PASSWORD=$(secret)
LETHE_CONSOLE_SECRET=$(secret)
LETHE_API_PORT=$API_PORT
LETHE_DB_PORT=$DB_PORT
LETHE_REDIS_PORT=$REDIS_PORT
LETHE_BASE_IMAGE=$BASE_IMAGE
LETHE_WHEELHOUSE=http://127.0.0.1:$WHEELHOUSE_PORT/
EOF

for port in "$API_PORT" "$DB_PORT" "$REDIS_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "compose-smoke: port $port is taken (set API_PORT, DB_PORT or REDIS_PORT)" >&2
    exit 1
  fi
done

if [ "$BUILD" = 1 ]; then
# 2. The wheelhouse: every wheel the image needs. Run every time: it costs seconds when the
#    wheels are there, and a dependency added to pyproject.toml since is fetched.
t=$(now)
mkdir -p "$WHEELHOUSE_DIR"
python3 docker/requirements.py pyproject.toml client/pyproject.toml >"$WORK/requirements.txt"
echo "$TORCH_SPEC" >>"$WORK/requirements.txt"
echo "setuptools>=77" >>"$WORK/requirements.txt"
wheel() { $NICE "$PIP" wheel --quiet --wheel-dir "$WHEELHOUSE_DIR" "$@"; }
wheel -r "$WORK/requirements.txt"
# This pip resolved for this machine's Python; the image's may differ in a way markers see
# (Debian 12's 3.11.2 needs async-timeout for redis, a 3.11.7 does not). So the image's own
# pip resolves against the wheelhouse, offline, and whatever it misses is fetched here.
for _ in 1 2 3 4 5 6 7 8; do
  if docker run --rm --network none -v "$WHEELHOUSE_DIR:/wheelhouse:ro" \
       -v "$WORK/requirements.txt:/requirements.txt:ro" "$BASE_IMAGE" sh -c \
       'python3 -m venv /tmp/venv && /tmp/venv/bin/pip install --quiet --dry-run --no-index \
          --find-links /wheelhouse -r /requirements.txt' >"$WORK/resolve.log" 2>&1; then
    RESOLVED=1
    break
  fi
  missing=$(sed -n 's/^ERROR: No matching distribution found for \([^;]*\).*/\1/p' "$WORK/resolve.log")
  [ -n "$missing" ] || { cat "$WORK/resolve.log" >&2; exit 1; }
  echo "wheelhouse: the image's Python also needs $missing"
  wheel "$missing"
done
[ -n "${RESOLVED:-}" ] || { cat "$WORK/resolve.log" >&2; exit 1; }
record "wheelhouse $WHEELHOUSE_DIR ($(find "$WHEELHOUSE_DIR" -name '*.whl' | wc -l) wheels)" "$t"

# Served over HTTP to the builds (docker build has no bind mounts without BuildKit), so the
# wheels never become a layer of any image.
python3 -m http.server --bind 127.0.0.1 "$WHEELHOUSE_PORT" --directory "$WHEELHOUSE_DIR" \
  >"$WORK/wheelhouse.log" 2>&1 &
SERVER=$!

deadline=$((SECONDS + 30))
until curl -fsS "http://127.0.0.1:$WHEELHOUSE_PORT/" >/dev/null 2>&1; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "compose-smoke: wheelhouse server did not start" >&2; exit 1; }
  sleep 0.2
done

# 3. The images, through compose's own build settings: api's image is migrate's and worker's
#    too (the same tag), so it is built once.
t=$(now)
compose build api db redis >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; exit 1; }
record "docker compose build api db redis" "$t"
kill "$SERVER" 2>/dev/null || true
wait "$SERVER" 2>/dev/null || true
SERVER=
fi

# 4. The stack: db and redis healthy, migrate done, then api and worker healthy.
container() { compose ps -q "$1"; }
health() { docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1"; }
wait_healthy() {  # wait_healthy SERVICE...
  local service id state deadline=$((SECONDS + HEALTH_TIMEOUT))
  for service in "$@"; do
    while :; do
      id=$(container "$service")
      state=$([ -n "$id" ] && health "$id" || echo missing)
      [ "$state" = healthy ] && break
      if [ "$state" = exited ] || [ "$state" = dead ] || [ "$SECONDS" -ge "$deadline" ]; then
        echo "compose-smoke: $service is $state" >&2
        exit 1
      fi
      sleep 1
    done
  done
}
t=$(now)
STACK_UP=1
compose up -d --no-build >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; exit 1; }
wait_healthy db redis api worker
record "docker compose up: every service healthy" "$t"
migrated=$(docker inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$(container migrate)")
[ "$migrated" = "exited 0" ] || { echo "compose-smoke: migrate is $migrated" >&2; exit 1; }
for service in api worker; do
  uid=$(compose exec -T "$service" id -u)
  [ "$uid" != 0 ] || { echo "compose-smoke: $service runs as root" >&2; exit 1; }
done

URL="http://127.0.0.1:$API_PORT"
TOKEN=$(compose exec -T api lethe apikey create smoke | tail -n 1 | tr -d '\r')
get() { curl -fsS -H "Authorization: Bearer $TOKEN" "$URL$1"; }
# field PATH: one value of the JSON on standard input, PATH as items.0.model_id.
field() {
  python3 -c 'import json, sys
value = json.load(sys.stdin)
for step in sys.argv[1].split("."):
    value = value[int(step)] if isinstance(value, list) else value[step]
print(len(value) if isinstance(value, list) else value)' "$1"
}
KEY_BEFORE=$(get /v1/keys/receipt | field key_id)

# 5. The quick start, from a container of the same image on the host's network: its client
#    and its `lethe train` are the image's own.
t=$(now)
IMAGE=$(docker inspect --format '{{.Config.Image}}' "$(container api)")
docker run --rm --network host --user lethe -e SERVER_URL="$URL" -e TOKEN="$TOKEN" \
  -e BIN=/opt/venv/bin -e EPOCHS="${EPOCHS:-30}" -v "$PWD/scripts:/opt/smoke/scripts:ro" \
  --entrypoint bash "$IMAGE" /opt/smoke/scripts/quickstart.sh
record "scripts/quickstart.sh against the stack" "$t"

# 6. The deletion request completed, and its version's checkpoint is what its ETag says.
REQUESTS=$(get "/v1/deletion-requests?status=completed")
[ "$(echo "$REQUESTS" | field items)" -ge 1 ] \
  || { echo "compose-smoke: no completed deletion request: $REQUESTS" >&2; exit 1; }
MODEL=$(echo "$REQUESTS" | field items.0.model_id)
VERSION=$(echo "$REQUESTS" | field items.0.version_after)
curl -fsS -H "Authorization: Bearer $TOKEN" -D "$WORK/headers" -o "$WORK/checkpoint" \
  "$URL/v1/models/$MODEL/versions/$VERSION/checkpoint"
ETAG=$(sed -n 's/^[Ee][Tt][Aa][Gg]: *"\([0-9a-f]*\)".*/\1/p' "$WORK/headers")
SHA=$(sha256sum "$WORK/checkpoint" | cut -d' ' -f1)
[ -n "$ETAG" ] && [ "$ETAG" = "$SHA" ] \
  || { echo "compose-smoke: checkpoint sha256 $SHA, ETag '$ETAG'" >&2; exit 1; }
echo "checkpoint of $MODEL version $VERSION: sha256 $SHA = its ETag"

# 7. The receipt key is the volume's, not the container's: a recreated API signs with it.
t=$(now)
compose up -d --no-deps --force-recreate api >"$WORK/recreate.log" 2>&1 \
  || { cat "$WORK/recreate.log" >&2; exit 1; }
wait_healthy api
record "api recreated, healthy again" "$t"
KEY_AFTER=$(get /v1/keys/receipt | field key_id)
[ "$KEY_AFTER" = "$KEY_BEFORE" ] \
  || { echo "compose-smoke: receipt key $KEY_BEFORE became $KEY_AFTER" >&2; exit 1; }
echo "receipt key $KEY_AFTER kept across the API's recreation"

echo
echo "images:"
for image in "$IMAGE" lethe-postgres:local lethe-redis:local "$BASE_IMAGE"; do
  docker image inspect --format "  $image {{.Size}}" "$image" \
    | awk '{printf "  %-28s %6.0f MB\n", $1, $2 / 1e6}'
done
echo "timings:"
printf '  %s\n' "${TIMINGS[@]}"
