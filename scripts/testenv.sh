#!/usr/bin/env bash
# Test target hosts for cultivate's end-to-end tests (see docs/testing.md).
#
# Every target is a network namespace with its own address (10.77.N.2, this
# machine is 10.77.N.1), its own OpenSSH sshd and, depending on the kind, its
# own Docker engine, separate from this machine's engine that builds images.
#
#   testenv.sh deps                      install what the targets need (apt)
#   testenv.sh check-deps                exit 1 (naming them) if packages are missing
#   testenv.sh up NAME engine            netns + sshd + dockerd (host's Docker 20.10, compose v1)
#   testenv.sh up NAME bare              netns + bookworm root + sshd, no Docker at all
#   testenv.sh up NAME trixie            netns + trixie root + sshd + Docker 26 / Compose v2
#   testenv.sh up NAME mac               a stand-in macOS target: the trixie root dressed as
#                                        macOS 14 (Darwin, sw_vers, /Users), Docker only behind
#                                        a recording `finch` stand-in (scripts/testenv/mac/)
#   testenv.sh sshd-loopback NAME [PORT] sshd on 127.0.0.1:PORT on this machine
#   testenv.sh down NAME                 tear one target down (safe twice, after a crash)
#   testenv.sh engine-stop NAME          stop a target's dockerd (fault tests)
#   testenv.sh engine-start NAME         start it again, wait until it answers
#   testenv.sh down-all                  tear every target down
#   testenv.sh status                    list targets
#
# Each target's state lives in $TESTENV_ROOT/NAME (default /run/cultivate-testenv):
# `env` (shell-sourceable) and `target.json` describe how to reach it; the
# target is up when target.json exists. Must run as root.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TESTENV_ROOT=${TESTENV_ROOT:-/run/cultivate-testenv}
CACHE_DIR=${TESTENV_CACHE:-/var/cache/cultivate}
MIRROR=${TESTENV_MIRROR:-http://deb.debian.org/debian}
NS_PREFIX=cultivate-
VETH_PREFIX=ctv
UP_TIMEOUT=${TESTENV_UP_TIMEOUT:-60}

# The daemons started here (dockerd, containerd, sshd) outlive this script and
# inherit its descriptors: a caller's open file (a lock a test run holds with
# flock, a pipe the caller waits on) would stay open, or locked, for as long as
# the target is up. Keep only stdin, stdout, stderr and bash's own 255.
for _fd in /proc/$$/fd/*; do
    _fd=${_fd##*/}
    if ((_fd > 2 && _fd != 255)); then eval "exec ${_fd}>&-" 2>/dev/null || true; fi
done
unset _fd

log() { printf 'testenv: %s\n' "$*" >&2; }
die() { printf 'testenv: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need_root() { [[ $(id -u) == 0 ]] || die "must run as root"; }

check_name() {
    [[ $1 =~ ^[a-z0-9][a-z0-9-]{0,30}$ ]] || die "bad target name '$1' (use [a-z0-9-], at most 31 characters)"
}

# ---------------------------------------------------------------- deps

# command -> package that provides it
DEP_CMDS=(
    /usr/sbin/sshd:openssh-server
    ssh:openssh-client
    ssh-keygen:openssh-client
    debootstrap:debootstrap
    ip:iproute2
    ss:iproute2
    iptables:iptables
    ps:procps
    curl:curl
    nsenter:util-linux
    findmnt:util-linux
    flock:util-linux
    # engine targets run this machine's dockerd 20.10, which loads zstd only piped through zstd
    zstd:zstd
)

missing_packages() {
    local entry cmd pkg
    local -A seen=()
    for entry in "${DEP_CMDS[@]}"; do
        cmd=${entry%%:*} pkg=${entry##*:}
        if ! command -v "$cmd" >/dev/null 2>&1 && [[ -z ${seen[$pkg]:-} ]]; then
            seen[$pkg]=1
            printf '%s\n' "$pkg"
        fi
    done
}

cmd_deps() {
    need_root
    local pkgs
    mapfile -t pkgs < <(missing_packages)
    if ((${#pkgs[@]} == 0)); then
        log "deps: everything is installed"
        return 0
    fi
    # tests running in parallel may all get here: one installs, the others
    # wait and find everything there
    mkdir -p "$CACHE_DIR"
    exec 7>"$CACHE_DIR/.testenv-deps.lock"
    flock -w 900 7 || die "timed out waiting for $CACHE_DIR/.testenv-deps.lock"
    mapfile -t pkgs < <(missing_packages)
    if ((${#pkgs[@]} == 0)); then
        log "deps: everything is installed"
        return 0
    fi
    log "deps: installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    # (On this machine kind there is no init system, so installing
    # openssh-server starts no sshd of the machine's own; the targets run
    # their own instances with their own configs.)
    mapfile -t pkgs < <(missing_packages)
    ((${#pkgs[@]} == 0)) || die "deps: still missing: ${pkgs[*]}"
    log "deps: done"
}

require_deps() {
    local pkgs
    mapfile -t pkgs < <(missing_packages)
    ((${#pkgs[@]} == 0)) || die "missing packages: ${pkgs[*]} (run: $0 deps)"
}

# ---------------------------------------------------------------- locking

lock_global() {
    mkdir -p "$TESTENV_ROOT"
    # daemons started here must not inherit these descriptors (7, 8, 9):
    # they would hold the lock for their whole life
    exec 8>"$TESTENV_ROOT/.lock"
    flock -w 300 8 || die "timed out waiting for $TESTENV_ROOT/.lock"
}
unlock_global() { flock -u 8; }

lock_name() {
    mkdir -p "$TESTENV_ROOT"
    exec 9>"$TESTENV_ROOT/.$1.lock"
    flock -w 900 9 || die "timed out waiting for the lock on '$1'"
}

# ---------------------------------------------------------------- helpers

json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# kill PID with TERM, wait, then KILL
stop_pid() {
    local pid=$1 i
    pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < ${2:-50}; i++)); do
        pid_alive "$pid" || return 0
        # a zombie child of ours counts as gone
        [[ $(ps -o stat= -p "$pid" 2>/dev/null) == Z* ]] && return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

pidfile_pid() { [[ -s $1 ]] && tr -dc '0-9' <"$1" || true; }

# target_pid PIDFILE DIR: the PID in PIDFILE if that process belongs to the
# target in DIR (its command line names DIR, or its root is under DIR), so
# that a stale PID file never gets an unrelated process killed
target_pid() {
    local pid link cmd
    pid=$(pidfile_pid "$1")
    [[ -n $pid ]] && pid_alive "$pid" || return 0
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || true
    if [[ $cmd == *"$2/"* ]]; then
        echo "$pid"
        return 0
    fi
    link=$(readlink "/proc/$pid/root" 2>/dev/null) || return 0
    [[ $link == "$2"/* ]] && echo "$pid"
    return 0
}

mounts_under() {
    # mount points at or below $1, deepest first
    findmnt -rn -o TARGET | awk -v d="$1" 'index($0, d "/") == 1 || $0 == d' | sort -r
}

gen_keys() {
    local dir=$1
    ssh-keygen -q -t ed25519 -N '' -C "cultivate-testenv-host" -f "$dir/ssh_host_ed25519_key"
    ssh-keygen -q -t ed25519 -N '' -C "cultivate-testenv-user" -f "$dir/id_ed25519"
    cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
    chmod 600 "$dir/id_ed25519" "$dir/ssh_host_ed25519_key" "$dir/authorized_keys"
}

# write_known_hosts DIR HOSTPATTERN
write_known_hosts() {
    local key
    key=$(cut -d' ' -f1,2 <"$1/ssh_host_ed25519_key.pub")
    printf '%s %s\n' "$2" "$key" >"$1/known_hosts"
}

ssh_opts() {
    local dir=$1
    printf '%s\n' -F /dev/null -i "$dir/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
        -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$dir/known_hosts" \
        -o ConnectTimeout=3 -o LogLevel=ERROR
}

# target_ssh DIR ADDR PORT CMD...
target_ssh() {
    local dir=$1 addr=$2 port=$3
    shift 3
    local opts
    mapfile -t opts < <(ssh_opts "$dir")
    ssh "${opts[@]}" -p "$port" "root@$addr" "$@"
}

wait_for() {
    # wait_for SECONDS DESCRIPTION CMD...
    local secs=$1 what=$2 start=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS - start >= secs)); then
            log "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.3
    done
}

mtu_of_uplink() {
    local dev
    dev=$(ip route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
    [[ -n $dev ]] && cat "/sys/class/net/$dev/mtu" 2>/dev/null || echo 1500
}

sshd_config() {
    # sshd_config LISTEN_ADDR PORT HOSTKEY AUTHKEYS PIDFILE [DOCKER_HOST]
    cat <<EOF
# generated by scripts/testenv.sh
ListenAddress $1
Port $2
HostKey $3
AuthorizedKeysFile $4
PidFile $5
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp internal-sftp
EOF
    # SHLVL=1: bash, started by sshd for a command, reads ~/.bashrc only as a
    # top-level shell (SHLVL 0 before it starts). Engine and loopback targets
    # share this machine's /root, whose .bashrc runs `pyenv init` (0.25-0.3 s
    # before every command); a server's stock .bashrc costs nothing, and that
    # is what these targets stand in for. One SetEnv line: sshd keeps only the
    # first.
    echo "SetEnv SHLVL=1${6:+ DOCKER_HOST=$6}"
}

# ---------------------------------------------------------------- network

allocate_n() {
    # called with the global lock held
    local n used=" " f addrs
    for f in "$TESTENV_ROOT"/*/n; do
        [[ -f $f ]] && used+="$(cat "$f") "
    done
    addrs=$(ip -4 -o addr show)
    for ((n = 10; n < 250; n++)); do
        [[ $used == *" $n "* ]] && continue
        ip link show "$VETH_PREFIX$n" >/dev/null 2>&1 && continue
        [[ $addrs == *"inet 10.77.$n."* ]] && continue
        echo "$n"
        return 0
    done
    die "no free 10.77.N.0/24 network left"
}

ipt_comment() { echo "cultivate-testenv:$1"; }

net_up() {
    local name=$1 n=$2 ns=$NS_PREFIX$1 veth=$VETH_PREFIX$2 mtu
    mtu=$(mtu_of_uplink)
    ip netns add "$ns"
    ip link add "$veth" mtu "$mtu" type veth peer name "${veth}p" mtu "$mtu"
    ip link set "${veth}p" netns "$ns"
    ip addr add "10.77.$n.1/24" dev "$veth"
    ip link set "$veth" up
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "${veth}p" name eth0
    ip -n "$ns" addr add "10.77.$n.2/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "10.77.$n.1"
    sysctl -qw net.ipv4.ip_forward=1
    # Docker sets FORWARD's policy to DROP; let the target out (NAT) so it
    # reaches Debian's archive. Tagged with a comment so `down` removes
    # exactly these rules.
    local c
    c=$(ipt_comment "$name")
    iptables -w -I FORWARD -i "$veth" -m comment --comment "$c" -j ACCEPT
    iptables -w -I FORWARD -o "$veth" -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "$c" -j ACCEPT
    iptables -w -t nat -A POSTROUTING -s "10.77.$n.0/24" ! -o "$veth" -m comment --comment "$c" -j MASQUERADE
}

ipt_remove() {
    local name=$1 c table rule
    local -a parts
    c=$(ipt_comment "$name")
    for table in filter nat; do
        # our rules as `-A CHAIN ...`; delete each with `-D CHAIN ...`
        while IFS= read -r rule; do
            [[ -n $rule ]] || continue
            # `iptables -S` quotes the comment; pass it back unquoted
            read -ra parts <<<"${rule//\"/}"
            parts[0]=-D
            iptables -w -t "$table" "${parts[@]}" || true
        done < <(iptables -w -t "$table" -S 2>/dev/null | grep -E -- "--comment \"?$c\"? " || true)
    done
}

# ---------------------------------------------------------------- roots (bare, trixie)

cache_tar() { echo "$CACHE_DIR/testenv-$1.tar"; }

build_root_cache() {
    # build_root_cache SUITE (bookworm|trixie); cached as an uncompressed tarball
    local suite=$1 tar
    tar=$(cache_tar "$suite")
    mkdir -p "$CACHE_DIR"
    exec 7>"$CACHE_DIR/.testenv-$suite.lock"
    flock 7
    if [[ -s $tar ]]; then
        flock -u 7
        return 0
    fi
    local build="$CACHE_DIR/build-$suite"
    if [[ -d $build ]]; then
        # left over from an interrupted build
        umount -R "$build/proc" 2>/dev/null || true
        [[ -z $(mounts_under "$build") ]] || die "mounts left under $build"
        rm -rf --one-file-system "$build"
    fi
    mkdir -p "$build"
    local started=$SECONDS
    log "building the $suite root (debootstrap; cached as $tar afterwards)"
    debootstrap --variant=minbase \
        --include=openssh-server,ca-certificates,curl,iproute2,procps,iptables,sudo \
        "$suite" "$build" "$MIRROR" >"$CACHE_DIR/debootstrap-$suite.log" 2>&1 ||
        { tail -n 20 "$CACHE_DIR/debootstrap-$suite.log" >&2; die "debootstrap $suite failed"; }
    if [[ $suite == bookworm ]]; then
        # the same sources as this (bookworm) machine: main, updates, security
        if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
            cp /etc/apt/sources.list.d/debian.sources "$build/etc/apt/sources.list.d/"
            : >"$build/etc/apt/sources.list"
        fi
    fi
    if [[ $suite == trixie ]]; then
        # Docker 26 and Compose v2 (as `docker compose` and `docker-compose`)
        printf '#!/bin/sh\nexit 101\n' >"$build/usr/sbin/policy-rc.d"
        chmod +x "$build/usr/sbin/policy-rc.d"
        cp /etc/resolv.conf "$build/etc/resolv.conf"
        mount -t proc proc "$build/proc"
        local rc=0
        chroot "$build" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq &&
            apt-get install -y -qq --no-install-recommends docker.io docker-cli docker-compose' \
            >"$CACHE_DIR/apt-$suite.log" 2>&1 || rc=$?
        umount "$build/proc"
        rm -f "$build/usr/sbin/policy-rc.d"
        if ((rc != 0)); then
            tail -n 20 "$CACHE_DIR/apt-$suite.log" >&2
            die "installing Docker into the $suite root failed"
        fi
    fi
    chroot "$build" apt-get clean
    rm -rf "$build"/var/lib/apt/lists/* "$build"/etc/ssh/ssh_host_*
    mkdir -p "$build/var/lib/apt/lists/partial"
    tar --numeric-owner -C "$build" -cpf "$tar.tmp" .
    mv "$tar.tmp" "$tar"
    rm -rf --one-file-system "$build"
    log "$suite root built in $((SECONDS - started))s"
    flock -u 7
}

cache_tree() {
    # The cached tarball extracted once, used read-only as the lower layer
    # of each target's overlay. Named by the tarball's mtime, so a rebuilt
    # tarball never changes a tree that running targets use.
    local suite=$1 tar tree
    tar=$(cache_tar "$suite")
    tree="$CACHE_DIR/testenv-$suite.$(stat -c %Y "$tar").root"
    if [[ ! -f $tree.ok ]]; then
        exec 7>"$CACHE_DIR/.testenv-$suite.lock"
        flock -w 900 7 || die "timed out waiting for the $suite cache lock"
        if [[ ! -f $tree.ok ]]; then
            rm -rf --one-file-system "$tree"
            mkdir -p "$tree"
            tar --numeric-owner -C "$tree" -xpf "$tar"
            touch "$tree.ok"
        fi
        flock -u 7
    fi
    echo "$tree"
}

root_up() {
    # root_up DIR SUITE -> the target's root at DIR/root, mounted, with its
    # sshd config. The root is an overlay (the cached tree below, DIR/upper
    # above): a few milliseconds instead of extracting hundreds of MB per
    # target, and being a mount point of its own it needs no bind onto itself
    # (which Docker 26's `docker load` needs: "remount /, flags: 0x84000").
    # Docker's, containerd's and Podman's (/var/lib/containers) stores are
    # bind-mounted from DIR (overlay2 does not work on top of overlayfs;
    # Podman's overlay driver says "'overlay' is not supported over overlayfs"). TESTENV_ROOT_MODE=copy extracts the
    # tarball instead and binds the root onto itself (the slower recipe).
    local dir=$1 suite=$2 r=$1/root tree
    mkdir -p "$r"
    if [[ ${TESTENV_ROOT_MODE:-overlay} == overlay ]]; then
        tree=$(cache_tree "$suite")
        mkdir -p "$dir/upper" "$dir/work"
        if mount -t overlay overlay -o "lowerdir=$tree,upperdir=$dir/upper,workdir=$dir/work" "$r"; then
            mount --make-private "$r"
            local store
            for store in docker containerd containers; do
                mkdir -p "$r/var/lib/$store" "$dir/var-lib-$store"
                mount --bind "$dir/var-lib-$store" "$r/var/lib/$store"
                mount --make-private "$r/var/lib/$store"
            done
        else
            log "overlay mount failed; extracting the $suite root instead"
            TESTENV_ROOT_MODE=copy
        fi
    fi
    if [[ ${TESTENV_ROOT_MODE:-overlay} != overlay ]]; then
        tar --numeric-owner -C "$r" -xpf "$(cache_tar "$suite")"
        mount --bind "$r" "$r"
        mount --make-private "$r"
    fi
    local m
    for m in proc sys dev; do
        mount --rbind "/$m" "$r/$m"
        mount --make-rslave "$r/$m"
    done
    # /dev/pts and /sys/fs/cgroup came along with the recursive binds above
    findmnt -rn "$r/dev/pts" >/dev/null || { mount --rbind /dev/pts "$r/dev/pts" && mount --make-rslave "$r/dev/pts"; }
    findmnt -rn "$r/sys/fs/cgroup" >/dev/null || { mount --rbind /sys/fs/cgroup "$r/sys/fs/cgroup" && mount --make-rslave "$r/sys/fs/cgroup"; }
    rm -f "$r/etc/resolv.conf"
    cp /etc/resolv.conf "$r/etc/resolv.conf"
    # the root shares this machine's hostname (UTS namespace); as on a
    # Debian install, let it resolve (else sudo warns on every call)
    local host
    host=$(hostname)
    grep -qw -- "$host" "$r/etc/hosts" 2>/dev/null || printf '127.0.1.1\t%s\n' "$host" >>"$r/etc/hosts"
    mkdir -p "$r/run/sshd" "$r/root/.ssh" "$r/etc/ssh"
    cp "$dir/ssh_host_ed25519_key" "$dir/ssh_host_ed25519_key.pub" "$r/etc/ssh/"
    cp "$dir/authorized_keys" "$r/root/.ssh/authorized_keys"
    chmod 700 "$r/root/.ssh"
    sshd_config "10.77.$(cat "$dir/n").2" 22 /etc/ssh/ssh_host_ed25519_key /root/.ssh/authorized_keys \
        /run/cultivate-sshd.pid >"$r/etc/ssh/cultivate_sshd_config"
}

mac_dress() {
    # mac_dress ROOT: the trixie root made a stand-in macOS 14 host. `uname`
    # says Darwin, `sw_vers` answers, there is no /etc/os-release, root's
    # home is /Users/admin and its login shell records every command that
    # reaches it over ssh; mv, stat, xargs and shasum behave as BSD's do
    # where cultivate could trip on the difference. The docker client moves off the PATH (to where
    # only the finch stand-in uses it) and docker-compose goes: nothing but
    # `finch` can drive the engine. The VM starts "nonexistent".
    local r=$1 src=$HERE/testenv/mac
    install -m 755 "$src/uname" "$r/usr/local/bin/uname"
    install -m 755 "$src/sw_vers" "$r/usr/bin/sw_vers"
    install -m 755 "$src/finch" "$r/usr/local/bin/finch"
    mkdir -p "$r/usr/libexec/finch-standin" "$r/var/lib/finch-standin" "$r/var/log/finch-standin"
    install -m 755 "$src/record-shell" "$r/usr/libexec/finch-standin/record-shell"
    # BSD userland where it differs from GNU in what cultivate sends: mv
    # without -T (with -h), stat -f instead of -c, xargs without -r, shasum
    # instead of sha256sum (a GNU-only command line fails here as on a Mac)
    local tool
    for tool in mv stat xargs shasum; do
        install -m 755 "$src/$tool" "$r/usr/local/bin/$tool"
    done
    for tool in sha1sum sha256sum sha512sum; do
        mv "$r/usr/bin/$tool" "$r/usr/libexec/finch-standin/$tool"
    done
    mv "$r/usr/bin/docker" "$r/usr/libexec/finch-standin/docker"
    rm -f "$r/usr/bin/docker-compose" "$r/etc/os-release" "$r/usr/lib/os-release"
    : >"$r/var/log/finch-standin/invocations.log"
    : >"$r/var/log/finch-standin/ssh-commands.log"
    mkdir -p "$r/Users/admin" "$r/Volumes"
    chmod 755 "$r/Users" "$r/Volumes"
    sed -i 's|^root:x:0:0:root:/root:/bin/bash$|root:x:0:0:System Administrator:/Users/admin:/usr/libexec/finch-standin/record-shell|' \
        "$r/etc/passwd"
    grep -q '^root:.*:/Users/admin:/usr/libexec/finch-standin/record-shell$' "$r/etc/passwd" ||
        die "could not set root's home and shell in the mac root"
}

# ---------------------------------------------------------------- engines

start_engine() {
    # start_engine DIR KIND NETNS: the target's dockerd, in the background
    local dir=$1 kind=$2 ns=$3
    case $kind in
        engine)
            # The config file must not set data-root (/etc/docker/daemon.json
            # does, and a flag and the file may not both); it names its own
            # trust key, from which Docker 20.10 derives the engine ID that
            # `docker info` reports (else it shares this machine's ID).
            printf '{"deprecated-key-path": "%s"}\n' "$dir/key.json" >"$dir/empty.json"
            setsid nsenter --net="/var/run/netns/$ns" /usr/sbin/dockerd \
                --config-file "$dir/empty.json" --data-root "$dir/data" --exec-root "$dir/exec" \
                --host "unix://$dir/docker.sock" --pidfile "$dir/docker.pid" --mtu "$(mtu_of_uplink)" \
                </dev/null >>"$dir/dockerd.log" 2>&1 7>&- 8>&- 9>&- &
            ;;
        trixie | mac)
            # inside the root: its own dockerd and containerd (Docker 26)
            setsid "$HERE/testenv/in-root.sh" "$dir" "$ns" /bin/sh -c \
                'exec /usr/sbin/dockerd --pidfile /run/docker.pid >>/var/log/dockerd.log 2>&1' \
                </dev/null >/dev/null 2>&1 7>&- 8>&- 9>&- &
            ln -sf root/run/docker.pid "$dir/docker.pid"
            ;;
        *) die "a $kind target has no engine started by this script" ;;
    esac
}

engine_sock() {
    local dir=$1
    if [[ -S $dir/docker.sock ]]; then
        echo "unix://$dir/docker.sock"
    elif [[ -S $dir/root/run/docker.sock ]]; then
        echo "unix://$dir/root/run/docker.sock"
    fi
}

engine_answers() {
    local sock
    sock=$(engine_sock "$1")
    [[ -n $sock ]] && docker -H "$sock" info
}

cmd_engine() {
    # engine-stop NAME | engine-start NAME: for fault tests (containers
    # stop with a stopped engine: Docker's default, no live-restore)
    need_root
    local action=$1 name=$2
    check_name "$name"
    local dir=$TESTENV_ROOT/$name kind
    [[ -f $dir/target.json ]] || die "'$name' is not up"
    kind=$(cat "$dir/kind")
    case $action in
        stop)
            stop_pid "$(target_pid "$dir/docker.pid" "$dir")" 100
            log "'$name': dockerd stopped"
            ;;
        start)
            if pid_alive "$(target_pid "$dir/docker.pid" "$dir")"; then
                log "'$name': dockerd already running"
                return 0
            fi
            start_engine "$dir" "$kind" "$(cat "$dir/netns")"
            wait_for "$UP_TIMEOUT" "dockerd of '$name'" engine_answers "$dir"
            log "'$name': dockerd started"
            ;;
    esac
}

# ---------------------------------------------------------------- state files

write_state() {
    # write_state DIR NAME KIND ADDR PORT DOCKER_HOST NETNS HOSTADDR
    local dir=$1 name=$2 kind=$3 addr=$4 port=$5 dh=$6 ns=$7 hostaddr=$8
    local uri="ssh://root@$addr:$port"
    {
        echo "# cultivate test target (scripts/testenv.sh); source this file"
        printf 'TESTENV_NAME=%q\n' "$name"
        printf 'TESTENV_KIND=%q\n' "$kind"
        printf 'TESTENV_ADDRESS=%q\n' "$addr"
        printf 'TESTENV_PORT=%q\n' "$port"
        printf 'TESTENV_USER=root\n'
        printf 'TESTENV_IDENTITY=%q\n' "$dir/id_ed25519"
        printf 'TESTENV_KNOWN_HOSTS=%q\n' "$dir/known_hosts"
        printf 'TESTENV_DOCKER_HOST=%q\n' "$dh"
        printf 'TESTENV_DIR=%q\n' "$dir"
        printf 'TESTENV_NETNS=%q\n' "$ns"
        printf 'TESTENV_HOST_ADDRESS=%q\n' "$hostaddr"
        printf 'TESTENV_SSH_URI=%q\n' "$uri"
    } >"$dir/env.tmp"
    local dhj=null nsj=null hj=null
    [[ -n $dh ]] && dhj=$(json_str "$dh")
    [[ -n $ns ]] && nsj=$(json_str "$ns")
    [[ -n $hostaddr ]] && hj=$(json_str "$hostaddr")
    cat >"$dir/target.json.tmp" <<EOF
{
  "name": $(json_str "$name"),
  "kind": $(json_str "$kind"),
  "address": $(json_str "$addr"),
  "port": $port,
  "user": "root",
  "identity": $(json_str "$dir/id_ed25519"),
  "known_hosts": $(json_str "$dir/known_hosts"),
  "docker_host": $dhj,
  "dir": $(json_str "$dir"),
  "netns": $nsj,
  "host_address": $hj,
  "ssh_uri": $(json_str "$uri")
}
EOF
    mv "$dir/env.tmp" "$dir/env"
    mv "$dir/target.json.tmp" "$dir/target.json"
}

# ---------------------------------------------------------------- up

healthy() {
    # healthy DIR: the recorded target answers over ssh (and docker, if any)
    local dir=$1
    [[ -f $dir/env ]] || return 1
    (
        # shellcheck disable=SC1091
        source "$dir/env"
        # shellcheck disable=SC2153
        target_ssh "$dir" "$TESTENV_ADDRESS" "$TESTENV_PORT" true
        if [[ -n $TESTENV_DOCKER_HOST ]]; then
            target_ssh "$dir" "$TESTENV_ADDRESS" "$TESTENV_PORT" docker info
        fi
        # a mac target's engine is reachable only by finch over ssh: look from here
        if [[ $TESTENV_KIND == mac ]]; then
            engine_answers "$dir"
        fi
    ) >/dev/null 2>&1
}

up_failed() {
    local dir=$1 name=$2 f
    # the ERR trap is inherited by command substitutions (set -E): act once
    ((BASH_SUBSHELL == 0)) || return 0
    trap - ERR
    log "bringing up '$name' failed; logs:"
    for f in "$dir/sshd.log" "$dir/dockerd.log" "$dir/root/var/log/cultivate-sshd.log" "$dir/root/var/log/dockerd.log"; do
        if [[ -s $f ]]; then
            echo "---- $f" >&2
            tail -n 15 "$f" >&2
        fi
    done
    if [[ -n ${TESTENV_KEEP_ON_FAILURE:-} ]]; then
        log "kept for debugging (TESTENV_KEEP_ON_FAILURE); run: $0 down $name"
    else
        down_one "$name" || true
    fi
}

cmd_up() {
    need_root
    (($# == 2)) || usage
    local name=$1 kind=$2
    check_name "$name"
    case $kind in engine | bare | trixie | mac) ;; *) die "unknown kind '$kind' (engine, bare, trixie, mac)" ;; esac
    require_deps
    if [[ $kind == engine ]]; then
        { [[ -x /usr/sbin/dockerd ]] && command -v docker >/dev/null; } ||
            die "an engine target runs this machine's /usr/sbin/dockerd and docker client: not installed"
    fi
    lock_name "$name"
    local dir=$TESTENV_ROOT/$name
    if [[ -f $dir/target.json && $(cat "$dir/kind" 2>/dev/null) == "$kind" ]] && healthy "$dir"; then
        log "'$name' ($kind) is already up"
        cat "$dir/target.json"
        return 0
    fi
    [[ -e $dir ]] && down_one "$name"

    # cache the root before taking any network resources (slow the first time)
    case $kind in
        bare) build_root_cache bookworm ;;
        trixie | mac) build_root_cache trixie ;;
    esac

    local started=$SECONDS n
    lock_global
    n=$(allocate_n)
    mkdir -p "$dir"
    chmod 755 "$dir"
    echo "$n" >"$dir/n"
    echo "$kind" >"$dir/kind"
    unlock_global

    trap 'up_failed "$dir" "$name"' ERR
    set -E
    local addr=10.77.$n.2 ns=$NS_PREFIX$name dh=""
    gen_keys "$dir"
    write_known_hosts "$dir" "$addr"
    net_up "$name" "$n"
    local mtu
    mtu=$(mtu_of_uplink)
    echo "$ns" >"$dir/netns"

    case $kind in
        engine)
            dh="unix://$dir/docker.sock"
            start_engine "$dir" engine "$ns"
            sshd_config "$addr" 22 "$dir/ssh_host_ed25519_key" "$dir/authorized_keys" \
                "$dir/sshd.pid" "$dh" >"$dir/sshd_config"
            mkdir -p /run/sshd
            nsenter --net="/var/run/netns/$ns" /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log" 7>&- 8>&- 9>&-
            ;;
        bare | trixie | mac)
            local suite=bookworm
            [[ $kind == trixie || $kind == mac ]] && suite=trixie
            root_up "$dir" "$suite"
            [[ $kind == mac ]] && mac_dress "$dir/root"
            "$HERE/testenv/in-root.sh" "$dir" "$ns" /usr/sbin/sshd \
                -f /etc/ssh/cultivate_sshd_config -E /var/log/cultivate-sshd.log 7>&- 8>&- 9>&-
            ln -sf root/run/cultivate-sshd.pid "$dir/sshd.pid"
            if [[ $kind == trixie || $kind == mac ]]; then
                [[ $kind == trixie ]] && dh=unix:///var/run/docker.sock
                echo "{\"mtu\": $mtu}" >"$dir/root/etc/docker/daemon.json"
                start_engine "$dir" "$kind" "$ns"
                ln -sf root/run/docker.pid "$dir/docker.pid"
            fi
            ;;
    esac

    wait_for "$UP_TIMEOUT" "sshd on $addr:22" target_ssh "$dir" "$addr" 22 true
    if [[ -n $dh ]]; then
        wait_for "$UP_TIMEOUT" "docker info over ssh" target_ssh "$dir" "$addr" 22 docker info
    fi
    if [[ $kind == mac ]]; then
        wait_for "$UP_TIMEOUT" "the mac target's engine" engine_answers "$dir"
        [[ $(target_ssh "$dir" "$addr" 22 uname -s) == Darwin ]] ||
            { log "uname -s is not Darwin in the mac target"; false; }
    fi
    if [[ $kind == trixie ]]; then
        target_ssh "$dir" "$addr" 22 docker compose version >/dev/null ||
            { log "docker compose version failed in the trixie target"; false; }
    fi
    write_state "$dir" "$name" "$kind" "$addr" 22 "$dh" "$ns" "10.77.$n.1"
    trap - ERR
    log "'$name' ($kind) is up at $addr in $((SECONDS - started))s"
    cat "$dir/target.json"
}

cmd_sshd_loopback() {
    need_root
    (($# >= 1 && $# <= 2)) || usage
    local name=$1 port=${2:-}
    check_name "$name"
    require_deps
    lock_name "$name"
    local dir=$TESTENV_ROOT/$name
    if [[ -f $dir/target.json && $(cat "$dir/kind" 2>/dev/null) == loopback ]] && healthy "$dir" &&
        { [[ -z $port ]] || grep -qx "Port $port" "$dir/sshd_config"; }; then
        log "'$name' (loopback) is already up"
        cat "$dir/target.json"
        return 0
    fi
    [[ -e $dir ]] && down_one "$name"
    local started=$SECONDS
    lock_global
    if [[ -z $port ]]; then
        local p used
        used=$(ss -Htanl | awk '{print $4}' | sed 's/.*://' | sort -u)
        for ((p = 22000 + RANDOM % 2000; p < 30000; p++)); do
            grep -qx "$p" <<<"$used" || { port=$p; break; }
        done
        [[ -n $port ]] || die "no free port"
    fi
    mkdir -p "$dir"
    chmod 755 "$dir"
    echo loopback >"$dir/kind"
    unlock_global
    trap 'up_failed "$dir" "$name"' ERR
    set -E
    gen_keys "$dir"
    write_known_hosts "$dir" "[127.0.0.1]:$port"
    sshd_config 127.0.0.1 "$port" "$dir/ssh_host_ed25519_key" "$dir/authorized_keys" "$dir/sshd.pid" \
        >"$dir/sshd_config"
    mkdir -p /run/sshd
    /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log" 7>&- 8>&- 9>&-
    wait_for "$UP_TIMEOUT" "sshd on 127.0.0.1:$port" target_ssh "$dir" 127.0.0.1 "$port" true
    write_state "$dir" "$name" loopback 127.0.0.1 "$port" "" "" ""
    trap - ERR
    log "'$name' (loopback sshd) is up at 127.0.0.1:$port in $((SECONDS - started))s"
    cat "$dir/target.json"
}

# ---------------------------------------------------------------- down

kill_netns_procs() {
    local ns=$1 pids i
    [[ -e /var/run/netns/$ns ]] || return 0
    for i in 1 2 3; do
        mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null)
        ((${#pids[@]} == 0)) && return 0
        if ((i < 3)); then kill -TERM "${pids[@]}" 2>/dev/null || true; else kill -KILL "${pids[@]}" 2>/dev/null || true; fi
        sleep 1
    done
}

kill_rooted_procs() {
    # Processes whose root directory is under $1: chrooted into a target's
    # root, or containers of a target's engine (their root is a merged
    # overlay under the engine's data root, their netns is not the
    # target's). Left running when a target's dockerd died. Run before
    # unmounting, while /proc/PID/root still names the path.
    local r=$1 p link i found
    [[ -d $r ]] || return 0
    for i in 1 2 3 4 5; do
        found=0
        for p in /proc/[0-9]*; do
            link=$(readlink "$p/root" 2>/dev/null) || continue
            if [[ $link == "$r" || $link == "$r"/* ]]; then
                found=1
                if ((i < 3)); then kill -TERM "${p#/proc/}" 2>/dev/null || true; else kill -KILL "${p#/proc/}" 2>/dev/null || true; fi
            fi
        done
        ((found)) || return 0
        sleep 0.5
    done
}

kill_container_procs() {
    # Processes of the containers of a target's engine: found by container
    # ID in their cgroup (their root and network namespace are their own).
    # Left running when a target's dockerd died before it could stop them.
    local dir=$1 c id p ids=()
    for c in "$dir"/data/containers/* "$dir"/root/var/lib/docker/containers/*; do
        id=${c##*/}
        [[ $id =~ ^[0-9a-f]{64}$ ]] && ids+=("$id")
    done
    ((${#ids[@]} > 0)) || return 0
    local pattern
    pattern=$(IFS='|'; echo "${ids[*]}")
    for p in /proc/[0-9]*; do
        if grep -qE "$pattern" "$p/cgroup" 2>/dev/null; then
            kill -KILL "${p#/proc/}" 2>/dev/null || true
        fi
    done
}

down_one() {
    local name=$1
    local dir=$TESTENV_ROOT/$name ns=$NS_PREFIX$name kind="" n=""
    [[ -f $dir/kind ]] && kind=$(cat "$dir/kind")
    [[ -f $dir/n ]] && n=$(cat "$dir/n")
    rm -f "$dir/target.json"

    # 1. containers, through their engine
    local sock
    sock=$(engine_sock "$dir")
    if [[ -n $sock ]]; then
        local ids
        ids=$(timeout 10 docker -H "$sock" ps -aq 2>/dev/null || true)
        if [[ -n $ids ]]; then
            # shellcheck disable=SC2086
            timeout 30 docker -H "$sock" rm -f $ids >/dev/null 2>&1 || true
        fi
    fi
    # 2. the engine, then sshd (and its sessions), then anything else in the netns
    stop_pid "$(target_pid "$dir/docker.pid" "$dir")" 100
    local sshd
    sshd=$(target_pid "$dir/sshd.pid" "$dir")
    if pid_alive "$sshd"; then
        local kids
        kids=$(ps -o pid= --ppid "$sshd" 2>/dev/null || true)
        stop_pid "$sshd"
        # shellcheck disable=SC2086
        [[ -n $kids ]] && kill -TERM $kids 2>/dev/null || true
    fi
    kill_netns_procs "$ns"
    kill_container_procs "$dir"
    kill_rooted_procs "$dir"

    # 3. mounts, deepest first
    if [[ -d $dir ]]; then
        local pass m
        for pass in 1 2 3 4 5; do
            mapfile -t mnts < <(mounts_under "$dir")
            ((${#mnts[@]} == 0)) && break
            for m in "${mnts[@]}"; do
                if ((pass < 4)); then umount "$m" 2>/dev/null || true; else umount -l "$m" 2>/dev/null || true; fi
            done
        done
        mapfile -t mnts < <(mounts_under "$dir")
        ((${#mnts[@]} == 0)) || die "still mounted under $dir: ${mnts[*]}"
    fi

    # 4. network: iptables rules, veth, netns
    ipt_remove "$name"
    [[ -n $n ]] && ip link del "$VETH_PREFIX$n" 2>/dev/null || true
    if [[ -e /var/run/netns/$ns ]]; then
        ip netns del "$ns" 2>/dev/null || true
    fi

    # 5. state (only once nothing is mounted below it)
    if [[ -d $dir ]]; then
        [[ -z $(mounts_under "$dir") ]] || die "refusing to remove $dir: still mounted"
        rm -rf --one-file-system "$dir"
    fi
    # (the lock file stays: deleting it under a waiting `flock` would let
    # two holders in)
    return 0
}

cmd_down() {
    need_root
    (($# == 1)) || usage
    check_name "$1"
    lock_name "$1"
    down_one "$1"
    log "'$1' is down"
}

all_names() {
    local d names=()
    for d in "$TESTENV_ROOT"/*/; do
        [[ -d $d ]] && names+=("$(basename "$d")")
    done
    ((${#names[@]} == 0)) || printf '%s\n' "${names[@]}" | sort -u
}

cmd_down_all() {
    need_root
    local name
    while IFS= read -r name; do
        [[ -n $name ]] || continue
        lock_name "$name"
        down_one "$name"
        log "'$name' is down"
    done < <(all_names)
}

cmd_status() {
    local name dir
    printf '%-20s %-9s %-16s %-6s %-8s %s\n' NAME KIND ADDRESS PORT SSHD DOCKERD
    while IFS= read -r name; do
        [[ -n $name ]] || continue
        dir=$TESTENV_ROOT/$name
        local kind='?' addr='?' port='?' s=down d=-
        [[ -f $dir/kind ]] && kind=$(cat "$dir/kind")
        if [[ -f $dir/env ]]; then
            # shellcheck disable=SC1091
            addr=$(source "$dir/env" && echo "$TESTENV_ADDRESS")
            # shellcheck disable=SC1091
            port=$(source "$dir/env" && echo "$TESTENV_PORT")
        elif [[ ! -f $dir/target.json ]]; then
            addr="(not up)"
        fi
        pid_alive "$(target_pid "$dir/sshd.pid" "$dir")" && s=up
        if [[ $kind == engine || $kind == trixie || $kind == mac ]]; then
            d=down
            pid_alive "$(target_pid "$dir/docker.pid" "$dir")" && d=up
        fi
        printf '%-20s %-9s %-16s %-6s %-8s %s\n' "$name" "$kind" "$addr" "$port" "$s" "$d"
    done < <(all_names)
}

main() {
    (($# >= 1)) || usage
    local cmd=$1
    shift
    case $cmd in
        deps) cmd_deps "$@" ;;
        check-deps) require_deps ;;
        up) cmd_up "$@" ;;
        sshd-loopback) cmd_sshd_loopback "$@" ;;
        down) cmd_down "$@" ;;
        engine-stop) (($# == 1)) || usage; cmd_engine stop "$1" ;;
        engine-start) (($# == 1)) || usage; cmd_engine start "$1" ;;
        down-all) cmd_down_all "$@" ;;
        status) cmd_status "$@" ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
