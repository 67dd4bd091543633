#!/usr/bin/env bash
# The whole test suite, from a fresh machine of this kind:
#   lints (fmt, clippy), unit and property tests, plugin-loading tests with
#   libraries the tests build, the stack on real containers (P1-P15), the ssh
#   transport against a real OpenSSH sshd, and deploys to target hosts in
#   network namespaces with their own dockerd and sshd.
#
#   scripts/test.sh            everything
#   scripts/test.sh -p NAME    only one package (extra args go to cargo test)
#
# Installs what it needs (openssh-server, debootstrap, ...) and builds the
# base image first. Run as root. Under CI=1 a missing prerequisite fails.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }
start=$(date +%s)

if [ "$(id -u)" != 0 ]; then
    echo "error: the end-to-end tests create network namespaces and need root" >&2
    exit 1
fi

say "installing test prerequisites (skipped when present)"
scripts/testenv.sh deps

say "building the base image from Debian packages (skipped when present)"
docker/build-base-images.sh

say "cargo fmt --check"
cargo fmt --all --check

say "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "building the workspace (binary, plugins, test fixtures)"
cargo build --workspace --quiet

# Leftover targets from an interrupted run would hold addresses and mounts.
scripts/testenv.sh down-all >/dev/null 2>&1 || true
trap 'scripts/testenv.sh down-all >/dev/null 2>&1 || true' EXIT

if [ "$#" -gt 0 ]; then
    say "cargo test $*"
    cargo test "$@"
else
    say "cargo test: unit, property and plugin tests"
    cargo test --workspace --exclude cultivate-e2e -- --test-threads=2
    cargo test -p cultivate-e2e --lib -- --test-threads=2
    # Out-of-tree plugins: workspaces of their own, tested in their own directory.
    say "cargo test in contrib/podman (out of tree)"
    (cd contrib/podman && cargo test --quiet)

    # The end-to-end files run side by side; without this their first deploys
    # would each build the same Debian layers at the same time.
    say "warming the image build cache (docker/build-images.sh)"
    docker/build-images.sh ci-warm

    say "end-to-end test files, ${E2E_JOBS:-3} at a time (logs in target/e2e-logs)"
    scripts/e2e-parallel.sh
fi
say "all tests passed in $(( $(date +%s) - start ))s"
