# syntax=docker/dockerfile:1
# ringwarden-operator: a release build on Debian 12, run from a distroless
# image (glibc, CA certificates, nothing else) as a non-root user.
#   docker build -f images/operator.Dockerfile -t ringwarden/operator:v0.1.0 .
# (`make images` builds both images from the repository root.)

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ across builds; the binary is
# copied out because a cache mount does not outlive its RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ringwarden-operator \
 && cp target/release/ringwarden-operator /ringwarden-operator

# Debian 12 like the builder, so the binary finds the glibc it was linked with.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="ringwarden-operator" \
      org.opencontainers.image.description="ringwarden's operator: ProbeSets and SLOs to node-agent configuration" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /ringwarden-operator /usr/local/bin/ringwarden-operator
# The chart's restricted pod security context expects a numeric non-root user.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ringwarden-operator"]
