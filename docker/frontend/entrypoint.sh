#!/bin/sh
# Frontend entrypoint: decide HTTP-only or HTTP+HTTPS from the mounted files,
# check the configuration, then run nginx in the foreground as the container's
# one process (SIGTERM: fast shutdown; SIGQUIT: graceful; SIGHUP: reload).
set -eu
# The resolver nginx asks for the backend's address: the first nameserver of
# the container's resolv.conf (127.0.0.11, Docker's embedded DNS, on a compose
# network; the network's gateway under Podman), Docker's when there is none.
ns=
while read -r key value _; do
    if [ "$key" = nameserver ] && [ -n "$value" ]; then ns=$value; break; fi
done </etc/resolv.conf || true
case $ns in *:*) ns="[$ns]" ;; esac
echo "resolver ${ns:-127.0.0.11} valid=10s ipv6=off;" >/etc/nginx/cultivate/resolver.conf
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
