# vsm-kvm-agent image: the KVM host agent (services/kvm-agent, `vsm-kvm-agent`), which runs
# VSM partitions on /dev/kvm and serves the same vsm.v1 API (+ grpc.health.v1) on loopback TCP
# or a unix socket. vsm-service talks to it with `--backend agent --agent ADDR`.
#
#   docker build --network host -t vsm-kvm-agent:local -f deploy/agent.Dockerfile .
#   docker run --rm --network host --init --device /dev/kvm \
#     --user 0:0 --cap-drop ALL --security-opt no-new-privileges --read-only \
#     vsm-kvm-agent:local                                   # 127.0.0.1:50061
#
# What the agent needs from the host: `--device /dev/kvm`, nothing else.
# - No --privileged and no capability: KVM's ioctls (KVM_CREATE_VM, KVM_RUN, ...) check no
#   capability; guest memory is memfd/anonymous memory of the process. `--device` does two
#   things a bind mount (-v /dev/kvm:/dev/kvm) does not: it creates the device node in the
#   container AND adds the device-cgroup rule `c 10:232 rwm`; without that rule open() fails
#   with EPERM even as root (checked here). So all capabilities can be dropped (--cap-drop ALL).
# - Ordinary file permissions still apply to the node, which keeps the host's mode and owner:
#   * /dev/kvm `root:kvm 0660` (Debian/Ubuntu with udev): run as `node` and add the host's kvm
#     gid: `--group-add $(stat -c %g /dev/kvm)` (compose: VSM_AGENT_USER=1000:1000 and
#     VSM_KVM_GID; k8s: supplementalGroups).
#   * /dev/kvm `root:root 0600` (this project's machines, no udev): only uid 0 can open it, so
#     run the container as `--user 0:0` with `--cap-drop ALL`: root without capabilities
#     opens it by plain ownership and has no other power over the host.
#   The image's default user is `node` (non-root); compose and k8s pick the user explicitly.
# - ENTRYPOINT is services/kvm-agent/dist/main.js (`vsm-kvm-agent`: --listen HOST:PORT or
#   unix:///PATH, default 127.0.0.1:50061; grpc.health.v1 on the same port; SIGTERM frees every
#   VM and closes /dev/kvm). test/integration/agent-image.test.ts runs it exactly as above.
#
# The `manifests`, `deps` and `build` stages are kept byte-for-byte identical to deploy/service.Dockerfile
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
LABEL org.opencontainers.image.title="vsm-kvm-agent" \
      org.opencontainers.image.description="KVM host agent for vsm-service: VSM partitions on /dev/kvm behind vsm.v1" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production \
    VSM_LISTEN=127.0.0.1:50061
WORKDIR /app
COPY --from=deps /app/ /app/
COPY --from=build /out/ /app/
COPY deploy/healthcheck.js deploy/verify-runtime.js /app/deploy/
# Fail the build, not the first start, if a runtime module is missing.
RUN node /app/deploy/verify-runtime.js /app
USER node
EXPOSE 50061
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
  CMD ["node", "/app/deploy/healthcheck.js"]
ENTRYPOINT ["node", "/app/services/kvm-agent/dist/main.js"]
CMD []
