#!/bin/sh
# Build the base image(s) the Dockerfiles use, from Debian packages, for an
# engine that cannot pull from a registry.
#
#   docker/build-base-images.sh            # builds cultivate/debian:bookworm if missing
#   FORCE=1 docker/build-base-images.sh    # rebuild even when the image exists
#
# How: debootstrap --variant=minbase bookworm into a temporary directory, tar
# it up (the tarball is cached under $CACHE_DIR so a second build is fast), and
# `docker import` it. Idempotent: when the image already exists nothing runs.
# Needs root (debootstrap) and a reachable Debian mirror.
#
# Environment:
#   BASE_IMAGE  image name to create        (default cultivate/debian:bookworm)
#   SUITE       Debian suite                (default bookworm)
#   MIRROR      Debian mirror               (default http://deb.debian.org/debian)
#   CACHE_DIR   where the rootfs tarball is kept (default /var/cache/cultivate)
#   FORCE       1 = rebuild the image (the cached tarball is reused; delete it to refetch)
set -eu

BASE_IMAGE="${BASE_IMAGE:-cultivate/debian:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
CACHE_DIR="${CACHE_DIR:-/var/cache/cultivate}"
FORCE="${FORCE:-0}"
TARBALL="$CACHE_DIR/debian-$SUITE-minbase.tar"

log() { printf '%s build-base-images: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

if [ "$FORCE" != 1 ] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE already exists; nothing to do"
    exit 0
fi

# Several builds may start at once (parallel tests); one builds, the others wait.
mkdir -p "$CACHE_DIR"
LOCK="$CACHE_DIR/.build-base-images.lock"
if command -v flock >/dev/null 2>&1 && [ -z "${CULTIVATE_BASE_LOCKED:-}" ]; then
    export CULTIVATE_BASE_LOCKED=1
    exec flock "$LOCK" "$0" "$@"
fi
if [ "$FORCE" != 1 ] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE already exists; nothing to do"
    exit 0
fi

if [ ! -s "$TARBALL" ]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        if [ "$(id -u)" -ne 0 ]; then
            log "debootstrap is missing and this is not root: run 'apt-get install debootstrap' as root"
            exit 1
        fi
        log "installing debootstrap"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap
    fi
    ROOTFS="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    trap 'rm -rf "$ROOTFS"' EXIT INT TERM
    log "debootstrap --variant=minbase $SUITE $ROOTFS $MIRROR"
    debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR"
    # Security and point-release updates, like the official image.
    if [ "$SUITE" = bookworm ]; then
        cat > "$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
    fi
    # Container-friendly apt defaults (as in the official debian:*-slim image).
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        > "$ROOTFS/etc/apt/apt.conf.d/90cultivate-no-recommends"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
        "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/* 2>/dev/null || true
    : > "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
    : > "$ROOTFS/etc/hostname" 2>/dev/null || true
    tar -C "$ROOTFS" --numeric-owner -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$ROOTFS"
    trap - EXIT INT TERM
    log "cached rootfs in $TARBALL"
else
    log "using cached rootfs $TARBALL"
fi

log "docker import $TARBALL $BASE_IMAGE"
docker import \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --message "debootstrap --variant=minbase $SUITE (cultivate docker/build-base-images.sh)" \
    - "$BASE_IMAGE" < "$TARBALL" >/dev/null
log "built $BASE_IMAGE"
