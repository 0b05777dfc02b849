# syntax=docker/dockerfile:1
# ringwarden-agent, with the eBPF object embedded in the binary. The builder
# gets the eBPF toolchain (LLVM 22, bpf-linker, rust-src) from
# scripts/deps.sh, as any Debian 12 machine does; the runtime is distroless.
#   docker build -f images/agent.Dockerfile -t ringwarden/agent:v0.1.0 .
# (`make images` builds both images from the repository root.)

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# node-agent/build.rs builds the kernel programs with the toolchain named
# "stable" (aya-build); make it the default, so user space uses the same one
# and deps.sh adds rust-src to it.
RUN rustup toolchain install stable --profile minimal && rustup default stable
# deps.sh alone first, so the toolchain layer (bpf-linker takes minutes) is
# rebuilt only when deps.sh changes.
COPY scripts/deps.sh scripts/deps.sh
# deps.sh also installs test-only tools (helm, kubernetes-validate,
# kustomize, lua) and mounts tracefs and bpffs; an image build needs none of
# them and may not mount. Stand-ins answer its checks for this step only.
RUN set -eu; stubs=$(mktemp -d); \
    kv=$(sed -n 's/^KUBERNETES_VALIDATE_VERSION=//p' scripts/deps.sh); \
    kz=$(sed -n 's/^KUSTOMIZE_VERSION=//p' scripts/deps.sh); \
    printf '#!/bin/sh\necho v3.0.0+not-needed-for-builds\n' > "$stubs/helm"; \
    printf '#!/bin/sh\necho %s\n' "$kv" > "$stubs/kubernetes-validate"; \
    printf '#!/bin/sh\necho v%s\n' "$kz" > "$stubs/kustomize"; \
    printf '#!/bin/sh\nexit 0\n' > "$stubs/mountpoint"; \
    chmod +x "$stubs"/*; \
    PATH="$stubs:$PATH" scripts/deps.sh; \
    rm -rf "$stubs" /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,id=agent-registry \
    --mount=type=cache,target=/src/target,id=agent-target \
    PATH="/usr/lib/llvm-22/bin:$PATH" cargo build --release --locked -p ringwarden-node-agent \
 && cp target/release/ringwarden-agent /ringwarden-agent

# Root, because BPF and PERFMON count only in the initial user namespace; the
# operator's DaemonSet drops every other capability and is never privileged.
FROM gcr.io/distroless/cc-debian12
LABEL org.opencontainers.image.title="ringwarden-agent" \
      org.opencontainers.image.description="ringwarden's node agent: eBPF latency probes with exact loss accounting" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /ringwarden-agent /usr/local/bin/ringwarden-agent
ENTRYPOINT ["/usr/local/bin/ringwarden-agent"]
