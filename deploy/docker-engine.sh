# shellcheck shell=bash
# A Docker engine for one test run, shared by deploy/test-stack.sh and deploy/test-swarm.sh (sourced).
#
# engine_start: an engine that answers `docker info` is used as it is; otherwise $DOCKER_UP
# (../shared/tools/docker-up) installs and starts one (Debian's docker.io, compose v2, a local
# python:3.11-slim stand-in), and engine_stop stops it at the end. Where neither works, the caller's
# `skip` says so (a failure under BLOODCELLS_REQUIRE_DOCKER=1).
# The caller defines say, skip and fail, and sets DOCKER_UP, DOCKER_UP_DIR and BASE_IMAGE.

STARTED_ENGINE=0

engine_start() {
  if ! command -v docker >/dev/null 2>&1 && [ ! -x "$DOCKER_UP" ]; then
    skip "no docker command and no $DOCKER_UP to install one"
  elif ! docker info >/dev/null 2>&1; then
    if [ ! -x "$DOCKER_UP" ]; then
      skip "no Docker engine answers and there is no $DOCKER_UP to start one"
    fi
    say "no Docker engine answers: starting one with $DOCKER_UP"
    # stopped at the end, even if it then fails
    STARTED_ENGINE=1
    "$DOCKER_UP" || skip "$DOCKER_UP could not bring up a Docker engine"
  elif ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && ! docker pull -q "$BASE_IMAGE" >/dev/null 2>&1 \
       && [ -x "$DOCKER_UP" ]; then
    say "the engine lacks $BASE_IMAGE and cannot pull it: making the stand-in with $DOCKER_UP"
    "$DOCKER_UP"
  fi
}

# Stop the engine engine_start started, unless containers that are not this run's still run on it
# (another test, a build): they keep it. Returns 1 when it would not stop.
engine_stop() {
  local pid others
  [ "$STARTED_ENGINE" = 1 ] || return 0
  others=$(docker ps -q 2>/dev/null | wc -l)
  if [ "$others" -gt 0 ]; then
    say "leaving the Docker engine this script started running: $others other containers use it"
    return 0
  fi
  pid=$(cat "$DOCKER_UP_DIR/dockerd.pid" 2>/dev/null)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      say "FAIL the Docker engine (pid $pid) did not stop"
      return 1
    fi
    say "stopped the Docker engine this script started (pid $pid)"
  fi
}
