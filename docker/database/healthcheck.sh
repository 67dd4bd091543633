#!/bin/sh
# Database health check: pg_isready over the Unix socket (there is no TCP),
# as the postgres OS user so that peer authentication succeeds and the check
# leaves no "authentication failed" lines in the log.
set -eu
if [ "$(id -u)" = 0 ]; then
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
exec pg_isready -q -h /var/run/postgresql -U postgres -d "${DB_NAME:-cultivate}"
