#!/bin/sh
# cultivate-tls: decide whether nginx serves HTTPS.
#
#   cultivate-tls configure   write /etc/nginx/conf.d/https.conf when a usable
#                             certificate and key exist, remove it otherwise
#   cultivate-tls reload      configure, test the configuration, nginx -s reload
#                             (use after adding a certificate to a running
#                             container; a renewal of existing files needs only
#                             `nginx -s reload`)
#   cultivate-tls drain [S]   wait up to S seconds (default 30) until no nginx
#                             worker of an earlier configuration is left, i.e.
#                             every request they had in flight has finished
#
# The edge directory (/etc/nginx/cultivate/edge, mounted read-only from the
# host's EDGE_DIR) decides where /api/ goes and which site is served:
#   edge/backend   one line NAME:PORT, the backend container to use
#                  (default: BACKEND_HOST:BACKEND_PORT, the compose service)
#   edge/site      a directory (or link to one) with the site to serve
#                  (default: /usr/share/nginx/html, the site in this image)
# cultivate rewrites them during a release switch and then runs `reload`.
#
# Environment: TLS_CERT_FILE, TLS_KEY_FILE (defaults under /etc/nginx/certs),
# BACKEND_HOST, BACKEND_PORT (where /api/ is proxied).
# HTTP is always served; HTTPS only with a certificate and key that are PEM,
# currently valid and belong together. Anything else: HTTP only, and a message
# on stderr saying what is wrong and what to do.
set -eu

CERT="${TLS_CERT_FILE:-/etc/nginx/certs/fullchain.pem}"
KEY="${TLS_KEY_FILE:-/etc/nginx/certs/privkey.pem}"
BACKEND="http://${BACKEND_HOST:-backend}:${BACKEND_PORT:-3000}"
CONF_DIR=/etc/nginx/cultivate
EDGE_DIR="$CONF_DIR/edge"
HTTPS_CONF=/etc/nginx/conf.d/https.conf

say() { echo "frontend: $*" >&2; }

disable_https() {
    rm -f "$HTTPS_CONF"
    say "HTTPS disabled: $*; serving HTTP only"
}

pubkey_digest_cert() { openssl x509 -in "$1" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1; }
pubkey_digest_key() { openssl pkey -inform PEM -passin pass: -in "$1" -pubout -outform DER | sha256sum | cut -d' ' -f1; }

edge_settings() {
    ROOT=/usr/share/nginx/html
    if [ -r "$EDGE_DIR/backend" ]; then
        live="$(head -n 1 "$EDGE_DIR/backend" | tr -d ' \r')"
        case "$live" in
            *[!A-Za-z0-9._:-]* | "" | *:*:* | :*) say "ignoring $EDGE_DIR/backend: expected NAME:PORT, found '$live'" ;;
            *:*) BACKEND="http://$live" ;;
            *) BACKEND="http://$live:${BACKEND_PORT:-3000}" ;;
        esac
    fi
    if [ -d "$EDGE_DIR/site" ]; then
        ROOT="$EDGE_DIR/site"
    fi
}

configure() {
    edge_settings
    # Backend address and site root into the shared locations (no template engine needed).
    sed -e "s|__BACKEND__|$BACKEND|g" -e "s|__ROOT__|$ROOT|g" \
        "$CONF_DIR/locations.conf.template" > "$CONF_DIR/locations.conf.new"
    mv -f "$CONF_DIR/locations.conf.new" "$CONF_DIR/locations.conf"
    # IPv6 listeners only where the kernel has IPv6 (else nginx would not start).
    if [ -e /proc/net/if_inet6 ]; then
        echo "listen [::]:80 default_server;" > "$CONF_DIR/listen6-http.conf"
        LISTEN6="listen [::]:443 ssl default_server;"
    else
        : > "$CONF_DIR/listen6-http.conf"
        LISTEN6=""
    fi

    if [ ! -e "$CERT" ] && [ ! -e "$KEY" ]; then
        disable_https "no certificate at $CERT and no key at $KEY (mount CERT_DIR to enable HTTPS)"
        return 0
    fi
    if [ ! -r "$CERT" ]; then
        disable_https "key $KEY found but certificate $CERT is missing or unreadable"
        return 0
    fi
    if [ ! -r "$KEY" ]; then
        disable_https "certificate $CERT found but key $KEY is missing or unreadable"
        return 0
    fi
    # -inform PEM: OpenSSL 3 would otherwise also accept DER, which nginx cannot load.
    if ! openssl x509 -inform PEM -in "$CERT" -noout 2>/dev/null; then
        disable_https "$CERT is not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        return 0
    fi
    if ! openssl pkey -inform PEM -passin pass: -in "$KEY" -noout 2>/dev/null; then
        disable_https "$KEY is not a PEM private key (or it is encrypted)"
        return 0
    fi
    if ! openssl x509 -in "$CERT" -noout -checkend 0 >/dev/null 2>&1; then
        disable_https "$CERT has expired ($(openssl x509 -in "$CERT" -noout -enddate)); renew it"
        return 0
    fi
    not_before="$(openssl x509 -in "$CERT" -noout -startdate | cut -d= -f2)"
    if [ "$(date -d "$not_before" +%s 2>/dev/null || echo 0)" -gt "$(date +%s)" ]; then
        disable_https "$CERT is not valid yet (notBefore=$not_before)"
        return 0
    fi
    if [ "$(pubkey_digest_cert "$CERT")" != "$(pubkey_digest_key "$KEY")" ]; then
        disable_https "$CERT and $KEY do not match (the key is not the certificate's key)"
        return 0
    fi
    sed -e "s|__CERT__|$CERT|g" -e "s|__KEY__|$KEY|g" -e "s|__LISTEN6__|$LISTEN6|" \
        "$CONF_DIR/https.conf.template" > "$HTTPS_CONF"
    say "HTTPS enabled with $CERT ($(openssl x509 -in "$CERT" -noout -enddate))"
}

# PIDs of the nginx worker processes running now.
workers() {
    for f in /proc/[0-9]*/cmdline; do
        if tr '\0' ' ' < "$f" 2>/dev/null | grep -q '^nginx: worker process'; then
            p="${f#/proc/}"
            echo "${p%/cmdline}"
        fi
    done
}

# Waits until every worker that ran before the last reload has exited: an old
# worker finishes the requests it has in flight, then exits.
drain() {
    limit="${1:-30}"
    waited=0
    [ -r /tmp/cultivate-old-workers ] || return 0
    while :; do
        left=0
        for p in $(cat /tmp/cultivate-old-workers); do
            [ -d "/proc/$p" ] && left=$((left + 1))
        done
        [ "$left" -eq 0 ] && break
        if [ "$waited" -ge $((limit * 10)) ]; then
            say "drain: $left worker(s) of the earlier configuration still busy after ${limit}s"
            exit 3
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f /tmp/cultivate-old-workers
}

case "${1:-configure}" in
    configure) configure ;;
    reload)
        configure
        nginx -t -q
        workers > /tmp/cultivate-old-workers
        nginx -s reload
        say "nginx reloaded (backend $BACKEND, site $ROOT)"
        ;;
    drain) drain "${2:-30}" ;;
    *) echo "usage: cultivate-tls [configure|reload|drain [SECONDS]]" >&2; exit 2 ;;
esac
