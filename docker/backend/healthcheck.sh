#!/bin/bash
# Backend health check: GET $HEALTH_PATH (default /health; the example's runs
# SELECT 1 through the socket) on 127.0.0.1:$PORT; healthy on a 200.
#
# bash and its /dev/tcp, not a Node.js script: the engine runs this every few
# seconds, and each node start costs ~0.1 s of CPU and ~45 MB (this check:
# ~5 ms); docs/stack.md has why that failed deploys on a busy host.
set -u
# bash writes line by line: a server that answers and closes before the last
# line arrives must fail the check with a message, not kill it with SIGPIPE.
trap '' PIPE
port=${PORT:-3000}
path=${HEALTH_PATH:-/health}
if ! { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
    echo "health check: nothing listens on 127.0.0.1:$port" >&2
    exit 1
fi
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$path" "$port" >&3
if ! IFS= read -r -t 4 status <&3; then
    echo "health check: no answer to GET $path in 4 s" >&2
    exit 1
fi
status=${status%$'\r'}
# The rest of the answer, so that the server's last write is read, not reset.
while IFS= read -r -t 4 _ <&3; do :; done
case $status in
    "HTTP/1."[01]" 200" | "HTTP/1."[01]" 200 "*) exit 0 ;;
    *) echo "health check: GET $path answered \"$status\"" >&2; exit 1 ;;
esac
