# A local stand-in for the official nginx image, for machines that reach no container registry
# (this project's CI): Debian's nginx on the only base image there, the python:3.11-slim stand-in
# of ../shared/tools/docker-up (Debian bookworm). deploy/test-stack.sh builds it only when
# nginx:1.27-alpine can be neither found nor pulled, and gives it to compose through
# BLOODCELLS_NGINX_IMAGE. It behaves like the official image for deploy/nginx.conf: same config
# path, logs to stdout/stderr, `nginx -g 'daemon off;'`, SIGQUIT for a graceful stop.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# A test fixture, not a product image: whatever nginx bookworm has (1.22), unpinned on purpose so
# that a Debian point release does not break the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
 && ln -sf /dev/stdout /var/log/nginx/access.log \
 && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
