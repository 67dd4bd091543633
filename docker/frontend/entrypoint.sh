#!/bin/sh
# Frontend entrypoint: decide HTTP-only or HTTP+HTTPS from the mounted files,
# check the configuration, then run nginx in the foreground as the container's
# one process (SIGTERM: fast shutdown; SIGQUIT: graceful; SIGHUP: reload).
set -eu
/usr/local/bin/cultivate-tls configure
if [ "${1:-}" = nginx ] && ! nginx -t -q 2>/tmp/nginx-test.err; then
    cat /tmp/nginx-test.err >&2
    if [ -e /etc/nginx/conf.d/https.conf ]; then
        # The certificate/key passed our checks but nginx cannot load them:
        # keep serving HTTP rather than not starting at all.
        rm -f /etc/nginx/conf.d/https.conf
        echo "frontend: HTTPS disabled: nginx cannot load the certificate/key (see above); serving HTTP only" >&2
        nginx -t -q
    else
        exit 1
    fi
fi
rm -f /tmp/nginx-test.err
exec "$@"
