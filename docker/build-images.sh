#!/bin/sh
# Build the three stack images: cultivate-{frontend,backend,database}:TAG.
#
#   docker/build-images.sh [TAG]          # TAG defaults to "latest"
#
# Environment:
#   BASE_IMAGE    base of all three images (default cultivate/debian:bookworm,
#                 built from Debian packages by build-base-images.sh; set it to
#                 debian:bookworm-slim on an engine with registry access)
#   IMAGE_PREFIX  image name prefix (default cultivate -> cultivate-frontend)
#   APP_DIR       application directory inside the build context (default examples/app)
#   SERVICES      which images to build (default "database backend frontend")
#   VERBOSE       1 = show the docker build output (it is shown anyway on failure)
#
# The build context is the repository root; /.dockerignore keeps it small.
# Re-running is cheap: unchanged layers come from the engine's build cache.
set -eu

TAG="${1:-latest}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BASE_IMAGE="${BASE_IMAGE:-cultivate/debian:bookworm}"
IMAGE_PREFIX="${IMAGE_PREFIX:-cultivate}"
APP_DIR="${APP_DIR:-examples/app}"
SERVICES="${SERVICES:-database backend frontend}"

log() { printf '%s build-images: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

if [ "$BASE_IMAGE" = cultivate/debian:bookworm ]; then
    BASE_IMAGE="$BASE_IMAGE" "$ROOT/docker/build-base-images.sh"
fi

for service in $SERVICES; do
    image="$IMAGE_PREFIX-$service:$TAG"
    log "building $image (base $BASE_IMAGE, app $APP_DIR)"
    start=$(date +%s)
    # Build output goes to a log that is shown when the build fails (or
    # always with VERBOSE=1).
    build_log="$(mktemp)"
    if ! docker build --force-rm \
        -f "$ROOT/docker/Dockerfile.$service" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "APP_DIR=$APP_DIR" \
        --label "org.opencontainers.image.title=$IMAGE_PREFIX-$service" \
        --label "org.opencontainers.image.version=$TAG" \
        -t "$image" "$ROOT" >"$build_log" 2>&1; then
        cat "$build_log" >&2
        rm -f "$build_log"
        log "FAILED: $image (output above)"
        exit 1
    fi
    [ "${VERBOSE:-0}" = 1 ] && cat "$build_log" >&2
    rm -f "$build_log"
    log "built $image in $(( $(date +%s) - start ))s"
done
