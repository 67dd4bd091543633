#!/bin/sh
# Frontend entrypoint: decide HTTP-only or HTTP+HTTPS from the mounted files,
# check the configuration, then run nginx in the foreground as the container's
# one process (SIGTERM: fast shutdown; SIGQUIT: graceful; SIGHUP: reload).
set -eu
/usr/local/bin/cultivate-tls configure
if [ "${1:-}" = nginx ]; then
    nginx -t -q
fi
exec "$@"
