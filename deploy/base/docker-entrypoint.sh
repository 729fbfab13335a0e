#!/bin/sh
# Entrypoint of the locally built node base image (deploy/scripts/build-base-image.sh).
# Same contract as the official node images: when the first argument is an option
# (`-e ...`) or not a command on PATH (`app.js`), run it with node; otherwise exec it as is.
set -e
if [ "$#" -eq 0 ]; then
  set -- node
elif [ "${1#-}" != "$1" ] || ! command -v -- "$1" >/dev/null 2>&1 \
  || { [ -f "$1" ] && [ ! -x "$1" ]; }; then
  set -- node "$@"
fi
exec "$@"
