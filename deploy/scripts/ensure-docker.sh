#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine, and that `docker compose` works.
#
#   deploy/scripts/ensure-docker.sh            # idempotent: a no-op when the engine is up
#
# On a fresh machine (root, Debian bookworm, no engine) it:
#   1. installs Debian's engine (docker.io: dockerd 20.10, containerd, runc) with apt,
#   2. installs Docker Compose v2 as a CLI plugin (`docker compose`), taken from Debian's
#      trixie `docker-compose` package (bookworm only has the Python v1, which testcontainers
#      11 cannot use: it always runs `docker compose ...`),
#   3. starts `dockerd --bridge=none --iptables=false` in the background (own session,
#      log in $DOCKERD_LOG) and waits, bounded, until `docker info` answers.
# It never stops a running engine. It fails loudly (non-zero exit, log tail) otherwise.
#
# Environment knobs:
#   DOCKERD_LOG            dockerd log file              (default /var/log/dockerd.log)
#   DOCKERD_START_TIMEOUT  seconds to wait for the engine (default 60)
#   DOCKERD_EXTRA_ARGS     extra dockerd flags, word-split (default empty)
#   DEBIAN_MIRROR          Debian mirror for the compose download (default http://deb.debian.org/debian)
#   COMPOSE_SUITE          Debian suite to take docker-compose v2 from (default trixie)
#   SKIP_COMPOSE=1         do not install the compose plugin
set -euo pipefail

log() { printf '[ensure-docker] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
DOCKERD_START_TIMEOUT=${DOCKERD_START_TIMEOUT:-60}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
COMPOSE_SUITE=${COMPOSE_SUITE:-trixie}
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
export DEBIAN_FRONTEND=noninteractive

engine_up() { command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; }
compose_ok() { command -v docker >/dev/null 2>&1 && timeout 20 docker compose version >/dev/null 2>&1; }

APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
  fi
}

apt_install() {
  apt_update_once
  log "apt-get install $*"
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

# Compose v2 plugin. Debian bookworm ships only docker-compose 1.29 (Python, `docker-compose`
# only); testcontainers 11 (npm docker-compose 1.x) spawns `docker compose ...`. Debian trixie's
# docker-compose package is Compose v2 (a Go binary needing only libc6 >= 2.34; bookworm has
# 2.36). We download that .deb with apt from a private apt state (the machine's sources are not
# touched, the package is not registered with dpkg) and put its binary where the docker CLI
# looks for plugins.
install_compose_plugin() {
  local tmp sources opts deb
  tmp=$(mktemp -d /var/tmp/vsm-compose.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  chmod 755 "$tmp"   # let apt's _apt user write the download
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
  sources="$tmp/sources.list"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR $COMPOSE_SUITE main" >"$sources"
  opts=(-o "Dir::Etc::SourceList=$sources" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o APT::Sandbox::User=root)
  log "fetching docker-compose (v2) from Debian $COMPOSE_SUITE"
  apt-get "${opts[@]}" update -qq || die "apt-get update for $COMPOSE_SUITE failed"
  (cd "$tmp" && apt-get "${opts[@]}" download -qq docker-compose) || die "apt-get download docker-compose failed"
  deb=$(find "$tmp" -maxdepth 1 -name 'docker-compose_*.deb' | head -n1)
  [ -n "$deb" ] || die "no docker-compose .deb downloaded"
  case "$(basename "$deb")" in
    docker-compose_1.*) die "$COMPOSE_SUITE offers compose v1 ($(basename "$deb")); need v2" ;;
  esac
  mkdir -p "$PLUGIN_DIR"
  dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/libexec/docker/cli-plugins/docker-compose >"$tmp/docker-compose" \
    || die "could not extract the compose binary from $deb"
  install -m 0755 "$tmp/docker-compose" "$PLUGIN_DIR/docker-compose"
  # The v2 binary also works standalone as `docker-compose`; add that name unless one exists.
  if ! command -v docker-compose >/dev/null 2>&1; then
    ln -sf "$PLUGIN_DIR/docker-compose" /usr/local/bin/docker-compose
  fi
  log "installed $(basename "$deb") as $PLUGIN_DIR/docker-compose"
}

# True if PID is a live (not zombie: PID 1 here may not reap) process whose name is NAME.
proc_alive() {
  local pid=$1 name=$2 state
  [ -r "/proc/$pid/stat" ] || return 1
  grep -qx "$name" "/proc/$pid/comm" 2>/dev/null || return 1
  state=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
  [ "$state" != Z ] && [ "$state" != X ]
}

start_dockerd() {
  local pid=""
  if [ -s /var/run/docker.pid ]; then
    pid=$(cat /var/run/docker.pid)
    if proc_alive "$pid" dockerd; then
      log "dockerd (pid $pid) already running but not answering yet; waiting for it"
    else
      log "removing stale /var/run/docker.pid ($pid)"
      rm -f /var/run/docker.pid
      pid=""
    fi
  fi
  if [ -z "$pid" ]; then
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    log "starting dockerd --bridge=none --iptables=false (log: $DOCKERD_LOG)"
    printf '\n==== %s ensure-docker.sh starting dockerd ====\n' "$(date -u +%FT%TZ)" >>"$DOCKERD_LOG"
    # Own session (setsid) so that it outlives the calling shell / CI step's process group.
    # shellcheck disable=SC2086
    setsid -f dockerd --bridge=none --iptables=false ${DOCKERD_EXTRA_ARGS:-} \
      >>"$DOCKERD_LOG" 2>&1 </dev/null
  fi
  local deadline=$((SECONDS + DOCKERD_START_TIMEOUT))
  until engine_up; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "dockerd did not answer within ${DOCKERD_START_TIMEOUT}s; last lines of $DOCKERD_LOG:"
      tail -n 40 "$DOCKERD_LOG" >&2 || true
      die "Docker engine is not available"
    fi
    sleep 0.5
  done
}

main() {
  local t0=$SECONDS
  if engine_up; then
    log "engine already up"
  else
    [ "$(id -u)" = 0 ] || die "must run as root to install/start the engine"
    if ! command -v dockerd >/dev/null 2>&1; then
      apt_install docker.io
    fi
    if ! command -v docker >/dev/null 2>&1; then
      die "no docker CLI after installing docker.io"
    fi
    if engine_up; then
      log "engine came up with the package's own init script"
    else
      start_dockerd
    fi
  fi

  if [ "${SKIP_COMPOSE:-0}" != 1 ] && ! compose_ok; then
    [ "$(id -u)" = 0 ] || die "must run as root to install the compose plugin"
    command -v dpkg-deb >/dev/null || die "dpkg-deb missing"
    install_compose_plugin
    compose_ok || die "'docker compose version' still fails after installing the plugin"
  fi

  # The CLI on the machine (/usr/local/bin/docker, 28.x, API 1.50) negotiates down to the
  # Debian engine's API (1.41); check that it really does.
  local cli srv
  cli=$(docker version --format '{{.Client.Version}} (API {{.Client.APIVersion}})' 2>/dev/null) \
    || die "'docker version' fails against the engine (API mismatch? try DOCKER_API_VERSION=1.41 or /usr/bin/docker)"
  srv=$(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null || echo '?')
  log "ready in $((SECONDS - t0))s: client $cli, engine $srv, compose $( (docker compose version --short 2>/dev/null) || echo none)"
}

main "$@"
