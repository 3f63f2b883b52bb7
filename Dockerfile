# Blood cell classifier: the service image (target `runtime`, also the default) and a training
# image (target `train`, with TensorFlow).
#
#   docker build --target runtime -t bloodcells .      (or: docker compose build)
#   docker run --rm --init -p 8000:8000 --read-only --tmpfs /tmp bloodcells
#
# Builds with the classic builder as well as BuildKit: no `# syntax=` line, no RUN --mount, no
# heredocs. The classic builder builds every stage up to its target, in file order, so the
# training stage comes after `runtime` (`--target runtime` never installs TensorFlow) and the
# last stage, the default target, is the service again.
#
# Works with python:3.11-slim (Python in /usr/local/bin) and with a Debian-based stand-in
# (Python in /usr/bin): everything runs from the virtual environment /opt/venv.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# build: the project's runtime distribution (no extras) installed into /opt/venv.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The dependencies first, pinned by deploy/constraints.txt, in a layer of their own: a change to the
# code re-installs only the project.
COPY pyproject.toml ./
COPY deploy/constraints.txt deploy/requirements.py deploy/
RUN python3 deploy/requirements.py > /tmp/requirements.txt \
 && pip install --requirement /tmp/requirements.txt --constraint deploy/constraints.txt
COPY README.md ./
COPY app app/
COPY training training/
# `.` is this project (its dependencies are in place); the wheel build needs setuptools, which pip
# fetches into a throw-away build environment.
RUN pip install --no-deps . \
 && python3 -m compileall -q /opt/venv/lib

# ---------------------------------------------------------------------------------------------
# venv: the same environment without what the service never runs: pip, setuptools and the
# dependencies' own test suites (about 15 MB).
FROM build AS venv
RUN pip uninstall --yes --quiet pip setuptools \
 && find /opt/venv -depth -type d -name tests -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------
# runtime: the base image, the environment and the models; nothing else.
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --gid 10001 bloodcells \
 && useradd --uid 10001 --gid bloodcells --no-log-init --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin bloodcells \
 # No setuid/setgid programs (su, mount, passwd): Swarm cannot set no-new-privileges, so none may gain any.
 && find / -xdev -perm /6000 -type f -exec chmod a-s {} +
COPY --from=venv /opt/venv /opt/venv
# Only what the service loads: <mode>.onnx + <mode>.json (the .keras files stay out, .dockerignore).
COPY models/ /srv/bloodcells/models/
WORKDIR /srv/bloodcells
# Read-only friendly: no bytecode written at run time (it is compiled in the build), temporary files
# (the Prometheus multi-worker directory included) only under /tmp, a tmpfs in docker-compose.yml.
# ORT_DISABLE_TELEMETRY: onnxruntime's opt-out of its usage telemetry; without it onnxruntime also
# warns, in a line that is not JSON, that it cannot persist a device id on the read-only root. (The
# package sets it too, app/__init__.py, for runs outside the image.)
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    ORT_DISABLE_TELEMETRY=1 \
    BLOODCELLS_HOST=0.0.0.0 \
    BLOODCELLS_PORT=8000 \
    BLOODCELLS_MODEL_DIR=/srv/bloodcells/models
USER 10001:10001
EXPOSE 8000
# No curl in the image: the probe is a bare socket in Python (-I -S: no site, about 25 ms of CPU,
# half of what http.client costs), GET /readyz on the port the service listens on. Every 2 s, so
# that the container is reported healthy within 2 s of being ready.
HEALTHCHECK --interval=2s --timeout=2s --start-period=30s --retries=3 \
  CMD ["python3", "-I", "-S", "-c", "import os, socket, sys; s = socket.create_connection(('127.0.0.1', int(os.environ.get('BLOODCELLS_PORT', '8000'))), 2); s.sendall(b'GET /readyz HTTP/1.0\\r\\n\\r\\n'); sys.exit(s.recv(12) != b'HTTP/1.1 200')"]
# `bloodcells serve` runs uvicorn (one worker) or uvicorn's supervisor (several): either handles
# SIGTERM and SIGINT itself, so it can be PID 1; `init: true` (compose) or `docker run --init`
# adds an init that also reaps any orphaned process.
ENTRYPOINT ["bloodcells"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------
# train: the training extra (TensorFlow, tf2onnx, onnx, matplotlib) for `bloodcells train`,
# `experiment`, `export`, `evaluate` and `card`. Mount the data set read-only at /data and the
# repository's models/ (and runs/) to receive the output: see the `train` service.
FROM build AS train
RUN python3 deploy/requirements.py train > /tmp/requirements.txt \
 && pip install --requirement /tmp/requirements.txt --constraint deploy/constraints.txt \
 && groupadd --gid 10001 bloodcells \
 && useradd --uid 10001 --gid bloodcells --no-log-init --create-home --home-dir /home/bloodcells \
            --shell /usr/sbin/nologin bloodcells \
 && mkdir -p /srv/bloodcells/models /srv/bloodcells/runs /cache \
 && chown bloodcells:bloodcells /srv/bloodcells/models /srv/bloodcells/runs \
 && chmod 1777 /cache
WORKDIR /srv/bloodcells
# /cache: the preprocessed-image cache (a named volume in docker-compose.yml), writable by whatever
# user the container runs as, like /tmp.
ENV PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    BLOODCELLS_DATA_DIR=/data \
    BLOODCELLS_CACHE_DIR=/cache \
    BLOODCELLS_MODEL_DIR=/srv/bloodcells/models
USER 10001:10001
ENTRYPOINT ["bloodcells"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# The default target (`docker build .`) is the service. With BuildKit this builds only the stages
# above that `runtime` needs; the classic builder also builds `train`: give it `--target runtime`.
FROM runtime AS service
