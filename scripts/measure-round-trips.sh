#!/usr/bin/env bash
# Round trips of quick runs (issue 13, item 1; docs/performance.md):
#
#   scripts/measure-round-trips.sh BIN_DIR LABEL CONFIG [RUNS]
#
# With BIN_DIR/cultivate (and its plugins beside it) and CONFIG, a
# cultivate.toml whose release is deployed, current and healthy: RUNS times
# each of a deploy with nothing changed, `status` and `releases`. Prints the
# median wall time and the number of commands run on the target (from `-v`:
# every `exit N in`, `put` and streamed command) per run.
set -u
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
BIN=$1/cultivate; LABEL=$2; CFG=$3; RUNS=${4:-5}
export CULTIVATE_LOG_DIR=${CULTIVATE_LOG_DIR:-/tmp/cultivate-measure-logs}
med() { python3 -c "import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(f'{statistics.median(v):.2f} (min {min(v):.2f}, max {max(v):.2f})')" "$@"; }
run() { # what args... -> "seconds commands"
  local s e n
  s=$(date +%s.%N)
  "$BIN" -v -c "$CFG" "$@" > "$LOG" 2>&1 || { echo "FAILED: $*" >&2; tail -5 "$LOG" >&2; }
  e=$(date +%s.%N)
  n=$(sed 's/\x1b\[[0-9;]*m//g' "$LOG" | grep -cE '^\S+ DEBUG +exit -?[0-9]+ in |^\S+ DEBUG put |< \(stream\)')
  echo "$(python3 -c "print($e-$s)") $n"
}
for what in deploy status releases; do
  ts=(); ns=()
  for _ in $(seq 1 "$RUNS"); do
    case $what in
      deploy) read -r t n < <(run deploy --release-version "m$(date +%s%N)") ;;
      *) read -r t n < <(run "$what") ;;
    esac
    ts+=("$t"); ns+=("$n")
  done
  echo "$LABEL $what: wall $(med "${ts[@]}") s; commands ${ns[*]}"
done
