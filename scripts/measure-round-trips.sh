#!/bin/bash
# measure.sh BIN_DIR LABEL CONFIG RUNS: no-op deploy, status, releases over SSH.
# Prints median wall time and the number of commands (SSH sessions) per run.
set -u
BIN=$1/cultivate; LABEL=$2; CFG=$3; RUNS=${4:-5}
export CULTIVATE_LOG_DIR=/tmp/rtb/logs
med() { python3 -c "import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(f'{statistics.median(v):.2f} (min {min(v):.2f}, max {max(v):.2f})')" "$@"; }
run() { # what args... -> "seconds commands"
  local s e n
  s=$(date +%s.%N)
  "$BIN" -v -c "$CFG" "$@" > /tmp/rtb/m.log 2>&1 || { echo "FAILED: $*" >&2; tail -5 /tmp/rtb/m.log >&2; }
  e=$(date +%s.%N)
  n=$(sed 's/\x1b\[[0-9;]*m//g' /tmp/rtb/m.log | grep -cE '^\S+ DEBUG +exit -?[0-9]+ in |^\S+ DEBUG put |< \(stream\)')
  echo "$(python3 -c "print($e-$s)") $n"
}
for what in deploy status releases; do
  ts=(); ns=()
  for i in $(seq 1 "$RUNS"); do
    case $what in
      deploy) read -r t n < <(run deploy --release-version "m$(date +%s%N)") ;;
      *) read -r t n < <(run "$what") ;;
    esac
    ts+=("$t"); ns+=("$n")
  done
  echo "$LABEL $what: wall $(med "${ts[@]}") s; commands ${ns[*]}"
done
