# vsm-etcd image: etcd for fleet mode (#14) in docker-compose.yml's kvm profile, built here from
# Debian's etcd-server/etcd-client packages on the same locally built base image as the service and
# the agent (node:20-bookworm-slim, deploy/scripts/build-base-image.sh; nothing is pulled from an
# image registry, only Debian's package mirror is used, as by the base image itself).
#
#   docker build --network host -t vsm-etcd:local -f deploy/etcd.Dockerfile .
#   docker run --rm --network host --init --cap-drop ALL --security-opt no-new-privileges --read-only \
#     -v vsm-etcd:/var/lib/etcd vsm-etcd:local                          # 127.0.0.1:2379
#
# Single member, plaintext on loopback only (host networking; compose's services reach it on
# 127.0.0.1). A multi-host fleet needs a real etcd cluster (TLS, 3 members: deploy/k8s/etcd.yaml).
# Runs as Debian's `etcd` user; its only writable place is the data volume (/var/lib/etcd).
FROM node:20-bookworm-slim
LABEL org.opencontainers.image.title="vsm-etcd" \
      org.opencontainers.image.description="etcd (Debian's etcd-server) for vsm-service fleet mode" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends etcd-server etcd-client \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o etcd -g etcd -m 0700 /var/lib/etcd \
 && etcd --version && etcdctl version
ENV ETCD_NAME=vsm-etcd \
    ETCD_DATA_DIR=/var/lib/etcd \
    ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:2379 \
    ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379 \
    ETCD_LISTEN_PEER_URLS=http://127.0.0.1:2380 \
    ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:2380 \
    ETCD_INITIAL_CLUSTER=vsm-etcd=http://127.0.0.1:2380 \
    ETCDCTL_API=3 \
    ETCDCTL_ENDPOINTS=http://127.0.0.1:2379
USER etcd
VOLUME /var/lib/etcd
EXPOSE 2379
HEALTHCHECK --interval=5s --timeout=4s --start-period=10s --retries=3 \
  CMD ["etcdctl", "--command-timeout=3s", "endpoint", "health"]
ENTRYPOINT ["etcd"]
CMD []
