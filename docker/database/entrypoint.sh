#!/bin/sh
# Database entrypoint.
# 1. Refuse to start unless the socket directory and the data directory are
#    mounts (the db_socket and db_data volumes): without them the backend could
#    not reach the socket, or the data would vanish with the container.
# 2. As root: fix ownership of the two volumes, then drop to postgres.
# 3. First start: initdb (peer for local, reject for host). Every start:
#    init-db.sh on a private socket, so nobody connects before roles exist.
# 4. exec postgres: no TCP (listen_addresses=''), socket in /var/run/postgresql,
#    logs to stderr. Stop signal SIGINT = fast shutdown; SIGTERM = smart.
set -eu
SOCKET_DIR=/var/run/postgresql
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
HBA=/etc/cultivate/pg_hba.conf
export PGDATA

die() { echo "database: FATAL: $*" >&2; exit 1; }
is_mount() {
    dir="$(readlink -f "$1" 2>/dev/null || echo "$1")"
    awk -v d="$dir" '$5 == d { found = 1 } END { exit !found }' /proc/self/mountinfo
}

if [ "${1:-}" = postgres ]; then
    shift
fi

if [ "$(id -u)" = 0 ]; then
    is_mount "$SOCKET_DIR" || die "$SOCKET_DIR is not a mount. Mount the socket volume there (compose: \`- db_socket:$SOCKET_DIR\`); the backend connects only through that socket."
    is_mount "$PGDATA" || die "$PGDATA is not a mount. Mount the data volume there (compose: \`- db_data:$PGDATA\`); without it the data is lost with the container."
    chown postgres:postgres "$SOCKET_DIR" "$PGDATA"
    chmod 2775 "$SOCKET_DIR"
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
fi

# Not root (first branch re-executed us as postgres, or --user postgres).
is_mount "$SOCKET_DIR" || die "$SOCKET_DIR is not a mount. Mount the socket volume there (compose: \`- db_socket:$SOCKET_DIR\`)."
is_mount "$PGDATA" || die "$PGDATA is not a mount. Mount the data volume there (compose: \`- db_data:$PGDATA\`)."

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "database: initialising a new cluster in $PGDATA" >&2
    initdb -D "$PGDATA" --username=postgres --auth-local=peer --auth-host=reject \
        --encoding=UTF8 --locale=C.UTF-8 >&2
fi
cp "$HBA" "$PGDATA/pg_hba.conf"

# Roles and database, on a private socket.
INIT_SOCKET="$(mktemp -d)"
pg_ctl -D "$PGDATA" -w -t 60 -l "$INIT_SOCKET/init.log" \
    -o "-c listen_addresses='' -c unix_socket_directories=$INIT_SOCKET -c hba_file=$HBA" start >/dev/null \
    || { cat "$INIT_SOCKET/init.log" >&2; die "temporary server for init-db.sh did not start"; }
if ! PGHOST="$INIT_SOCKET" /usr/local/bin/init-db.sh; then
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null || true
    die "init-db.sh failed"
fi
pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
cat "$INIT_SOCKET/init.log" >&2
rm -rf "$INIT_SOCKET"

exec postgres -D "$PGDATA" \
    -c listen_addresses='' \
    -c unix_socket_directories="$SOCKET_DIR" \
    -c hba_file="$HBA" \
    "$@"
