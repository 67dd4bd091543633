#!/usr/bin/env bash
# Deploy benchmark: cultivate against the naive baseline, in the same run, to
# the same target host (a network namespace with its own dockerd and sshd).
#
#   scripts/bench-deploy.sh
#
# Prints, for a first deploy, an unchanged redeploy and a redeploy with a
# changed backend: wall time and image bytes sent; and for the same images the
# baseline `docker save IMAGE | ssh TARGET docker load` (what a deploy without
# layer skipping sends every time), as ratios cultivate / baseline.
# Root only (it makes a network namespace). Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
NAME=bench$$
WORK=$(mktemp -d)
cleanup() { scripts/testenv.sh down "$NAME" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

say() { printf '==> %s\n' "$*" >&2; }
now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }

cargo build --release --quiet
docker/build-base-images.sh
scripts/testenv.sh deps >/dev/null
say "bringing up target host $NAME"
scripts/testenv.sh up "$NAME" engine >/dev/null
# shellcheck disable=SC1090
. "/run/cultivate-testenv/$NAME/env"
SSH=(ssh -i "$TESTENV_IDENTITY" -o UserKnownHostsFile="$TESTENV_KNOWN_HOSTS" -o StrictHostKeyChecking=yes -o BatchMode=yes "root@$TESTENV_ADDRESS")

cp -r examples/app "$WORK/app"
(umask 077; echo "APP_SECRET=bench-$(head -c 9 /dev/urandom | base64 | tr -d '/+=')" > "$WORK/secrets.env")
cat > "$WORK/cultivate.toml" <<TOML
target = "$TESTENV_SSH_URI"
project = "bench"
app_dir = "$WORK/app"
stack_dir = "$ROOT"
deploy_path = "$WORK/deploy"
secrets_file = "$WORK/secrets.env"
[ssh]
identity = "$TESTENV_IDENTITY"
known_hosts = "$TESTENV_KNOWN_HOSTS"
[ports]
http = 18080
https = 18443
[build]
base_image = "cultivate/debian:bookworm"
TOML

deploy() { # label version -> prints "seconds bytes"
    local start end json
    start=$(now)
    json=$(CULTIVATE_LOG_DIR="$WORK/logs" ./target/release/cultivate -q --json -c "$WORK/cultivate.toml" deploy --release-version "$2")
    end=$(now)
    printf '%s %s\n' "$(calc "$end - $start")" "$(printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_sent"])')"
}
baseline() { # image -> prints "seconds bytes": docker save | ssh docker load
    local start end bytes
    "${SSH[@]}" docker rmi -f "$1" >/dev/null 2>&1 || true
    start=$(now)
    bytes=$(docker save "$1" | tee >("${SSH[@]}" docker load >/dev/null) | wc -c)
    end=$(now)
    printf '%s %s\n' "$(calc "$end - $start")" "$bytes"
}
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.3f}' if b else 'n/a')" "$1" "$2"; }

say "first deploy"
read -r t1 b1 < <(deploy first v1)
say "unchanged redeploy"
read -r t2 b2 < <(deploy unchanged v2)
sed -i 's/Hello from cultivate/Hello from the benchmark/' "$WORK/app/backend/server.js"
say "redeploy with a changed backend"
read -r t3 b3 < <(deploy changed v3)

say "baseline: docker save | ssh docker load of the same images"
read -r tb_all bb_all < <(
    total_t=0; total_b=0
    for s in database backend frontend; do
        read -r t b < <(baseline "bench-$s:v1")
        total_t=$(calc "$total_t + $t"); total_b=$((total_b + b))
    done
    echo "$total_t $total_b")
read -r tb_back bb_back < <(baseline "bench-backend:v3")

printf '\n%-34s %10s %14s %12s %12s\n' "case" "seconds" "image bytes" "time ratio" "byte ratio"
printf '%-34s %10.2f %14d %12s %12s\n' "first deploy (whole stack)" "$t1" "$b1" "$(ratio "$t1" "$tb_all")" "$(ratio "$b1" "$bb_all")"
printf '%-34s %10.2f %14d %12s %12s\n' "unchanged redeploy" "$t2" "$b2" "$(ratio "$t2" "$tb_all")" "$(ratio "$b2" "$bb_all")"
printf '%-34s %10.2f %14d %12s %12s\n' "changed backend redeploy" "$t3" "$b3" "-" "$(ratio "$b3" "$bb_back")"
printf '%-34s %10.2f %14d\n' "baseline: save|load, 3 images" "$tb_all" "$bb_all"
printf '%-34s %10.2f %14d\n' "baseline: save|load, backend" "$tb_back" "$bb_back"
echo "(ratios are cultivate / baseline; the deploy times include build, upload, start and health checks, the baseline only the image copy)"
