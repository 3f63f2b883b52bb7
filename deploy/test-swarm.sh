#!/usr/bin/env bash
# End-to-end check of the Docker Swarm deployment (deploy/swarm/stack.yml), for real: builds the
# images, deploys the stack on a single-node swarm and puts it through a rolling update, scaling and
# a killed replica under load, then tears everything down.
#
#   deploy/test-swarm.sh            (from any folder; CI: BLOODCELLS_REQUIRE_DOCKER=1 deploy/test-swarm.sh)
#
# Steps: build the runtime image and nginx (the official image, or the Debian stand-in where no
# registry answers); join a swarm (`docker swarm init` on loopback, or the engine's own swarm if it
# is a manager already); deploy the stack and check what Swarm made of it (hardening, health,
# dnsrr); classify a real TEST image through the published port and check both replicas serve.
# Then, with deploy/swarm/load.py:
#   1. a rolling update of `api` (`docker service update --force`) under steady load: 0 failed requests;
#   2. requests/s at 2 and at 4 replicas (printed, not judged: on 2 cores 4 replicas are no faster),
#      0 failed, every replica serving; scale 4 -> 2 under steady load: 0 failed;
#   3. `docker kill` of one replica under steady load: back to 2 healthy replicas within 60 s, failed
#      requests at most the number of load connections (ideally 0: nginx retries another replica);
#   4. remove the stack, wait for its containers, networks and config to go, leave the swarm if this
#      script created it.
# Last, a line with the figures and `docker-swarm: N passed, 0 failed` (or `1 failed`).
#
# Steady load goes through the published port from this machine, paced below nginx's per-client
# limit (1,000 requests/s per address: one address, one client). The throughput runs are not paced:
# they run in a container in the proxy's network namespace, 8 connections from 8 loopback
# addresses, so that the per-client limit does not cap them.
#
# Docker: an engine that answers `docker info` is used as it is; otherwise ../shared/tools/docker-up
# brings one up and this script stops it at the end (unless others' containers run on it by then).
# Where neither works the script says so and exits 0 (skipped), unless BLOODCELLS_REQUIRE_DOCKER=1,
# which makes that a failure. Swarm mode: without the IPVS kernel module the ingress routing mesh
# does not work, so the stack publishes the proxy in host mode (see stack.yml); a swarm this script
# initialises is left again at the end, one it finds is used and kept.
#
# Environment:
#   BLOODCELLS_REQUIRE_DOCKER=1    fail instead of skipping when no Docker engine can be had (CI)
#   BLOODCELLS_DATA_DIR            the data set (default ../shared/data/blood-cells/dataset2-master)
#   BLOODCELLS_DOCKER_UP           the engine bootstrapper (default ../shared/tools/docker-up)
#   BLOODCELLS_SWARM_PORT          the proxy's published port (default 18600; bound on every address)
#   BLOODCELLS_SWARM_CONNECTIONS   load connections (default 6)
#   BLOODCELLS_SWARM_RATE          steady load, requests/s in all (default 120, well below nginx's 1,000 per client)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DATA_DIR=${BLOODCELLS_DATA_DIR:-../shared/data/blood-cells/dataset2-master}
DOCKER_UP=${BLOODCELLS_DOCKER_UP:-$ROOT/../shared/tools/docker-up}
export DOCKER_UP_DIR=${DOCKER_UP_DIR:-/tmp/docker-up}
REQUIRE=${BLOODCELLS_REQUIRE_DOCKER:-0}
PORT=${BLOODCELLS_SWARM_PORT:-18600}
CONNECTIONS=${BLOODCELLS_SWARM_CONNECTIONS:-6}
RATE=${BLOODCELLS_SWARM_RATE:-120}
STACK=bloodcells-swarm-test
API=${STACK}_api
PROXY=${STACK}_proxy
LOAD_CONTAINER=$STACK-load
BASE_IMAGE=python:3.11-slim
NGINX_IMAGE=nginx:1.27-alpine
NGINX_STANDIN=bloodcells-nginx-standin:local
LB_URL=http://127.0.0.1:$PORT
PYTHON=${PYTHON:-python3}
LOAD=$ROOT/deploy/swarm/load.py
# how long a replica may take to come back after `docker kill` (restart delay 3 s + start + health)
RECOVER_LIMIT_S=60

# The stack's settings for this run (docker stack deploy reads them from the environment): the test
# image, the port, 2 replicas of one worker and one CPU each, and a config name that changes with
# deploy/nginx.conf (Swarm configs cannot be changed in place).
export BLOODCELLS_IMAGE=bloodcells:swarm-test
export BLOODCELLS_LB_PORT=$PORT BLOODCELLS_REPLICAS=2 BLOODCELLS_WORKERS=1 BLOODCELLS_CPUS=1
BLOODCELLS_NGINX_CONFIG=$STACK-nginx-$(sha256sum deploy/nginx.conf | cut -c1-12)
export BLOODCELLS_NGINX_CONFIG

START=$(date +%s.%N)
PASSED=0
SKIPPED=0
ENGINE=0
JOINED_SWARM=0
HAD_GWBRIDGE=1
LOAD_PID=""
WORK=$(mktemp -d)
# the figures of the last line but one
ROLLOUT_S=n/a ROLLOUT_FAILED=n/a RPS2=n/a RPS4=n/a RATIO=n/a KILL_FAILED=n/a RECOVER_S=n/a

# seconds between two `date +%s.%N` readings, and comparisons of such numbers (awk, no bc)
diff_s() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }
less_than() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
elapsed() { diff_s "$(date +%s.%N)" "${1:-$START}"; }
say() { printf '[swarm %6ss] %s\n' "$(elapsed)" "$*"; }
step() { say "=== $* ($(date +%T))"; }
ok() { PASSED=$((PASSED + 1)); say "ok   $*"; }
fail() { say "FAIL $*"; exit 1; }
# a figure with its unit, or n/a where the step did not get that far
unit() { if [ "$1" = n/a ]; then echo n/a; else echo "$1$2"; fi; }

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

stack_containers() { docker ps -a -q --filter "label=com.docker.stack.namespace=$STACK"; }
stack_networks() { docker network ls -q --filter "label=com.docker.stack.namespace=$STACK"; }
stack_configs() { docker config ls -q --filter "label=com.docker.stack.namespace=$STACK" 2>/dev/null; }
stack_leftovers() {
  echo "containers [$(stack_containers | xargs)] networks [$(stack_networks | xargs)] configs [$(stack_configs | xargs)]"
}
stack_exists() { docker stack ls --format '{{.Name}}' 2>/dev/null | grep -x "$STACK" >/dev/null; }  # not -q: its early exit would fail the pipe
# running containers of the api service, and how many of them are healthy
api_containers() { docker ps -q --filter "label=com.docker.swarm.service.name=$API" | sort; }
api_healthy() {
  docker ps -q --filter "label=com.docker.swarm.service.name=$API" --filter health=healthy | wc -l
}
proxy_container() { docker ps -q --filter "label=com.docker.swarm.service.name=$PROXY" | sort | sed -n 1p; }

# leave the swarm this script initialised, and remove the bridge that `docker swarm init` made
leave_swarm() {
  docker swarm leave --force >/dev/null 2>&1 || return 1
  JOINED_SWARM=0
  if [ "$HAD_GWBRIDGE" = 0 ]; then
    docker network rm docker_gwbridge >/dev/null 2>&1 || true
  fi
}

# `docker stack rm`, then wait (60 s at most) until its containers, networks and config are gone
remove_stack() {
  docker stack rm "$STACK" >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do
    if [ -z "$(stack_containers)" ] && [ -z "$(stack_networks)" ] && [ -z "$(stack_configs)" ]; then
      return 0
    fi
    sleep 0.5
  done
  return 1
}

# wait (up to $2 s) until exactly $1 api containers run, all healthy, Swarm counts $1/$1 and nginx
# answers /readyz; prints the seconds it took
wait_replicas() {
  local want=$1 limit=$2 t running healthy replicas
  t=$(date +%s.%N)
  while less_than "$(elapsed "$t")" "$limit"; do
    running=$(api_containers | wc -l)
    healthy=$(api_healthy)
    replicas=$(docker service ls --filter "name=$API" --format '{{.Name}} {{.Replicas}}' \
      | awk -v n="$API" '$1 == n {print $2}')
    if [ "$running" = "$want" ] && [ "$healthy" = "$want" ] && [ "$replicas" = "$want/$want" ] \
       && curl -fsS -o /dev/null --max-time 2 "$LB_URL/readyz" 2>/dev/null; then
      elapsed "$t"
      return 0
    fi
    sleep 0.25
  done
  say "after ${limit}s: $running api containers running, $healthy healthy, Swarm replicas $replicas (want $want)" >&2
  return 1
}

# steady load through the published port, in the background: load_start NAME [load.py options]
load_start() {
  local name=$1
  shift
  "$PYTHON" "$LOAD" --url "$LB_URL" --image "$CELL" --connections "$CONNECTIONS" --rate "$RATE" \
    --output "$WORK/$name.json" "$@" >/dev/null 2>"$WORK/$name.err" &
  LOAD_PID=$!
}
load_stop() {
  kill -TERM "$LOAD_PID" 2>/dev/null || true
  wait "$LOAD_PID" || { cat "$WORK/$1.err"; LOAD_PID=""; fail "the load client $1 failed"; }
  LOAD_PID=""
  [ -s "$WORK/$1.json" ] || { cat "$WORK/$1.err"; fail "the load client $1 wrote no summary"; }
}
# one figure of a load summary: field FILE KEY
field() { "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
# a load summary in one line, and its first failures
describe() {
  "$PYTHON" - "$1" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
lat = s["latency_ms"]
print(f'{s["requests"]} requests in {s["seconds"]} s over {s["connections"]} connections, {s["failed"]} failed, '
      f'{s["rps"]} req/s, latency p50 {lat["p50"]} / p99 {lat["p99"]} / max {lat["max"]} ms, {s["slow"]} took 1 s or more, '
      f'statuses {s["statuses"]}'
      + (f', exceptions {s["exceptions"]}' if s["exceptions"] else ""))
for failure in s["failures"][:5]:
    print("    failed:", json.dumps(failure)[:300])
EOF
}

# POST /classify answered 200 by one replica (its own /metrics, read inside the container)
served() {
  docker exec "$1" python3 -I -S -c '
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8000/metrics", timeout=5).read().decode()
print(sum(int(float(line.split()[-1])) for line in text.splitlines()
          if line.startswith("bloodcells_http_requests_total{")
          and "route=\"/classify\"" in line and "status=\"200\"" in line))'
}
# "container count" for every api replica
served_all() { for cid in $(api_containers); do echo "$cid $(served "$cid")"; done; }

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  set +e
  if [ -n "$LOAD_PID" ]; then kill -TERM "$LOAD_PID" 2>/dev/null; wait "$LOAD_PID" 2>/dev/null; fi
  if [ "$ENGINE" = 1 ] && docker info >/dev/null 2>&1; then
    docker rm -f "$LOAD_CONTAINER" >/dev/null 2>&1
    if stack_exists || [ -n "$(stack_containers)" ]; then
      if [ "$status" != 0 ]; then
        say "tasks of the stack:"
        docker stack ps --no-trunc "$STACK" \
          --format '    {{.Name}} {{.Image}} {{.DesiredState}} {{.CurrentState}} {{.Error}}' 2>&1 | head -n 30
        for service in "$API" "$PROXY"; do
          say "last 30 log lines of $service:"
          docker service logs --no-task-ids --tail 30 "$service" 2>&1 | cut -c1-300
        done
      fi
      if ! remove_stack; then
        say "FAIL stack $STACK left behind: $(stack_leftovers)"
        status=1
      fi
    fi
    if [ "$JOINED_SWARM" = 1 ]; then
      leave_swarm && say "left the swarm this script initialised"
    fi
  fi
  engine_stop || status=1
  rm -rf "$WORK"
  if [ "$SKIPPED" = 1 ] && [ "$status" = 0 ]; then
    echo "docker-swarm: skipped, no Docker engine (BLOODCELLS_REQUIRE_DOCKER=1 makes this a failure)"
  else
    [ "$status" = 0 ] && say "done in $(elapsed)s"
    printf 'figures: rollout %s, %s failed requests during it; throughput %s at 2 replicas, %s at 4 (%s);' \
      "$(unit "$ROLLOUT_S" s)" "$ROLLOUT_FAILED" "$(unit "$RPS2" " req/s")" "$(unit "$RPS4" " req/s")" "$(unit "$RATIO" x)"
    printf ' %s failed requests around the kill, replica replaced in %s\n' "$KILL_FAILED" "$(unit "$RECOVER_S" s)"
    if [ "$status" = 0 ]; then
      echo "docker-swarm: $PASSED passed, 0 failed"
    else
      echo "docker-swarm: $PASSED passed, 1 failed"
    fi
  fi
  exit "$status"
}

# --- a Docker engine, images and a swarm -------------------------------------------------------
trap cleanup EXIT
trap 'exit 130' INT TERM
step "Docker engine"
engine_start
ENGINE=1
say "Docker $(docker info --format '{{.ServerVersion}}'), swarm: $(docker info --format '{{.Swarm.LocalNodeState}}')"

IMAGES_DIR=$DATA_DIR/images/TEST
[ -d "$IMAGES_DIR" ] || fail "no data set at $DATA_DIR (set BLOODCELLS_DATA_DIR): the load needs a real TEST image"
CELL=$(find "$IMAGES_DIR/NEUTROPHIL" -name '*.jpeg' | sort | sed -n 1p)  # not head: under pipefail its early exit kills sort with SIGPIPE (exit 141)
[ -n "$CELL" ] || fail "no JPEG in $IMAGES_DIR/NEUTROPHIL"
CELL=$(cd "$(dirname "$CELL")" && pwd)/$(basename "$CELL")

step "images"
t=$(date +%s.%N)
previous=$(docker image inspect -f '{{.Id}}' "$BLOODCELLS_IMAGE" 2>/dev/null || true)
DOCKER_BUILDKIT=0 docker build --target runtime -t "$BLOODCELLS_IMAGE" . >"$WORK/build.log" 2>&1 \
  || { tail -n 40 "$WORK/build.log"; fail "docker build"; }
# the image an earlier run built under this tag, now untagged (the build cache stays)
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$BLOODCELLS_IMAGE")" ] \
   && [ -z "$(docker image inspect -f '{{join .RepoTags ""}}' "$previous" 2>/dev/null)" ]; then
  docker image rm "$previous" >/dev/null 2>&1 || true
fi
if docker image inspect "$NGINX_IMAGE" >/dev/null 2>&1 || timeout 30 docker pull -q "$NGINX_IMAGE" >/dev/null 2>&1; then
  export BLOODCELLS_NGINX_IMAGE=$NGINX_IMAGE
  nginx_what=$NGINX_IMAGE
else
  DOCKER_BUILDKIT=0 docker build -t "$NGINX_STANDIN" - <deploy/nginx-standin.Dockerfile >"$WORK/nginx-build.log" 2>&1 \
    || { tail -n 20 "$WORK/nginx-build.log"; fail "building $NGINX_STANDIN"; }
  export BLOODCELLS_NGINX_IMAGE=$NGINX_STANDIN
  nginx_what="$NGINX_STANDIN, the Debian stand-in: no registry has $NGINX_IMAGE"
fi
ok "built $BLOODCELLS_IMAGE (classic builder, target runtime) and nginx ($nginx_what) in $(elapsed "$t")s"

step "swarm"
case "$(docker info --format '{{.Swarm.LocalNodeState}}')" in
  inactive)
    docker network inspect docker_gwbridge >/dev/null 2>&1 || HAD_GWBRIDGE=0
    # Loopback only: the swarm is this machine's alone (no other node can join it).
    docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >"$WORK/swarm-init.log" 2>&1 \
      || { cat "$WORK/swarm-init.log"; fail "docker swarm init"; }
    JOINED_SWARM=1
    ok "docker swarm init on 127.0.0.1 (left again at the end)"
    ;;
  active)
    [ "$(docker info --format '{{.Swarm.ControlAvailable}}')" = true ] \
      || fail "this engine is a swarm worker: run the test on a manager"
    ok "the engine is a swarm manager already ($(docker info --format '{{.Swarm.Nodes}}') nodes): using its swarm, which stays"
    ;;
  *) fail "the engine's swarm is $(docker info --format '{{.Swarm.LocalNodeState}}')" ;;
esac
if stack_exists || [ -n "$(stack_containers)" ]; then
  say "removing the stack $STACK an interrupted earlier run left"
  remove_stack || fail "could not remove the earlier stack $STACK"
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  fail "port $PORT is taken: set BLOODCELLS_SWARM_PORT"
fi

# --- deploy ---------------------------------------------------------------------------------------
step "deploy"
t=$(date +%s.%N)
docker stack deploy --resolve-image never -c deploy/swarm/stack.yml "$STACK" >"$WORK/deploy.log" 2>&1 \
  || { cat "$WORK/deploy.log"; fail "docker stack deploy"; }
if grep -i 'ignoring\|unsupported' "$WORK/deploy.log"; then
  fail "docker stack deploy ignored settings of deploy/swarm/stack.yml"
fi
wait_replicas 2 120 >/dev/null || fail "the stack did not get 2 healthy api replicas and a proxy answering /readyz within 120 s"
deployed_s=$(elapsed "$t")
for _ in $(seq 1 120); do
  [ "$(docker inspect -f '{{.State.Health.Status}}' "$(proxy_container)" 2>/dev/null)" = healthy ] && break
  sleep 0.25
done
[ "$(docker inspect -f '{{.State.Health.Status}}' "$(proxy_container)")" = healthy ] || fail "the proxy container is not healthy within 30 s"
ok "docker stack deploy: 2/2 api replicas healthy and nginx answering /readyz on $LB_URL in ${deployed_s}s, the proxy container healthy in $(elapsed "$t")s"

# what Swarm made of the stack file: a setting it drops would not show otherwise
api_spec=$(docker service inspect "$API" --format '{{with .Spec}}{{.EndpointSpec.Mode}} order={{.UpdateConfig.Order}} on-failure={{.UpdateConfig.FailureAction}} rollback-order={{.RollbackConfig.Order}} restart={{.TaskTemplate.RestartPolicy.Condition}} ro={{.TaskTemplate.ContainerSpec.ReadOnly}} init={{.TaskTemplate.ContainerSpec.Init}} capdrop={{.TaskTemplate.ContainerSpec.CapabilityDrop}} tmpfs={{range .TaskTemplate.ContainerSpec.Mounts}}{{.Type}}:{{.Target}}{{end}} cpus={{.TaskTemplate.Resources.Limits.NanoCPUs}} health={{.TaskTemplate.ContainerSpec.Healthcheck.Interval}} grace={{.TaskTemplate.ContainerSpec.StopGracePeriod}}{{end}}')
expected="dnsrr order=start-first on-failure=rollback rollback-order=start-first restart=any ro=true init=true capdrop=[ALL] tmpfs=tmpfs:/tmp cpus=1000000000 health=2s grace=20s"
[ "$api_spec" = "$expected" ] || fail "the api service's spec: $api_spec (want $expected)"
proxy_spec=$(docker service inspect "$PROXY" --format '{{with .Spec}}{{if .Mode.Global}}global{{else}}replicated{{end}} user={{.TaskTemplate.ContainerSpec.User}} ro={{.TaskTemplate.ContainerSpec.ReadOnly}} capdrop={{.TaskTemplate.ContainerSpec.CapabilityDrop}} stop={{.TaskTemplate.ContainerSpec.StopSignal}} config={{range .TaskTemplate.ContainerSpec.Configs}}{{.File.Name}}{{end}} ports={{range .EndpointSpec.Ports}}{{.PublishMode}}:{{.PublishedPort}}->{{.TargetPort}}{{end}}{{end}}')
expected="global user=101:101 ro=true capdrop=[ALL] stop=SIGQUIT config=/etc/nginx/nginx.conf ports=host:$PORT->8080"
[ "$proxy_spec" = "$expected" ] || fail "the proxy service's spec: $proxy_spec (want $expected)"
ok "service specs as written: api [$api_spec], proxy [$proxy_spec]"

api_cid=$(api_containers | sed -n 1p)
proxy_cid=$(proxy_container)
docker exec "$api_cid" sh -c 'touch /srv/bloodcells/probe' 2>/dev/null && fail "the api container's root filesystem is writable"
docker exec "$api_cid" sh -c 'touch /tmp/probe && rm /tmp/probe' || fail "the api container's /tmp is not writable"
docker exec "$proxy_cid" sh -c 'touch /etc/nginx/probe' 2>/dev/null && fail "the proxy container's root filesystem is writable"
uids=$(for cid in "$api_cid" "$proxy_cid"; do docker top "$cid" -o pid,uid | awk 'NR > 1 {print $2}'; done | sort -u | xargs) \
  || fail "docker top of the stack's containers"
case " $uids " in *" 0 "*) fail "a process runs as root in the stack: uids $uids" ;; esac
ok "containers: read-only root, /tmp writable, no process as root (uids $uids)"

code=$(curl -sS -o "$WORK/classify.json" -w '%{http_code}' -F "file=@$CELL;type=image/jpeg" "$LB_URL/classify?mode=original")
[ "$code" = 200 ] || fail "POST /classify of $CELL through the proxy answered $code: $(cat "$WORK/classify.json")"
label=$("$PYTHON" -c 'import json, sys; b = json.load(open(sys.argv[1])); print("%s (%.2f)" % (b["label"], b["confidence"]))' "$WORK/classify.json") \
  || fail "POST /classify: unexpected answer $(cat "$WORK/classify.json")"
for _ in $(seq 1 30); do
  curl -fsS -o /dev/null -F "file=@$CELL;type=image/jpeg" "$LB_URL/classify" || fail "POST /classify through the proxy failed"
done
counts=$(served_all | awk '{print $2}' | xargs)
for count in $counts; do [ "$count" -gt 0 ] || fail "a replica served none of 31 requests (counts: $counts)"; done
ok "POST /classify of ${CELL#"$(cd "$DATA_DIR" && pwd)"/} through the published port: 200, $label; 31 requests spread over both replicas ($counts)"

# --- 1. rolling update under load -----------------------------------------------------------------
step "1. rolling update of $API under steady load ($CONNECTIONS connections, $RATE req/s)"
before=$(api_containers | xargs)
load_start rollout --duration 300
sleep 3
t=$(date +%s.%N)
docker service update --force --no-resolve-image --detach=false --quiet "$API" >"$WORK/update.log" 2>&1 \
  || { cat "$WORK/update.log"; fail "docker service update --force $API"; }
ROLLOUT_S=$(elapsed "$t")
state=""
for _ in $(seq 1 120); do
  state=$(docker service inspect "$API" --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}')
  [ "$state" = updating ] || break
  sleep 0.5
done
completed_s=$(elapsed "$t")
[ "$state" = completed ] || fail "the rolling update ended in state '$state': $(docker service inspect "$API" --format '{{.UpdateStatus.Message}}')"
wait_replicas 2 60 >/dev/null || fail "2 healthy replicas after the rolling update"
sleep 2
load_stop rollout
after=$(api_containers | xargs)
for cid in $before; do case " $after " in *" $cid "*) fail "replica $cid was not replaced by the update" ;; esac; done
ROLLOUT_FAILED=$(field "$WORK/rollout.json" failed)
say "load during the update: $(describe "$WORK/rollout.json")"
# how the replaced replicas went (the stopped task containers stay, with their logs, as task history)
drained=$(for cid in $before; do docker logs "$cid" 2>&1 | grep -c 'draining before shutdown' || true; done \
  | awk '{n += ($1 > 0)} END {print n + 0}')
exits=$(for cid in $before; do docker inspect -f '{{.State.ExitCode}}' "$cid"; done | xargs)
say "the 2 replaced replicas: $drained logged 'draining before shutdown' (BLOODCELLS_SHUTDOWN_DELAY), exit codes: $exits"
[ "$ROLLOUT_FAILED" = 0 ] || fail "$ROLLOUT_FAILED requests failed during the rolling update"
ok "rolling update (start-first, one replica at a time): converged in ${ROLLOUT_S}s, state 'completed' after ${completed_s}s (the monitor period), both replicas replaced, 0 failed requests"

# --- 2. scaling and throughput --------------------------------------------------------------------
# Not paced, 8 connections from 127.0.0.10-17 inside the proxy's network namespace (nginx's per-client
# limit is per address); 2 s of warm-up, then 10 s measured.
throughput() {
  docker run --rm --name "$LOAD_CONTAINER" --network "container:$(proxy_container)" \
    --read-only --cap-drop ALL --user 10001:10001 --entrypoint python3 \
    -v "$LOAD:/load.py:ro" -v "$CELL:/cell.jpeg:ro" "$BLOODCELLS_IMAGE" \
    -I /load.py --url http://127.0.0.1:8080 --image /cell.jpeg --connections 8 --bind-from 127.0.0.10 \
    --warmup 2 --duration 10 >"$WORK/$1.json" 2>"$WORK/$1.err" \
    || { cat "$WORK/$1.err"; fail "the throughput load container ($1)"; }
  say "    $(describe "$WORK/$1.json") (load average $(cut -d' ' -f1 /proc/loadavg))"
  [ "$(field "$WORK/$1.json" failed)" = 0 ] || fail "$(field "$WORK/$1.json" failed) requests failed at $1"
}
step "2. throughput at 2 and 4 replicas, then 4 -> 2 under steady load"
throughput 2-replicas
RPS2=$(field "$WORK/2-replicas.json" rps)
t=$(date +%s.%N)
docker service scale --detach=false "$API=4" >"$WORK/scale.log" 2>&1 || { cat "$WORK/scale.log"; fail "docker service scale $API=4"; }
wait_replicas 4 90 >/dev/null || fail "4 healthy replicas after docker service scale"
scale_s=$(elapsed "$t")
sleep 3  # nginx's DNS answers live 2 s
served_all >"$WORK/served-before"
throughput 4-replicas
RPS4=$(field "$WORK/4-replicas.json" rps)
served_all >"$WORK/served-after"
shares=$(awk 'NR == FNR { before[$1] = $2; next } { print $2 - before[$1] }' "$WORK/served-before" "$WORK/served-after" | xargs)
for share in $shares; do [ "$share" -gt 0 ] || fail "a replica served none of the requests at 4 replicas (shares: $shares)"; done
RATIO=$(awk -v a="$RPS4" -v b="$RPS2" 'BEGIN { printf "%.2f", a / b }')
ok "scaled 2 -> 4 in ${scale_s}s; throughput $RPS2 req/s at 2 replicas, $RPS4 req/s at 4 (ratio ${RATIO}x on $(nproc) cores), 0 failed, every replica served (shares: $shares)"

load_start scale-down --duration 300
sleep 2
t=$(date +%s.%N)
docker service scale --detach=false "$API=2" >"$WORK/scale.log" 2>&1 || { cat "$WORK/scale.log"; fail "docker service scale $API=2"; }
wait_replicas 2 60 >/dev/null || fail "2 healthy replicas after scaling down"
down_s=$(elapsed "$t")
sleep 2
load_stop scale-down
say "load during the scale-down: $(describe "$WORK/scale-down.json")"
[ "$(field "$WORK/scale-down.json" failed)" = 0 ] || fail "$(field "$WORK/scale-down.json" failed) requests failed while scaling 4 -> 2"
ok "scaled 4 -> 2 under steady load in ${down_s}s: 0 failed requests"

# --- 3. a killed replica -----------------------------------------------------------------------------
step "3. docker kill of one api replica under steady load"
load_start kill --duration 300
sleep 3
victim=$(api_containers | sed -n 1p)
t=$(date +%s.%N)
docker kill "$victim" >/dev/null || fail "docker kill $victim"
RECOVER_S=$(wait_replicas 2 "$RECOVER_LIMIT_S") || fail "the api service was not back to 2 healthy replicas within ${RECOVER_LIMIT_S}s of the kill"
case " $(api_containers | xargs) " in *" $victim "*) fail "the killed container $victim still runs" ;; esac
sleep 3
load_stop kill
KILL_FAILED=$(field "$WORK/kill.json" failed)
say "load around the kill: $(describe "$WORK/kill.json")"
[ "$KILL_FAILED" -le "$CONNECTIONS" ] || fail "$KILL_FAILED requests failed around the kill, more than the $CONNECTIONS that can have been in flight"
ok "killed replica replaced (restart policy) and healthy in ${RECOVER_S}s (limit ${RECOVER_LIMIT_S}s); $KILL_FAILED failed requests (at most $CONNECTIONS allowed)"

# --- 4. tear down ----------------------------------------------------------------------------------
step "4. remove the stack"
t=$(date +%s.%N)
remove_stack || fail "stack $STACK not gone within 60 s: $(stack_leftovers)"
left="its containers, network and config are gone"
if [ "$JOINED_SWARM" = 1 ]; then
  leave_swarm || fail "docker swarm leave"
  left="$left; left the swarm"
fi
ok "docker stack rm $STACK in $(elapsed "$t")s: $left"
