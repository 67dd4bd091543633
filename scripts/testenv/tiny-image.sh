#!/usr/bin/env bash
# Prints the path of a root-filesystem tarball holding Debian's static busybox,
# for `docker import` (there is no registry to pull a small image from):
#
#   docker import "$(scripts/testenv/tiny-image.sh)" cultivate-testenv/busybox:latest
#   docker run -d -p 8080:80 cultivate-testenv/busybox:latest httpd -f -p 80 -h /www
#
# /www/index.html holds "cultivate-testenv". Built once from the
# busybox-static .deb (downloaded, not installed) and cached under
# /var/cache/cultivate. Must run as root.
set -euo pipefail
CACHE_DIR=${TESTENV_CACHE:-/var/cache/cultivate}
out=$CACHE_DIR/testenv-busybox-rootfs.tar
if [[ -s $out ]]; then
    echo "$out"
    exit 0
fi
mkdir -p "$CACHE_DIR"
exec 7>"$CACHE_DIR/.testenv-busybox.lock"
flock -w 300 7
if [[ -s $out ]]; then
    echo "$out"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
if ! apt-get download busybox-static >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get download busybox-static >/dev/null
fi
dpkg-deb -x busybox-static_*.deb pkg
mkdir -p root/bin root/www root/tmp root/etc
cp pkg/bin/busybox root/bin/busybox
for applet in sh httpd echo cat sleep ls wget nc true; do
    ln -s busybox "root/bin/$applet"
done
echo cultivate-testenv >root/www/index.html
echo 'root:x:0:0:root:/:/bin/sh' >root/etc/passwd
echo 'root:x:0:' >root/etc/group
chmod 1777 root/tmp
tar --numeric-owner -C root -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out"
