#!/usr/bin/env bash
# What CI runs for the containers: engine, base image, both images (cached builds), the
# Compose build path, then the `integration` jest project (test/integration). Prints a timing
# table at the end. Fails (non-zero) when any step fails, including when no engine can be
# started: the integration tests never skip for a missing engine.
#
#   deploy/scripts/ci-integration.sh [JEST ARGS...]      # also: npm run test:integration
#
# Environment knobs:
#   VSM_SKIP_SETUP=1     do not run scripts/ensure-setup.js (CI's .ci/run already did)
#   COMPOSE_BUILD=0      skip the `docker compose build` check (Compose's BuildKit has its own
#                        cache: ~50 s on a fresh machine, seconds afterwards)
#   VSM_IMAGE_TAG        tag of the images the tests build and use (default local)
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[ci-integration] %s\n' "$*" >&2; }
T0=$SECONDS
declare -a TIMES=()
step() { # step NAME CMD...
  local name=$1 t=$SECONDS; shift
  log "== $name"
  "$@"
  TIMES+=("$(printf '%-44s %4ss' "$name" $((SECONDS - t)))")
}
report() {
  local rc=$?
  {
    echo "[ci-integration] timings:"
    for t in "${TIMES[@]}"; do echo "  $t"; done
    printf '  %-44s %4ss  (exit %s)\n' total $((SECONDS - T0)) "$rc"
  } >&2
}
trap report EXIT

TAG=${VSM_IMAGE_TAG:-local}
export VSM_IMAGE_TAG=$TAG

step "ensure-docker.sh" deploy/scripts/ensure-docker.sh
step "build-base-image.sh" deploy/scripts/build-base-image.sh
# shellcheck source=docker-env.sh
. deploy/scripts/docker-env.sh
if [ "${VSM_SKIP_SETUP:-0}" != 1 ]; then
  step "setup (ensure-setup.js)" node scripts/ensure-setup.js
fi

KEEP_IDS=$(mktemp)
build() { # build TAG DOCKERFILE
  local out
  out=$(mktemp)
  if ! docker build --network host -t "$1" -f "$2" . >"$out" 2>&1; then
    tail -n 60 "$out" >&2; rm -f "$out"; log "docker build of $1 failed"; return 1
  fi
  # Every image of this build (the layers of all stages): the build cache to keep.
  sed -n 's/^ ---> \([0-9a-f]\{12\}\)$/\1/p' "$out" >>"$KEEP_IDS"
  log "$1: $(grep -c -- '---> Using cache' "$out" || true) cached steps, $(docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}')"
  rm -f "$out"
}
step "docker build vsm-service:$TAG" build "vsm-service:$TAG" deploy/service.Dockerfile
step "docker build vsm-kvm-agent:$TAG" build "vsm-kvm-agent:$TAG" deploy/agent.Dockerfile

if [ "${COMPOSE_BUILD:-1}" = 1 ]; then
  # The compose file's own build path (BuildKit, `build: {network: host}`), under a throw-away
  # tag so that it does not replace the images the tests use.
  compose_build() {
    local out rc=0
    out=$(mktemp)
    VSM_IMAGE_TAG=compose-check docker compose --profile emulator --profile kvm build >"$out" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then tail -n 60 "$out" >&2; rm -f "$out"; log "docker compose build failed"; return "$rc"; fi
    rm -f "$out"
    docker image rm vsm-service:compose-check vsm-kvm-agent:compose-check >/dev/null
  }
  step "docker compose build (both profiles)" compose_build
fi

step "jest --selectProjects integration" npx --no-install jest "$@" --selectProjects integration

# Housekeeping, only for images of these Dockerfiles: a rebuild after a source change leaves
# the previous runtime image dangling, and the legacy builder keeps each stage's images (the
# build cache; the `build` stage is ~670 MB) for every tree it built. Drop dangling runtime
# images and the stage images that this run's builds did not use; keep the current cache.
for title in vsm-service vsm-kvm-agent; do
  docker image prune -f --filter "label=org.opencontainers.image.title=$title" >/dev/null 2>&1 || true
done
stale=$(docker images -q --no-trunc=false --filter dangling=true --filter label=org.vsm.stage | sort -u | grep -vxF -f "$KEEP_IDS" || true)
if [ -n "$stale" ]; then
  # shellcheck disable=SC2086
  docker image rm $stale >/dev/null 2>&1 || true
  log "removed $(echo "$stale" | wc -l) stale build-cache image(s)"
fi
rm -f "$KEEP_IDS"
log "images: $(docker image ls --format '{{.Repository}}:{{.Tag}}={{.Size}}' | grep -E '^(vsm-(service|kvm-agent)|node):' | tr '\n' ' ')"
