#!/usr/bin/env bash
# Deploy benchmark (issue 13): cultivate against the naive baselines, in one
# run, on fresh `engine` targets (network namespaces with their own dockerd
# 20.10 and sshd, reached over real SSH; scripts/testenv.sh).
#
#   scripts/bench-deploy.sh [options]
#
#   --write          write the result into docs/performance.md (the default),
#                    between the bench-deploy markers, so a rerun replaces it
#   --no-write       only print the result
#   --out FILE       write into FILE instead of docs/performance.md
#   --repeat N       runs of the quick cases (nothing changed, status,
#                    releases); the median is reported (default 3)
#   --rate MBIT      link rate of the limited-link pass (default 100)
#   --no-limited     skip the limited-link pass
#   --no-build       use target/release/cultivate as it is (no cargo build)
#   --strict         exit 3 when a goal of the issue is missed
#   BENCH_BIN=PATH   measure this cultivate binary (with --no-build)
#
# Cases, on target A: first deploy; nothing changed; one backend line changed;
# one frontend static file changed; `cultivate rollback`; `cultivate status`;
# `cultivate releases`. For each: wall time, bytes on the target's link as the
# kernel counts them (the host side of the target's veth, read before and after
# the case; both directions), cultivate's own count beside it (`bytes_sent` of
# `--json deploy`), and the per-stage split of the JSON report (`timings`).
# Baselines in the same run: `docker save IMAGES | ssh TARGET docker load` of
# the same images to a fresh target B, and a hand `docker build` of the backend
# with the same Dockerfile, context and build arguments after the same kind of
# one-line change. Limited-link pass: tc (tbf) on a fresh target C's link in
# both directions, cultivate's first deploy there, and save|load to a fresh
# target D at the same rate, beside the physical limit (bytes ÷ rate).
#
# Needs root (network namespaces, tc), Docker, python3 and a release build.
# Targets are named bench-*, the compose project is `bench`, the published
# ports 21380/21343 (inside the targets' namespaces); every target is taken
# down on exit. Takes 10–20 minutes on a loaded 2-core machine.
# shellcheck disable=SC2317 # cleanup, cv and save_load run through trap and measure
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
COMMAND_LINE="scripts/bench-deploy.sh${*:+ $*}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench-deploy: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 && !/shellcheck/ { sub(/^# ?/, ""); print }' "$0"; }

WRITE=1
OUT=docs/performance.md
REPEAT=3
RATE_MBIT=100
LIMITED=1
BUILD=1
STRICT=0
while (($#)); do
    case $1 in
        --write) WRITE=1 ;;
        --no-write) WRITE=0 ;;
        --out)
            (($# >= 2)) || die "--out needs a file name"
            OUT=$2
            shift
            ;;
        --repeat)
            (($# >= 2)) || die "--repeat needs a number"
            REPEAT=$2
            shift
            ;;
        --rate)
            (($# >= 2)) || die "--rate needs a number of Mbit/s"
            RATE_MBIT=$2
            shift
            ;;
        --no-limited) LIMITED=0 ;;
        --no-build) BUILD=0 ;;
        --strict) STRICT=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1' (see scripts/bench-deploy.sh --help)" ;;
    esac
    shift
done
[[ $REPEAT =~ ^[1-9][0-9]?$ ]] || die "--repeat must be a number from 1 to 99, not '$REPEAT'"
[[ $RATE_MBIT =~ ^[1-9][0-9]{0,4}$ ]] || die "--rate must be a whole number of Mbit/s (e.g. 100), not '$RATE_MBIT'"

# ---------------------------------------------------------------- prerequisites

[[ $(id -u) == 0 ]] || die "must run as root: the targets are network namespaces (scripts/testenv.sh) and the link limit uses tc"
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is missing: $2"; }
need python3 "install python3 (it parses cultivate's JSON reports and writes the table)"
need docker "install Docker (this machine's engine builds the images)"
need ssh "install openssh-client"
need ip "install iproute2"
need tc "install iproute2 (tc limits the target's link)"
need git "install git"
((BUILD == 0)) || need cargo "install Rust (https://rustup.rs), or pass --no-build with a target/release/cultivate"
docker info >/dev/null 2>&1 || die "this machine's Docker engine does not answer (is dockerd running? are you in the docker group?)"

TESTENV_ROOT=${TESTENV_ROOT:-/run/cultivate-testenv}
BASE_IMAGE=cultivate/debian:bookworm
PROJECT=bench
SUFFIX=$$
TARGET_A=bench-a$SUFFIX # the cases
TARGET_B=bench-b$SUFFIX # save|load baseline, full speed
TARGET_C=bench-c$SUFFIX # cultivate's first deploy, limited link
TARGET_D=bench-d$SUFFIX # save|load baseline, limited link
HAND_PREFIX=bench-handbuild
BIN=${BENCH_BIN:-$ROOT/target/release/cultivate}
START_EPOCH=$(date +%s)

WORK=$(mktemp -d /tmp/bench-deploy.XXXXXX)
RECORDS=$WORK/records.jsonl
META=$WORK/meta.tsv
mkdir -p "$WORK/out"
: >"$RECORDS"
: >"$META"
UP_TARGETS=()
cleanup() {
    local rc=$? name
    trap - EXIT INT TERM
    for name in "${UP_TARGETS[@]}"; do
        scripts/testenv.sh down "$name" >/dev/null 2>&1 || printf 'bench-deploy: could not take %s down: run scripts/testenv.sh down %s\n' "$name" "$name" >&2
    done
    # the hand builds, and the changed releases' tags (their images are new in
    # every run; v1 stays: it is the build cache of the next run's first deploy)
    docker image ls --format '{{.Repository}}:{{.Tag}}' |
        grep -E "^($HAND_PREFIX-.*|$PROJECT-(database|backend|frontend):v[234])\$" |
        xargs -r docker rmi >/dev/null 2>&1 || true
    if ((rc != 0)) && [[ -n ${KEEP_WORK:-} ]]; then
        printf 'bench-deploy: kept %s (KEEP_WORK)\n' "$WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }

if ((BUILD)); then
    say "cargo build --release"
    cargo build --release --quiet || die "cargo build --release failed"
fi
[[ -x $BIN ]] || die "$BIN does not exist: run cargo build --release (or drop --no-build)"
scripts/testenv.sh deps >/dev/null 2>&1 || die "the targets' packages are missing and could not be installed: run scripts/testenv.sh deps"
say "base image $BASE_IMAGE (docker/build-base-images.sh builds it when missing)"
docker/build-base-images.sh 2>/dev/null || die "the base image $BASE_IMAGE is missing and could not be built: run docker/build-base-images.sh"

# ---------------------------------------------------------------- targets

declare -A T_ADDR T_ID T_KH T_URI T_DEV T_NS

env_of() { # env_of FILE VAR: a variable of a target's env file
    (
        # shellcheck disable=SC1090
        . "$1"
        printf '%s' "${!2}"
    )
}

target_up() {
    local name=$1 dir host dev
    say "bringing up target $name (engine)"
    UP_TARGETS+=("$name")
    if ! scripts/testenv.sh up "$name" engine >"$WORK/$name.up.log" 2>&1; then
        tail -n 20 "$WORK/$name.up.log" >&2
        die "could not bring up the target $name (output above)"
    fi
    dir=$TESTENV_ROOT/$name
    T_ADDR[$name]=$(env_of "$dir/env" TESTENV_ADDRESS)
    T_ID[$name]=$(env_of "$dir/env" TESTENV_IDENTITY)
    T_KH[$name]=$(env_of "$dir/env" TESTENV_KNOWN_HOSTS)
    T_URI[$name]=$(env_of "$dir/env" TESTENV_SSH_URI)
    T_NS[$name]=$(env_of "$dir/env" TESTENV_NETNS)
    host=$(env_of "$dir/env" TESTENV_HOST_ADDRESS)
    # the host side of the target's veth: the device holding this machine's address on the target's network
    dev=$(ip -o -4 addr show | awk -v a="$host" '{ split($4, p, "/"); if (p[1] == a) print $2 }' | head -n 1)
    [[ -n $dev && -r /sys/class/net/$dev/statistics/tx_bytes ]] ||
        die "cannot find the link of target $name (no device with address $host)"
    T_DEV[$name]=$dev
}

target_down() {
    local name=$1 keep=() n
    scripts/testenv.sh down "$name" >/dev/null 2>&1 || die "could not take the target $name down"
    for n in "${UP_TARGETS[@]}"; do [[ $n == "$name" ]] || keep+=("$n"); done
    UP_TARGETS=("${keep[@]}")
}

tssh() { # tssh TARGET COMMAND...: a command on the target over SSH
    local name=$1
    shift
    ssh -F /dev/null -i "${T_ID[$name]}" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes \
        -o UserKnownHostsFile="${T_KH[$name]}" "root@${T_ADDR[$name]}" "$@"
}

limit_link() { # both directions of the target's link to RATE_MBIT
    local name=$1 rate=${RATE_MBIT}mbit
    tc qdisc replace dev "${T_DEV[$name]}" root tbf rate "$rate" burst 256kb latency 50ms ||
        die "tc could not limit ${T_DEV[$name]} (is the sch_tbf kernel module available?); rerun with --no-limited"
    ip netns exec "${T_NS[$name]}" tc qdisc replace dev eth0 root tbf rate "$rate" burst 256kb latency 50ms ||
        die "tc could not limit eth0 in ${T_NS[$name]}; rerun with --no-limited"
}

wire() { # wire TARGET -> "to_target from_target" bytes so far (host side: tx = to the target)
    local s=/sys/class/net/${T_DEV[$1]}/statistics
    printf '%s %s\n' "$(cat "$s/tx_bytes")" "$(cat "$s/rx_bytes")"
}

# measure TARGET CASE RUN KIND COMMAND...: runs COMMAND (stdout kept for its
# JSON report), records its wall time and the bytes on TARGET's link ("-": none)
measure() {
    local target=$1 case=$2 run=$3 kind=$4 out err t0 t1 tx0=0 rx0=0 tx1=0 rx1=0
    shift 4
    out=$WORK/out/$case.$run.json
    err=$WORK/out/$case.$run.err
    RUN_LOG_DIR=$WORK/logs/$case.$run # cultivate's own log of this run (cv)
    say "$case (run $run)"
    [[ $target == - ]] || read -r tx0 rx0 < <(wire "$target")
    t0=$(now)
    if ! "$@" >"$out" 2>"$err"; then
        tail -n 30 "$err" >&2
        die "$case failed: $* (output above)"
    fi
    t1=$(now)
    [[ $target == - ]] || read -r tx1 rx1 < <(wire "$target")
    printf '{"case":"%s","run":%d,"kind":"%s","target":"%s","t0":%s,"t1":%s,"to_target":%d,"from_target":%d,"out":"%s","log_dir":"%s"}\n' \
        "$case" "$run" "$kind" "$target" "$t0" "$t1" "$((tx1 - tx0))" "$((rx1 - rx0))" "$out" "$RUN_LOG_DIR" >>"$RECORDS"
}

# ---------------------------------------------------------------- what runs

write_config() { # write_config FILE TARGET APP_DIR DEPLOY_PATH
    cat >"$1" <<TOML
target = "${T_URI[$2]}"
project = "$PROJECT"
app_dir = "$3"
stack_dir = "$ROOT"
deploy_path = "$4"
secrets_file = "$WORK/secrets.env"
[ssh]
identity = "${T_ID[$2]}"
known_hosts = "${T_KH[$2]}"
[ports]
http = 21380
https = 21343
[build]
base_image = "$BASE_IMAGE"
[app]
health_path = "/health"
start_command = "node server.js"
build_command = "node build.js"
output_dir = "dist"
node_version = 18
spa_fallback = true
TOML
}

cv() { # cv CONFIG ARGS...: cultivate, quiet, with its JSON report on stdout
    local config=$1
    shift
    CULTIVATE_LOG_DIR="${RUN_LOG_DIR:-$WORK/logs}" "$BIN" -q --json -c "$config" "$@"
}

save_load() { # save_load TARGET IMAGE...: the baseline
    local name=$1
    shift
    docker save "$@" | tssh "$name" docker load >/dev/null
}

# The build context cultivate makes (host/src/pipeline/build.rs, context_tar):
# docker/ and the application as app/, regular files only, sorted, owner 0,
# mtime 0, mode 0755 or 0644, without .git, dist, target and .env*.
make_context() { # make_context APP_DIR OUT.tar
    python3 - "$ROOT/docker" "$1" "$2" <<'PY'
import io, os, sys, tarfile
docker_dir, app_dir, out = sys.argv[1:4]
def skip(rel):
    return any(c in (".git", "dist", ".env", "target") or c.startswith(".env.") for c in rel.split(os.sep))
def files(src):
    found = []
    for dirpath, dirnames, filenames in os.walk(src):
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, src)
            if not skip(rel) and os.path.isfile(path) and not os.path.islink(path):
                found.append(rel)
    return sorted(found)
with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
    for prefix, src in (("docker", docker_dir), ("app", app_dir)):
        for rel in files(src):
            path = os.path.join(src, rel)
            data = open(path, "rb").read()
            info = tarfile.TarInfo(prefix + "/" + rel)
            info.size, info.mtime, info.uid, info.gid = len(data), 0, 0, 0
            info.mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
PY
}

# The build arguments cultivate passes (build.rs, build_args) for the [app] of write_config.
BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg APP_DIR=app --build-arg HEALTH_PATH=/health
    --build-arg "FRONTEND_BUILD=node build.js" --build-arg FRONTEND_OUTPUT=dist
    --build-arg "START_COMMAND=node server.js" --build-arg NODE_MAJOR=18 --build-arg SPA_FALLBACK=on)

hand_build() { # hand_build CONTEXT.tar SERVICE TAG: docker build by hand, legacy builder like the engine API's
    DOCKER_BUILDKIT=${BENCH_HAND_BUILDKIT:-0} docker build -q --rm --force-rm -f "docker/Dockerfile.$2" \
        "${BUILD_ARGS[@]}" -t "$3" - <"$1"
}

hand_build_all() { # hand_build_all CONTEXT.tar TAG
    local s
    for s in database backend frontend; do hand_build "$1" "$s" "$HAND_PREFIX-$s:$2"; done
}

change_line() { # change_line FILE FROM TO: a one-line change, checked
    grep -qF -- "$2" "$1" || die "$1 no longer contains '$2': update the change this benchmark makes"
    FROM=$2 TO=$3 python3 - "$1" <<'PY'
import os, sys
path = sys.argv[1]
text = open(path).read()
open(path, "w").write(text.replace(os.environ["FROM"], os.environ["TO"], 1))
PY
}

# The changes are new in every run: a change built by an earlier run would come
# from the build cache and measure no build at all.
RUN_ID="run $START_EPOCH.$SUFFIX"
RUN_COLOUR=$(printf '#%06x' $(((START_EPOCH * 7919 + SUFFIX) % 0xffffff)))
[[ $RUN_COLOUR != "#3a7d44" ]] || RUN_COLOUR="#2f6f3a"
BACKEND_FILE=backend/server.js
BACKEND_FROM="'Hello from cultivate'"
FRONTEND_FILE=frontend/src/style.css
FRONTEND_FROM="--accent: #3a7d44;"

cp -r examples/app "$WORK/app"         # the application deployed and changed on target A
cp -r examples/app "$WORK/app-v1"      # stays as it is: the first deploy of the limited pass
cp -r examples/app "$WORK/app-hand"    # the hand build's own one-line change
rm -rf "$WORK"/app*/frontend/dist "$WORK"/app*/backend/node_modules/.cache
(
    umask 077
    echo "APP_SECRET=bench-$(head -c 9 /dev/urandom | base64 | tr -d '/+=')" >"$WORK/secrets.env"
)

# ---------------------------------------------------------------- the machine

meta command "$COMMAND_LINE"
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta commit "$(git rev-parse --short HEAD)$(git status --porcelain --untracked-files=no -- . ':!docs/performance.md' | grep -q . && echo ' (with uncommitted changes)')"
meta branch "$(git rev-parse --abbrev-ref HEAD)"
meta nproc "$(nproc)"
meta cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
meta memory "$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
meta kernel "$(uname -r)"
meta docker_engine "$(docker version --format '{{.Server.Version}}' 2>/dev/null)"
meta docker_client "$(docker version --format '{{.Client.Version}}' 2>/dev/null)"
meta rate_mbit "$RATE_MBIT"
meta repeat "$REPEAT"
meta hand_buildkit "${BENCH_HAND_BUILDKIT:-0}"

# Warm-up, measured but not a case: the three images built by hand from the
# unchanged tree (a cold build cache would otherwise land on the first deploy),
# then again, all cached: the hand baseline of a build where nothing changed.
make_context "$WORK/app-v1" "$WORK/ctx-v1.tar"
say "hand build of the unchanged tree (warms the build cache)"
hand_build_all "$WORK/ctx-v1.tar" warm >/dev/null 2>"$WORK/out/warm.err" || {
    tail -n 30 "$WORK/out/warm.err" >&2
    die "docker build by hand failed (output above)"
}
measure - hand-unchanged 1 hand hand_build_all "$WORK/ctx-v1.tar" v1

meta load_before "$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- pass 1: the cases

target_up "$TARGET_A"
write_config "$WORK/a.toml" "$TARGET_A" "$WORK/app" "$WORK/deploy-a"
meta link_mtu "$(cat "/sys/class/net/${T_DEV[$TARGET_A]}/mtu")"
meta target_engine "$(tssh "$TARGET_A" docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')"
meta target_compose "$(tssh "$TARGET_A" 'docker-compose version --short 2>/dev/null || docker compose version --short' 2>/dev/null || echo '?')"

measure "$TARGET_A" first 1 deploy cv "$WORK/a.toml" deploy --release-version v1
for ((i = 1; i <= REPEAT; i++)); do
    measure "$TARGET_A" unchanged "$i" deploy cv "$WORK/a.toml" deploy --release-version v2
done
change_line "$WORK/app-hand/$BACKEND_FILE" "$BACKEND_FROM" "'Hello from the hand build $RUN_ID'"
make_context "$WORK/app-hand" "$WORK/ctx-hand.tar"
measure - hand-backend 1 hand hand_build "$WORK/ctx-hand.tar" backend "$HAND_PREFIX-backend:changed"
change_line "$WORK/app/$BACKEND_FILE" "$BACKEND_FROM" "'Hello from the benchmark $RUN_ID'"
measure "$TARGET_A" backend 1 deploy cv "$WORK/a.toml" deploy --release-version v3
change_line "$WORK/app/$FRONTEND_FILE" "$FRONTEND_FROM" "--accent: $RUN_COLOUR;"
measure "$TARGET_A" frontend 1 deploy cv "$WORK/a.toml" deploy --release-version v4
measure "$TARGET_A" rollback 1 other cv "$WORK/a.toml" rollback
for ((i = 1; i <= REPEAT; i++)); do
    measure "$TARGET_A" status "$i" other cv "$WORK/a.toml" status
done
for ((i = 1; i <= REPEAT; i++)); do
    measure "$TARGET_A" releases "$i" other cv "$WORK/a.toml" releases
done
# the hand build of the unchanged tree and cultivate's build of it: the same image?
meta same_backend_image "$([[ $(docker image inspect -f '{{.Id}}' "$PROJECT-backend:v1") == "$(docker image inspect -f '{{.Id}}' "$HAND_PREFIX-backend:v1")" ]] && echo yes || echo no)"
target_down "$TARGET_A"

# ---------------------------------------------------------------- baselines

archive_size() { docker save "$@" | wc -c; }
V1_IMAGES=("$PROJECT-database:v1" "$PROJECT-backend:v1" "$PROJECT-frontend:v1")
say "docker save sizes"
meta archive_v1 "$(archive_size "${V1_IMAGES[@]}")"
meta archive_backend "$(archive_size "$PROJECT-backend:v3")"
meta archive_frontend "$(archive_size "$PROJECT-frontend:v4")"

target_up "$TARGET_B"
measure "$TARGET_B" saveload-all 1 baseline save_load "$TARGET_B" "${V1_IMAGES[@]}"
measure "$TARGET_B" saveload-backend 1 baseline save_load "$TARGET_B" "$PROJECT-backend:v3"
measure "$TARGET_B" saveload-frontend 1 baseline save_load "$TARGET_B" "$PROJECT-frontend:v4"
target_down "$TARGET_B"

# ---------------------------------------------------------------- pass 2: limited link

if ((LIMITED)); then
    target_up "$TARGET_C"
    limit_link "$TARGET_C"
    write_config "$WORK/c.toml" "$TARGET_C" "$WORK/app-v1" "$WORK/deploy-c"
    measure "$TARGET_C" limited-first 1 deploy cv "$WORK/c.toml" deploy --release-version v1
    target_down "$TARGET_C"
    target_up "$TARGET_D"
    limit_link "$TARGET_D"
    measure "$TARGET_D" limited-saveload 1 baseline save_load "$TARGET_D" "${V1_IMAGES[@]}"
    target_down "$TARGET_D"
fi

meta load_after "$(cut -d' ' -f1-3 /proc/loadavg)"
meta duration "$(($(date +%s) - START_EPOCH))"

# ---------------------------------------------------------------- the table

rc=0
python3 - "$RECORDS" "$META" "$WRITE" "$OUT" "$STRICT" <<'PY' || rc=$?
import json, os, re, sys

records_path, meta_path, write, out_path, strict = sys.argv[1:6]
meta = {}
for line in open(meta_path):
    k, _, v = line.rstrip("\n").partition("\t")
    meta[k] = v
runs = {}
for line in open(records_path):
    r = json.loads(line)
    r["wall"] = r["t1"] - r["t0"]
    r["wire"] = r["to_target"] + r["from_target"]
    try:
        r["report"] = json.load(open(r["out"]))
    except (OSError, ValueError):
        r["report"] = {}
    if not isinstance(r["report"], dict):
        r["report"] = {}
    # commands run on the target, as cultivate's own debug log lists them ("cultivate::cmd: $ ..."),
    # without the ones it answered from memory (a probe's answer, reused in the same run: no round trip)
    r["commands"] = None
    if r["kind"] in ("deploy", "other") and r.get("log_dir") and os.path.isdir(r["log_dir"]):
        n = 0
        for name in os.listdir(r["log_dir"]):
            with open(os.path.join(r["log_dir"], name), errors="replace") as fh:
                entry = None  # a command's text: its "$" line and the "| " lines a multi-line script continues on
                for line in list(fh) + [""]:
                    if entry is not None and re.match(r"^\S+ +\w+ \| ", line):
                        entry += line
                        continue
                    if entry is not None and "(answered from this run's earlier run" not in entry:
                        n += 1
                    entry = line if "cultivate::cmd: $ " in line else None
        r["commands"] = n or None
    runs.setdefault(r["case"], []).append(r)

def median_run(case):
    rs = sorted(runs.get(case, []), key=lambda r: r["wall"])
    return rs[(len(rs) - 1) // 2] if rs else None

def stages(r):
    """The report's per-stage seconds, summed by stage name (list of pairs or a map)."""
    t = r["report"].get("timings") or []
    items = t.items() if isinstance(t, dict) else [
        (x[0], x[1]) if isinstance(x, (list, tuple)) else (x.get("stage"), x.get("seconds")) for x in t]
    acc = {}
    for k, v in items:
        acc[str(k)] = acc.get(str(k), 0.0) + float(v)
    return acc

def stage(r, *names):
    s = stages(r)
    found = [v for k, v in s.items() if k in names]
    return sum(found) if found else None

def hb(n):
    if n is None:
        return "–"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"

def sec(x):
    return "–" if x is None else f"{x:.2f}"

def ratio(a, b):
    return "–" if a is None or not b else f"{a / b:.3f}"

def wall_cell(case):
    rs = runs.get(case, [])
    m = median_run(case)
    if m is None:
        return "–"
    if len(rs) == 1:
        return f"{m['wall']:.2f}"
    walls = [r["wall"] for r in rs]
    return f"{m['wall']:.2f} (median of {len(rs)}: {min(walls):.2f}–{max(walls):.2f})"

CASES = [
    ("first", "first deploy"),
    ("unchanged", "nothing changed"),
    ("backend", "one backend line changed"),
    ("frontend", "one frontend static file changed"),
    ("rollback", "`cultivate rollback`"),
    ("status", "`cultivate status`"),
    ("releases", "`cultivate releases`"),
]
BUILD, TRANSFER, UPHEALTH = ("build",), ("transfer-images",), ("up", "health")
out = []
p = out.append
rate = float(meta.get("rate_mbit", "100"))
p(f"Run on {meta['date']}, commit {meta['commit']} (branch {meta['branch']}), with "
  f"`{meta['command']}`; the whole run took {int(meta['duration']) // 60} min {int(meta['duration']) % 60} s.")
p("")
p(f"Machine: {meta['nproc']} cores ({meta['cpu']}), {meta['memory']}, Linux {meta['kernel']}; load average "
  f"(1, 5, 15 min) {meta['load_before']} before the measurements and {meta['load_after']} after. This machine's "
  f"Docker engine {meta['docker_engine']} (client {meta['docker_client']}) builds; the targets run Docker "
  f"{meta['target_engine']} with Compose {meta['target_compose']}; link MTU {meta['link_mtu']}. Release build.")
p("")
p("### Cases (target A, full link speed)")
p("")
p("Wall time in seconds. On the wire: bytes on the target's link counted by the kernel (to the target / from it); "
  "cultivate's count: `bytes_sent` of its JSON report (image data only). Commands on the target: the commands "
  "cultivate's own debug log (CULTIVATE_LOG_DIR) lists as run there (not those it answered from memory), each at least one round trip. Stages from the report's `timings`; "
  "rest = wall − build − transfer − up − health (connect, probe, lock, configuration, commit, logs, start-up).")
p("")
p("| case | wall s | on the wire (to / from) | cultivate's count | commands on the target | build s | transfer s | up + health s | rest s |")
p("|---|---|---|---|---|---|---|---|---|")
for case, label in CASES:
    r = median_run(case)
    if r is None:
        continue
    b, t, u = stage(r, *BUILD), stage(r, *TRANSFER), stage(r, *UPHEALTH)
    known = [x for x in (b, t, u) if x is not None]
    rest = r["wall"] - sum(known) if stages(r) else None
    count = r["report"].get("bytes_sent") if r["kind"] == "deploy" else None
    p(f"| {label} | {wall_cell(case)} | {hb(r['wire'])} ({hb(r['to_target'])} / {hb(r['from_target'])}) | "
      f"{hb(count)} | {r['commands'] if r['commands'] is not None else '–'} | {sec(b)} | {sec(t)} | {sec(u)} | {sec(rest)} |")
p("")

sl_all, sl_back, sl_front = (median_run(c) for c in ("saveload-all", "saveload-backend", "saveload-frontend"))
hand_back, hand_unch = median_run("hand-backend"), median_run("hand-unchanged")
p("### Against the baselines (same run)")
p("")
p("Baseline: `docker save IMAGES | ssh TARGET docker load` of the same images to a fresh target B, what a deploy "
  "without layer skipping sends every time; hand build: `docker build` of the same Dockerfile, context and build "
  "arguments (the legacy builder, as the engine API uses) after the same kind of one-line change. "
  "Ratios are cultivate / baseline.")
p("")
p("| case | baseline | cultivate wall s | baseline wall s | wall ratio | cultivate on the wire | baseline on the wire | wire ratio |")
p("|---|---|---|---|---|---|---|---|")
def cmp_row(label, case, base, base_label):
    r = median_run(case)
    if r is None or base is None:
        return
    p(f"| {label} | {base_label} | {r['wall']:.2f} | {base['wall']:.2f} | {ratio(r['wall'], base['wall'])} | "
      f"{hb(r['wire'])} | {hb(base['wire'])} | {ratio(r['wire'], base['wire'])} |")
cmp_row("first deploy", "first", sl_all, f"save\\|load, 3 images ({hb(int(meta['archive_v1']))} archive)")
cmp_row("nothing changed", "unchanged", sl_all, "save\\|load, 3 images")
cmp_row("one backend line", "backend", sl_back, f"save\\|load, backend ({hb(int(meta['archive_backend']))})")
cmp_row("one frontend file", "frontend", sl_front, f"save\\|load, frontend ({hb(int(meta['archive_frontend']))})")
p("")
p("| build | cultivate's build stage s | hand `docker build` s | ratio |")
p("|---|---|---|---|")
back_build = stage(median_run("backend"), *BUILD) if median_run("backend") else None
unch_build = stage(median_run("unchanged"), *BUILD) if median_run("unchanged") else None
if hand_back:
    p(f"| one backend line (cultivate: all three images; by hand: the backend) | {sec(back_build)} | "
      f"{hand_back['wall']:.2f} | {ratio(back_build, hand_back['wall'])} |")
if hand_unch:
    p(f"| nothing changed (both: all three images, from the cache) | {sec(unch_build)} | "
      f"{hand_unch['wall']:.2f} | {ratio(unch_build, hand_unch['wall'])} |")
p("")
p(f"The hand build of the unchanged tree gives the same backend image as cultivate's: {meta.get('same_backend_image', '?')}.")
p("")

lim_first, lim_sl = median_run("limited-first"), median_run("limited-saveload")
if lim_first or lim_sl:
    bps = rate * 1e6 / 8
    p(f"### Limited link: {rate:g} Mbit/s (tc tbf on both directions of a fresh target's link)")
    p("")
    p("Physical limit: the bytes the run put on the link towards the target ÷ the link rate; for save\\|load also "
      "the archive ÷ the rate. Each run on its own fresh target (C, D), so both first deploys really are first.")
    p("")
    p("| run | wall s | on the wire (to / from) | physical limit s (its bytes ÷ rate) | wall ÷ limit |")
    p("|---|---|---|---|---|")
    for label, r in (("cultivate first deploy", lim_first), ("`docker save \\| ssh docker load`, 3 images", lim_sl)):
        if r is None:
            continue
        limit = r["to_target"] / bps
        p(f"| {label} | {r['wall']:.2f} | {hb(r['wire'])} ({hb(r['to_target'])} / {hb(r['from_target'])}) | "
          f"{limit:.2f} | {ratio(r['wall'], limit)} |")
    p(f"| archive of the 3 images ({hb(int(meta['archive_v1']))}) at {rate:g} Mbit/s | | | "
      f"{int(meta['archive_v1']) / bps:.2f} | |")
    if lim_first and lim_sl:
        p("")
        p(f"cultivate / save\\|load at {rate:g} Mbit/s: wall {ratio(lim_first['wall'], lim_sl['wall'])}, "
          f"on the wire {ratio(lim_first['wire'], lim_sl['wire'])}.")
    lt = stages(lim_first) if lim_first else {}
    if lt:
        p("")
        p("Stages of the limited first deploy: " + ", ".join(f"{k} {v:.2f} s" for k, v in lt.items()) + ".")
        if lim_sl and lt.get("transfer-images"):
            p("")
            p(f"The image transfer stage alone ÷ save\\|load at {rate:g} Mbit/s: "
              f"{ratio(lt['transfer-images'], lim_sl['wall'])} (save\\|load starts nothing; the deploy then also "
              f"starts the three services and waits for their health checks).")
    p("")

goals = []
def goal(text, value, shown, limit_text, ok):
    goals.append(ok)
    verdict = "–" if ok is None else ("pass" if ok else "**fail**")
    p(f"| {text} | {shown if value is not None else 'not measured'} | {limit_text} | {verdict} |")
p("### Goals of issue 13")
p("")
p("| goal | measured | limit | result |")
p("|---|---|---|---|")
u = median_run("unchanged")
goal("nothing changed: wall", u and u["wall"], u and f"{u['wall']:.2f} s", "< 1.0 s", u and u["wall"] < 1.0)
uc = u and u["commands"]
goal("nothing changed: commands on the target (round trips)", uc, uc and f"{uc}", "< 8", (uc < 8) if uc else None)
b = median_run("backend")
bt = b and stage(b, *TRANSFER)
goal("one backend line: transfer stage", bt, bt is not None and f"{bt:.2f} s", "< 1.0 s", (bt < 1.0) if bt is not None else None)
br = back_build / hand_back["wall"] if back_build is not None and hand_back else None
goal("one backend line: build ÷ hand `docker build`", br, br is not None and f"{br:.3f}", "≤ 1.2", br <= 1.2 if br is not None else None)
f, s = median_run("first"), sl_all
fr = f["wire"] / s["wire"] if f and s and s["wire"] else None
goal("first deploy: bytes on the wire ÷ save\\|load", fr, fr is not None and f"{fr:.3f}", "≤ 0.40", fr <= 0.40 if fr is not None else None)
lr = lim_first["wall"] / lim_sl["wall"] if lim_first and lim_sl else None
goal(f"first deploy at {rate:g} Mbit/s: wall ÷ save\\|load", lr, lr is not None and f"{lr:.3f}", "≤ 0.5", lr <= 0.5 if lr is not None else None)
st = median_run("status")
goal("`status`: wall", st and st["wall"], st and f"{st['wall']:.2f} s", "< 0.6 s", st and st["wall"] < 0.6)
rl = median_run("releases")
goal("`releases`: wall", rl and rl["wall"], rl and f"{rl['wall']:.2f} s", "< 0.6 s", rl and rl["wall"] < 0.6)
p("")

p("### Stages of each run")
p("")
p("Outside: wall time in no stage of the report (the process's start, loading plugins, what runs between stages).")
p("")
p("| case | run | outcome | wall s | stages (s) | outside s |")
p("|---|---|---|---|---|---|")
for case, label in CASES + [("limited-first", f"first deploy at {rate:g} Mbit/s")]:
    for r in runs.get(case, []):
        s = stages(r)
        p(f"| {label} | {r['run']} | {r['report'].get('outcome', '–')} | {r['wall']:.2f} | "
          + (", ".join(f"{k} {v:.2f}" for k, v in s.items()) or "–")
          + f" | {sec(r['wall'] - sum(s.values())) if s else '–'} |")
u = median_run("unchanged")
if u and stages(u):
    s = stages(u)
    top = sorted(s.items(), key=lambda kv: -kv[1])[:3]
    p("")
    p(f"Where a deploy with nothing changed spends its {u['wall']:.2f} s (median run): "
      + ", ".join(f"{k} {v:.2f} s" for k, v in top)
      + f"; {u['wall'] - sum(s.values()):.2f} s outside any stage; "
      + f"{hb(u['wire'])} on the wire"
      + (f", {u['commands']} commands on the target." if u["commands"] else "."))
unexpected = [f"{c} run {r['run']}: {r['report'].get('outcome')}" for c, want in
              (("first", "deployed"), ("unchanged", "unchanged"), ("backend", "deployed"), ("frontend", "deployed"),
               ("limited-first", "deployed")) for r in runs.get(c, []) if r["report"].get("outcome") != want]
if unexpected:
    p("")
    p("Unexpected outcomes: " + "; ".join(unexpected) + ".")

block = "\n".join(out).rstrip() + "\n"
print("\n" + block)

if write == "1":
    begin = "<!-- bench-deploy: begin (written by scripts/bench-deploy.sh; a rerun replaces everything up to the end marker) -->"
    end = "<!-- bench-deploy: end -->"
    try:
        text = open(out_path).read()
    except FileNotFoundError:
        text = "# Performance\n"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + begin + "\n\n" + block + "\n" + end + tail
    else:
        text = text.rstrip("\n") + "\n\n## Deploy speed (issue 13)\n\n" + begin + "\n\n" + block + "\n" + end + "\n"
    with open(out_path, "w") as fh:
        fh.write(text)
    print(f"written to {out_path}", file=sys.stderr)

if strict == "1" and any(g is False for g in goals):
    sys.exit(3)
PY
exit "$rc"
