#!/usr/bin/env bash
# The main job on its built-in default: build cultivate and its plugins, then
# deploy the bundled example application (examples/app) to this machine's
# Docker engine through the local transport, and show that it answers.
#
#   scripts/demo.sh [extra cultivate deploy flags, e.g. -v]
#
# Needs: a running Docker engine with docker-compose (v1) or `docker compose`
# (v2), and root (apt-get for debootstrap; the deploy directory
# /var/lib/cultivate/example). No registry is needed: the base image is built
# from Debian packages by docker/build-base-images.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

docker info >/dev/null 2>&1 || { echo "error: this machine's Docker engine does not answer (is dockerd running?)" >&2; exit 1; }

say "building cultivate and its plugins (release)"
cargo build --release --quiet

say "building the base image from Debian packages (skipped when present)"
docker/build-base-images.sh

# The example's secrets: created once, mode 0600, never committed (.gitignore).
if [ ! -f .cultivate/secrets.env ]; then
    mkdir -p .cultivate
    (umask 077; printf 'APP_SECRET=%s\n' "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" > .cultivate/secrets.env)
fi
chmod 600 .cultivate/secrets.env

say "cultivate deploy (target: local, config: ./cultivate.toml)"
./target/release/cultivate deploy "$@"

port=$(sed -n 's/^http *= *\([0-9]*\).*/\1/p' cultivate.toml | head -n1)
port=${port:-8080}
say "the frontend answers on http://localhost:$port/"
curl -fsS "http://localhost:$port/" | grep -o '<title>[^<]*</title>' || true
say "the backend's health, through nginx, queries PostgreSQL over the Unix socket"
curl -fsS "http://localhost:$port/api/health"; echo
