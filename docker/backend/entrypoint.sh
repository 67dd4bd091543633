#!/bin/sh
# Backend entrypoint: refuse to start unless the database socket directory is
# a mount (the db_socket volume shared with the database container), then run
# the application as the container's one process (it handles SIGTERM).
set -eu
SOCKET_DIR="${DB_SOCKET_DIR:-/var/run/postgresql}"

is_mount() {
    dir="$(readlink -f "$1" 2>/dev/null || echo "$1")"
    awk -v d="$dir" '$5 == d { found = 1 } END { exit !found }' /proc/self/mountinfo
}

if [ "$(id -u)" = 0 ]; then
    echo "backend: FATAL: running as root; the image runs as apiuser (UID 1001), do not override the user" >&2
    exit 1
fi
if ! is_mount "$SOCKET_DIR"; then
    echo "backend: FATAL: $SOCKET_DIR is not a mount. Mount the database socket volume there (compose: \`- db_socket:$SOCKET_DIR\` under the backend's volumes); the backend reaches PostgreSQL only through that socket." >&2
    exit 1
fi
exec "$@"
