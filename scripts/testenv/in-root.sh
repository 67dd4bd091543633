#!/bin/sh
# in-root.sh DIR NETNS CMD...: run CMD in a target's root the way a real host
# would: in the target's network namespace, and in a mount namespace of its
# own whose root *is* DIR/root (pivot_root, not chroot). Under chroot, a
# dockerd's `docker exec` (and so every container health check) runs in the
# wrong filesystem; under pivot_root the target is a host of its own.
set -eu
dir=$1 ns=$2
shift 2
exec nsenter --net="/var/run/netns/$ns" unshare -m --propagation private \
    /bin/sh -c 'cd "$1" && mkdir -p .oldroot && pivot_root . .oldroot && cd / && umount -l /.oldroot && shift && exec "$@"' \
    sh "$dir/root" "$@"
