# shellcheck shell=sh
# Source this (`. deploy/scripts/docker-env.sh`) before running testcontainers-based tests
# against the engine started by ensure-docker.sh. Values already set are kept.
#
# - The reaper (ryuk) image cannot be pulled here: disable it.
# - This machine has /.dockerenv, so testcontainers believes it runs inside a container and
#   looks up the gateway of the `bridge` network, which does not exist (dockerd runs with
#   --bridge=none): it then fails with "Could not find a working container runtime strategy".
#   Containers use host networking, so the host is simply localhost.
export TESTCONTAINERS_RYUK_DISABLED="${TESTCONTAINERS_RYUK_DISABLED:-true}"
export TESTCONTAINERS_HOST_OVERRIDE="${TESTCONTAINERS_HOST_OVERRIDE:-localhost}"
