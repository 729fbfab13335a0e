# vsm-service image: the vsm.v1 gRPC service (emulator backend by default).
#
#   docker build --network host -t vsm-service:local -f deploy/service.Dockerfile .
#   docker run --rm --network host --init vsm-service:local                 # 127.0.0.1:50051
#   docker run --rm --network host --init -e VSM_LISTEN=127.0.0.1:50099 vsm-service:local
#   docker run ... vsm-service:local --backend agent --agent 127.0.0.1:50061 # flags go to main.js
#
# Host networking only (see deploy/README.md): the build needs `--network host` for npm, and
# the container listens on loopback. Set the address with VSM_LISTEN (not --listen) so that the
# HEALTHCHECK probes the same address.
#
# The `manifests`, `deps` and `build` stages are kept byte-for-byte identical in deploy/agent.Dockerfile
# (checked by test/integration/deploy-files.test.ts) so the two images share their build cache.

# ---- manifests: only the package.json files, so `npm install` is cached until one changes ----
FROM node:20-bookworm-slim AS manifests
# (label: lets deploy/scripts/ci-integration.sh drop stale build-cache images of these stages)
LABEL org.vsm.stage=manifests
WORKDIR /src
COPY package.json package-lock.json ./
COPY services services
COPY api api
COPY clients clients
RUN node -e ' \
  const fs = require("fs"), path = require("path"); \
  const root = require("./package.json"); \
  for (const f of ["package.json", "package-lock.json", ...root.workspaces.map((w) => path.join(w, "package.json"))]) { \
    fs.mkdirSync(path.dirname(path.join("/manifests", f)), { recursive: true }); \
    fs.copyFileSync(f, path.join("/manifests", f)); \
  }'

# ---- deps: production dependencies only (cached until a manifest changes) --------------------
FROM node:20-bookworm-slim AS deps
LABEL org.vsm.stage=deps
WORKDIR /app
ENV npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
COPY --from=manifests /manifests/ ./
# `npm install` rather than `npm ci`: the lock file written by the machines' npm 11 lacks other
# platforms' optional packages and `npm ci` rejects it (same as scripts/ensure-setup.js).
# Versions still come from package-lock.json. Workspace packages become symlinks
# node_modules/@vsm/* -> api, services/*, clients/* (filled with dist/ from the build stage).
RUN npm install --omit=dev --no-audit --no-fund && npm cache clean --force 2>/dev/null

# ---- build: all dependencies, generate, compile -----------------------------------------------
FROM node:20-bookworm-slim AS build
LABEL org.vsm.stage=build
WORKDIR /app
ENV npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
COPY --from=manifests /manifests/ ./
RUN npm install --no-audit --no-fund
COPY tsconfig.json tsconfig.base.json buf.yaml buf.gen.yaml ./
COPY proto proto
COPY scripts scripts
COPY services services
COPY api api
COPY clients clients
# Only what the images run: vsm-service and kvm-agent (and what they reference: core, client).
# Then each workspace's dist/ (without declaration files) into /out, and proto/ (the service
# loads the .proto sources at start for reflection: services/vsm-service/src/server.ts PROTO_DIR).
# @bufbuild/protobuf: the generated code (api/src/gen) requires it at run time; @vsm/api declares
# it now, so the copy from the full tree (lock-pinned version, same files) is only belt and braces.
RUN node scripts/generate.js \
 && node_modules/.bin/tsc -b services/vsm-service services/kvm-agent \
 && for ws in $(node -p 'require("./package.json").workspaces.join(" ")'); do \
      if [ -d "$ws/dist" ]; then mkdir -p "/out/$ws" && cp -a "$ws/dist" "/out/$ws/"; fi; \
    done \
 && find /out -name '*.d.ts' -type f -delete \
 && cp -a proto /out/proto \
 && mkdir -p /out/node_modules/@bufbuild \
 && cp -a node_modules/@bufbuild/protobuf /out/node_modules/@bufbuild/protobuf

# ---- runtime ------------------------------------------------------------------------------
FROM node:20-bookworm-slim
LABEL org.opencontainers.image.title="vsm-service" \
      org.opencontainers.image.description="vsm.v1 gRPC control plane for Hyper-V style VSM (emulator / KVM agent backends)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production \
    VSM_LISTEN=127.0.0.1:50051 \
    VSM_BACKEND=emulator
WORKDIR /app
# Owned by root, read-only for the runtime user.
COPY --from=deps /app/ /app/
COPY --from=build /out/ /app/
COPY deploy/healthcheck.js deploy/verify-runtime.js /app/deploy/
# Fail the build, not the first start, if a runtime module is missing.
RUN node /app/deploy/verify-runtime.js /app
# State directory for a volume (the service has no --state-dir flag yet; the volume is mounted
# so that one can be added without changing deployments). Writable by `node` only.
RUN mkdir -p /var/lib/vsm && chown node:node /var/lib/vsm && chmod 0750 /var/lib/vsm
USER node
EXPOSE 50051
# Engine API 1.41 here: no --start-interval. Compose and k8s set their own probes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
  CMD ["node", "/app/deploy/healthcheck.js"]
# main.js handles SIGTERM itself (health NOT_SERVING, drain); still run with --init / init: true
# so that PID 1 reaps and forwards signals.
ENTRYPOINT ["node", "/app/services/vsm-service/dist/main.js"]
CMD []
