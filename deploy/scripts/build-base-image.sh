#!/usr/bin/env bash
# Build the Node.js base image locally and tag it `node:20-bookworm-slim`, so that the
# project's Dockerfiles can keep an ordinary `FROM node:20-bookworm-slim` on a machine that
# cannot pull from any registry (on a normal machine the real image is simply pulled).
#
#   deploy/scripts/build-base-image.sh [--force] [--with-headers] [--tag NAME]
#
#   --force         rebuild even if the tag already exists (default: keep it, a cache hit)
#   --with-headers  also copy Node's C headers (include/node, ~54 MB) for node-gyp builds
#   --tag NAME      tag to produce (default node:20-bookworm-slim, or $BASE_IMAGE_TAG)
#
# How: `debootstrap --variant=minbase bookworm` (from Debian's mirror) gives a real Debian
# userland (sh/dash, bash, coreutils, apt, libc, libstdc++); it is slimmed like the official
# -slim images; then the machine's own Node.js binary, npm and corepack are copied in under
# /usr/local (the layout of the official image), a `node` user (uid/gid 1000) is created, the
# machine's CA bundle is copied in (so TLS through this machine's egress works inside
# containers), and the tree is `docker import`ed with the official image's ENTRYPOINT/CMD.
# A smoke test runs `node`, `npm` and `sh` in the result before the script reports success.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian),
#              DEBOOTSTRAP_CACHE (default /var/cache/vsm-debootstrap; .debs kept for rebuilds).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
base_dir=$(cd "$here/../base" && pwd)

log() { printf '[build-base-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

TAG=${BASE_IMAGE_TAG:-node:20-bookworm-slim}
FORCE=0
WITH_HEADERS=0
SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBOOTSTRAP_CACHE=${DEBOOTSTRAP_CACHE:-/var/cache/vsm-debootstrap}
export DEBIAN_FRONTEND=noninteractive

while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --with-headers) WITH_HEADERS=1 ;;
    --tag) shift; TAG=${1:?--tag needs a value} ;;
    --tag=*) TAG=${1#--tag=} ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;/^set -euo/d'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
  shift
done

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"

"$here/ensure-docker.sh"

# One build at a time on this machine.
exec 9>/var/lock/vsm-build-base-image.lock
flock 9

if [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  origin=$(docker image inspect -f '{{index .Config.Labels "org.vsm.base.built-by"}}' "$TAG" 2>/dev/null || true)
  log "$TAG already present (${origin:-not built by this script, e.g. pulled}); nothing to do (use --force to rebuild)"
  exit 0
fi

t0=$SECONDS

# ---- the machine's Node.js -------------------------------------------------------------
node_bin=$(readlink -f "$(command -v node)") || die "node not found on this machine"
node_version=$("$node_bin" -p process.version)
node_prefix=$(dirname "$(dirname "$node_bin")")
npm_dir=$node_prefix/lib/node_modules/npm
[ -f "$npm_dir/bin/npm-cli.js" ] || npm_dir=$(npm root -g 2>/dev/null)/npm
[ -f "$npm_dir/bin/npm-cli.js" ] || die "cannot find npm next to $node_bin"
corepack_dir=$(dirname "$npm_dir")/corepack
npm_version=$("$node_bin" -p "require('$npm_dir/package.json').version")
case "$TAG" in
  node:[0-9]*)
    want=${TAG#node:}; want=${want%%[-.]*}
    [ "${node_version#v}" != "${node_version#v"$want".}" ] \
      || die "machine's node is $node_version but the tag $TAG says node $want"
    ;;
esac
log "node $node_version ($node_bin), npm $npm_version ($npm_dir)"

# ---- debootstrap -----------------------------------------------------------------------
if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; } \
    || die "cannot install debootstrap"
fi

work=$(mktemp -d /var/tmp/vsm-base.XXXXXX)
rootfs=$work/rootfs
cleanup() {
  # debootstrap unmounts what it mounts; be safe before rm -rf anyway.
  for m in proc sys dev/pts dev; do
    if mountpoint -q "$rootfs/$m" 2>/dev/null; then umount -l "$rootfs/$m" || true; fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$DEBOOTSTRAP_CACHE"
t_db=$SECONDS
ok=0
for attempt in 1 2; do
  rm -rf "$rootfs"
  if debootstrap --variant=minbase --cache-dir="$DEBOOTSTRAP_CACHE" \
       "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1; then
    ok=1; break
  fi
  log "debootstrap attempt $attempt failed:"; tail -n 15 "$work/debootstrap.log" >&2
done
[ "$ok" = 1 ] || die "debootstrap $SUITE from $DEBIAN_MIRROR failed"
log "debootstrap done in $((SECONDS - t_db))s"

# ---- slim it (as debian:*-slim does) ----------------------------------------------------
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/debconf/*-old \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
       "$rootfs"/usr/share/lintian "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
       "$rootfs"/debootstrap
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
install -D -m 0644 "$base_dir/dpkg-slim.cfg" "$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
install -D -m 0644 "$base_dir/apt-docker-clean.conf" "$rootfs/etc/apt/apt.conf.d/docker-clean"
# Docker bind-mounts these at run time; do not bake the build machine's in.
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"

# ---- Node.js, npm, corepack under /usr/local (official image layout) --------------------
install -D -m 0755 "$node_bin" "$rootfs/usr/local/bin/node"
mkdir -p "$rootfs/usr/local/lib/node_modules"
cp -a "$npm_dir" "$rootfs/usr/local/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
if [ -d "$corepack_dir" ]; then
  cp -a "$corepack_dir" "$rootfs/usr/local/lib/node_modules/corepack"
  ln -s ../lib/node_modules/corepack/dist/corepack.js "$rootfs/usr/local/bin/corepack"
fi
if [ "$WITH_HEADERS" = 1 ]; then
  [ -d "$node_prefix/include/node" ] || die "no $node_prefix/include/node to copy"
  mkdir -p "$rootfs/usr/local/include"
  cp -a "$node_prefix/include/node" "$rootfs/usr/local/include/node"
fi
install -m 0755 "$base_dir/docker-entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"

# ---- user node (1000:1000), as in the official image -------------------------------------
chroot "$rootfs" groupadd --gid 1000 node
chroot "$rootfs" useradd --uid 1000 --gid node --shell /bin/bash --create-home node

# ---- CA bundle of this machine (Node reads it through NODE_EXTRA_CA_CERTS) ---------------
env_ca=()
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  env_ca=(--change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt')
fi

# Check the copied node finds all its shared libraries in the new root.
chroot "$rootfs" /usr/local/bin/node -e 0 || die "node does not run inside the new root (missing libraries?)"

# ---- import ---------------------------------------------------------------------------
log "importing as $TAG"
t_imp=$SECONDS
old_id=$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)
tar --numeric-owner --xattrs -C "$rootfs" -cf - . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "ENV NODE_VERSION=${node_version#v}" \
  "${env_ca[@]}" \
  --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
  --change 'CMD ["node"]' \
  --change 'LABEL org.vsm.base.built-by=deploy/scripts/build-base-image.sh' \
  --change "LABEL org.vsm.base.node-version=$node_version" \
  --change "LABEL org.vsm.base.npm-version=$npm_version" \
  --change "LABEL org.vsm.base.debian-suite=$SUITE" \
  --message "local base: debootstrap $SUITE minbase + node $node_version" \
  - "$TAG" >/dev/null
log "import done in $((SECONDS - t_imp))s"
new_id=$(docker image inspect -f '{{.Id}}' "$TAG")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  docker image rm "$old_id" >/dev/null 2>&1 || true   # drop the now-dangling old build
fi

# ---- smoke test -------------------------------------------------------------------------
got_node=$(docker run --rm --network host "$TAG" node -p process.version) || die "node does not run in $TAG"
got_npm=$(docker run --rm --network host "$TAG" npm --version) || die "npm does not run in $TAG"
docker run --rm --network host "$TAG" sh -c 'id node >/dev/null && command -v apt-get >/dev/null' \
  || die "sh / user node / apt-get missing in $TAG"
[ "$got_node" = "$node_version" ] || die "image runs node $got_node, expected $node_version"

size=$(docker image inspect -f '{{.Size}}' "$TAG")
log "built $TAG in $((SECONDS - t0))s: node $got_node, npm $got_npm, size $((size / 1000 / 1000)) MB"
