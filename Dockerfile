# syntax=docker/dockerfile:1.7
#
# One image, three binaries: gong-ingest (default entrypoint), gong-enrich, gong-load. The
# Kubernetes Deployments pick theirs with `command:` (deploy/k8s/base/*.yaml).
#
#   DOCKER_BUILDKIT=1 docker build -t gong-pipeline:dev .
#   docker run --rm gong-pipeline:dev --help
#   docker run --rm --entrypoint gong-load gong-pipeline:dev --help
#
# Without a Docker daemon or registry access, scripts/image.sh builds the same image with podman,
# offline: a runtime base made from Debian packages (RUNTIME_BASE) and binaries built on the host
# (`--build-context builder=DIR` stands in for the builder stage, which then never runs).
#
# Build caching uses BuildKit cache mounts rather than a dummy-crate layer: the cargo registry,
# git checkouts and target/ persist between builds on the same builder, so a source change
# recompiles only the workspace crates. (Cache mounts are not part of the image; the binaries
# are copied out of target/ inside the same RUN.)

ARG RUST_VERSION=1
# distroless/cc: glibc, libgcc, libssl, CA certificates (rustls verifies Gong, S3 and Snowflake
# against the system roots), tzdata; no shell, no package manager. The :nonroot tag runs as 65532.
# scripts/image.sh passes localhost/gong-runtime-base:bookworm, made from the same Debian packages.
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot

# --------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder

WORKDIR /src

# The workspace: Cargo.toml, Cargo.lock and every member (crates/, benches/; .dockerignore keeps
# docs, deploy/ and target/ out). --locked: a Cargo.lock that does not match the manifests fails
# the build instead of silently resolving new versions.
COPY . .

# aws-lc-sys and zstd-sys build their C code with the image's gcc (no cmake needed on
# x86_64/aarch64 Linux). The `image` profile (Cargo.toml) is release without debug info.
# Behind a TLS-intercepting proxy, hand cargo the host's CA bundle as a build secret: it is mounted
# for this step only and never stored in a layer.
#   docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt .
RUN --mount=type=cache,id=cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=gong-target,target=/src/target,sharing=locked \
    --mount=type=secret,id=ca-bundle,required=false \
    if [ -s /run/secrets/ca-bundle ]; then export CARGO_HTTP_CAINFO=/run/secrets/ca-bundle; fi \
 && cargo build --profile image --locked \
        --bin gong-ingest --bin gong-enrich --bin gong-load \
 && mkdir -p /out \
 && cp target/image/gong-ingest target/image/gong-enrich target/image/gong-load /out/

# --------------------------------------------------------------------------------------------
FROM ${RUNTIME_BASE} AS runtime

LABEL org.opencontainers.image.title="gong-pipeline" \
      org.opencontainers.image.description="Gong webhooks -> NATS JetStream -> Gong API enrichment -> Parquet stage -> Snowflake" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder --chown=0:0 --chmod=0755 /out/gong-ingest /out/gong-enrich /out/gong-load /usr/local/bin/

# JSON logs by default (Kubernetes log collectors); every other setting comes from the
# environment (docs/operations.md, deploy/k8s/base/config.env).
ENV LOG_FORMAT=json

# 8080: gong-ingest webhooks (INGEST_ADDR). 9090: /healthz, /readyz, /metrics (ADMIN_ADDR).
EXPOSE 8080 9090

# nonroot (65532:65532), numeric so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532

ENTRYPOINT ["/usr/local/bin/gong-ingest"]
