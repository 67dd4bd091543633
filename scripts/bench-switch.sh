#!/usr/bin/env bash
# Zero-downtime figures (docs/performance.md): failed requests and the longest
# gap between successes while a release changes — cultivate's switch against a
# plain `docker-compose up` of the same change, on an engine target over SSH,
# in one run; with BEFORE=DIR (a checkout of an earlier version with its
# release build in DIR/target/release) the earlier version's deploy too.
#
#   scripts/bench-switch.sh [OUT.md]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/bench-switch.md}"
cargo build --release --workspace --quiet
export CULTIVATE_BENCH_BIN="$PWD/target/release/cultivate" CULTIVATE_BENCH_OUT="$out"
if [ -n "${BEFORE:-}" ]; then export CULTIVATE_BENCH_BEFORE="$BEFORE"; fi
cargo test -p cultivate-e2e --test bench_switch -- --ignored --nocapture --test-threads 1
echo "table written to $out" >&2
