# syntax=docker/dockerfile:1
# Container image of the gateway, for ECS or Kubernetes:
#   docker build -t cachetun --build-arg VERSION=$(git describe --tags --always) .
# Distroless static base (no shell, no package manager), runs as the
# distroless "nonroot" user (uid 65532).
#
# Mount /etc/cachetun with server.yaml, host_ed25519 and authorized_keys.
# The host key (and password files) must be owned by uid 65532 with mode
# 0600: keys that group or others can read are refused, as OpenSSH does. A
# Kubernetes Secret volume gives files to root (or to an fsGroup, adding
# group read), so copy it into an emptyDir in an init container
# (install -m 0600 -o 65532 ...) or mount it on ECS from a host path or EFS
# with that owner and mode. `cachetun server check` (the same image, command
# "server check --config /etc/cachetun/server.yaml") validates the files.
#
# Health: set `metrics: ":9464"` in server.yaml (the gateway warns that it is
# not loopback: only the kubelet, the load balancer and Prometheus should
# reach that port; restrict it with a NetworkPolicy or a security group) and
# probe the metrics listener:
#   livenessProbe:  httpGet {path: /healthz, port: 9464}   (the process is up)
#   readinessProbe: httpGet {path: /readyz,  port: 9464}   (listeners up, config
#                   loaded, every target has a reachable node; 503 otherwise)
# An NLB target group checks HTTP /readyz on 9464. The image has no shell or
# HTTP client for a HEALTHCHECK instruction; ECS container health checks need
# one, so use the load balancer's check there.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/cachetun ./cmd/cachetun

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/cachetun /usr/bin/cachetun
USER 65532:65532
# QUIC (UDP) and TLS (TCP) on 4433, SSH on 2222, metrics and probes on 9464.
EXPOSE 4433/udp 4433/tcp 2222/tcp 9464/tcp
# SIGTERM drains (limits.drain_timeout): give the container at least that
# long to stop (Kubernetes terminationGracePeriodSeconds, ECS stopTimeout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/cachetun"]
CMD ["server", "--config", "/etc/cachetun/server.yaml", "--log-format", "json"]
