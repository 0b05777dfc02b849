#!/usr/bin/env bash
# `make e2e-cluster`: the cluster suite. On the cluster that KUBECONFIG (or
# ~/.kube/config) points at, it installs the chart (with uprobes enabled),
# applies examples/probeset.yaml and examples/slo.yaml in a temporary
# namespace, waits until agents report and the SLO has a state; then runs a
# podSelector probe on a small Deployment and, with a ClusterProbeSet (the
# whole node is a cluster administrator's), a uprobe on the nodes' libc,
# churns the Deployment's pods and checks the probes keep counting; prints
# what `kubectl get probesets` and `kubectl get slo` show, and uninstalls
# everything on exit. docs/install.md walks through it on a kind cluster.
#
# Environment:
#   IMAGE_PREFIX  image repository prefix (ringwarden): <prefix>/operator, <prefix>/agent
#   IMAGE_TAG     image tag (v + the workspace version)
#   PULL_POLICY   imagePullPolicy of both images (IfNotPresent)
#   TIMEOUT       seconds to wait for reports and an SLO state (300)
#   KEEP=1        leave everything installed, for a look around
set -euo pipefail

cd "$(dirname "$0")/.."

say() { echo "e2e-cluster: $*"; }
fail() {
    echo "e2e-cluster: $*" >&2
    exit 1
}

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE_PREFIX=${IMAGE_PREFIX:-ringwarden}
IMAGE_TAG=${IMAGE_TAG:-v$version}
PULL_POLICY=${PULL_POLICY:-IfNotPresent}
TIMEOUT=${TIMEOUT:-300}
KEEP=${KEEP:-0}
RELEASE=ringwarden
SUFFIX=$(date +%s)
NAMESPACE=ringwarden-e2e-$SUFFIX
PROBES_NAMESPACE=ringwarden-e2e-probes-$SUFFIX

for tool in kubectl helm; do
    command -v "$tool" >/dev/null || fail "$tool is not on PATH; install it (see docs/install.md)"
done

kubeconfig=${KUBECONFIG:-$HOME/.kube/config}
context=$(kubectl config current-context 2>/dev/null || echo none)
if ! answer=$(kubectl version --request-timeout=10s 2>&1); then
    fail "no cluster answers (kubeconfig $kubeconfig, context $context):
$answer
Point KUBECONFIG at a running cluster; for a local one: kind create cluster (docs/install.md)."
fi
say "cluster: context $context (kubeconfig $kubeconfig)"

# The chart installs cluster-wide objects (CRDs, ClusterRoles): one
# ringwarden per cluster.
if kubectl get crd probesets.ringwarden.dev >/dev/null 2>&1; then
    fail "ringwarden's CRDs are already installed in this cluster. Run the suite on a cluster of
its own (kind create cluster), or remove the other installation first."
fi

installed=0
cleanup() {
    status=$?
    if [ "$status" != 0 ] && [ "$installed" = 1 ]; then
        say "failed; what the cluster shows:"
        kubectl get pods,daemonsets -n "$NAMESPACE" -o wide || true
        kubectl get probesets,slo -n "$PROBES_NAMESPACE" -o yaml || true
        kubectl get clusterprobesets -l "ringwarden.dev/e2e=$PROBES_NAMESPACE" -o yaml || true
        kubectl logs -n "$NAMESPACE" deployment/ringwarden-operator --tail=50 || true
        kubectl logs -n "$NAMESPACE" daemonset/ringwarden-agent --tail=50 || true
    fi
    if [ "$KEEP" = 1 ]; then
        say "KEEP=1: left installed. Remove with:"
        echo "  helm uninstall $RELEASE -n $NAMESPACE; kubectl delete namespace $NAMESPACE $PROBES_NAMESPACE; kubectl delete clusterprobesets -l ringwarden.dev/e2e=$PROBES_NAMESPACE"
        exit "$status"
    fi
    say "uninstalling"
    kubectl delete clusterprobesets -l "ringwarden.dev/e2e=$PROBES_NAMESPACE" --ignore-not-found >/dev/null 2>&1 || true
    kubectl delete namespace "$PROBES_NAMESPACE" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    helm uninstall "$RELEASE" -n "$NAMESPACE" >/dev/null 2>&1 || true
    kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "installing the chart in $NAMESPACE (images $IMAGE_PREFIX/{operator,agent}:$IMAGE_TAG)"
kubectl create namespace "$NAMESPACE" >/dev/null
installed=1
# Agent pods use hostPID, read-only host paths and added capabilities.
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=privileged >/dev/null
helm install "$RELEASE" charts/ringwarden -n "$NAMESPACE" \
    --set clusterName=e2e \
    --set crds.keep=false \
    --set operator.image.repository="$IMAGE_PREFIX/operator" \
    --set operator.image.tag="$IMAGE_TAG" \
    --set operator.image.pullPolicy="$PULL_POLICY" \
    --set agent.image.repository="$IMAGE_PREFIX/agent" \
    --set agent.image.tag="$IMAGE_TAG" \
    --set agent.image.pullPolicy="$PULL_POLICY" \
    --set agent.uprobes.enabled=true \
    --wait --timeout 5m

say "applying examples/probeset.yaml and examples/slo.yaml in $PROBES_NAMESPACE"
kubectl create namespace "$PROBES_NAMESPACE" >/dev/null
in_namespace() { sed "s/^\(  namespace:\) default$/\1 $PROBES_NAMESPACE/" "$1"; }
{ in_namespace examples/probeset.yaml; echo ---; in_namespace examples/slo.yaml; } | kubectl apply -f -

field() { kubectl get "$1" -n "$PROBES_NAMESPACE" -o "jsonpath=$2" 2>/dev/null || true; }

say "waiting up to ${TIMEOUT}s for agents to report and for the SLO's state"
deadline=$((SECONDS + TIMEOUT))
while :; do
    ready=$(field probeset/node-syscalls '{.status.ready}')
    state=$(field slo/node-read-latency '{.status.state}')
    # `ready` is "<nodes running every probe>/<nodes selected>".
    if [[ "$ready" =~ ^([0-9]+)/([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -ge 1 ] && [ -n "$state" ]; then
        break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        fail "after ${TIMEOUT}s: ProbeSet ready=${ready:-<none>}, SLO state=${state:-<none>}"
    fi
    sleep 5
done

kubectl get probesets -n "$PROBES_NAMESPACE"
echo
kubectl get slo -n "$PROBES_NAMESPACE"
echo
kubectl get daemonset -n "$NAMESPACE"
degraded=$(field probeset/node-syscalls '{.status.conditions[?(@.type=="Degraded")].status}')
[ "$degraded" != True ] \
    || fail "the ProbeSet is Degraded: $(field probeset/node-syscalls '{.status.conditions[?(@.type=="Degraded")].message}')"
say "ok: $ready nodes run every probe, SLO state $state"

# A podSelector probe on pods that come and go, and a uprobe on the nodes'
# own libc (found through the agent's read-only host mount): a host binary,
# so a ClusterProbeSet's; a ProbeSet's uprobe resolves only inside its own
# pods' containers.
arch=$(kubectl get nodes -o 'jsonpath={.items[0].status.nodeInfo.architecture}')
case "$arch" in
amd64) libc=/usr/lib/x86_64-linux-gnu/libc.so.6 ;;
arm64) libc=/usr/lib/aarch64-linux-gnu/libc.so.6 ;;
*) fail "no libc path known for node architecture $arch" ;;
esac
say "a podSelector probe on a Deployment, and a uprobe on $libc"
kubectl apply -n "$PROBES_NAMESPACE" -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: churn
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/name: churn}
  template:
    metadata:
      labels: {app.kubernetes.io/name: churn}
    spec:
      containers:
        - name: loop
          image: busybox:1.36
          command: [sh, -c, "while :; do cat /etc/hostname >/dev/null; sleep 0.05; done"]
---
apiVersion: ringwarden.dev/v1alpha1
kind: ProbeSet
metadata:
  name: churn
spec:
  podSelector:
    matchLabels: {app.kubernetes.io/name: churn}
  reportInterval: 5s
  probes:
    - {name: sys, kind: syscalls}
---
apiVersion: ringwarden.dev/v1alpha1
kind: ClusterProbeSet
metadata:
  name: node-libc-$PROBES_NAMESPACE
  labels: {ringwarden.dev/e2e: $PROBES_NAMESPACE}
spec:
  reportInterval: 5s
  probes:
    - name: open
      kind: uprobe
      uprobe: {binary: $libc, symbol: open64}
YAML
kubectl rollout status -n "$PROBES_NAMESPACE" deployment/churn --timeout=120s

# Waits until ProbeSet (or clusterprobeset/<name>) $1 runs on at least one
# node and counts events.
counting() {
    local name=$1 deadline=$((SECONDS + TIMEOUT)) ready rate object
    object=$name
    [[ "$object" == */* ]] || object="probeset/$name"
    while :; do
        ready=$(field "$object" '{.status.ready}')
        rate=$(field "$object" '{.status.eventsPerSecond}')
        if [[ "$ready" =~ ^([1-9][0-9]*)/ ]] && [ -n "$rate" ] && [ "${rate%%.*}" != 0 ]; then
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "after ${TIMEOUT}s $object: ready=${ready:-<none>} events/s=${rate:-<none>}; $(field "$object" '{.status.conditions}')"
        fi
        sleep 5
    done
}
counting churn
counting "clusterprobeset/node-libc-$PROBES_NAMESPACE"

say "churning the Deployment's pods"
for replicas in 3 1 2 1; do
    kubectl scale -n "$PROBES_NAMESPACE" deployment/churn --replicas="$replicas" >/dev/null
    kubectl rollout status -n "$PROBES_NAMESPACE" deployment/churn --timeout=120s >/dev/null
done
sleep 15
counting churn
for object in probeset/churn "clusterprobeset/node-libc-$PROBES_NAMESPACE"; do
    degraded=$(field "$object" '{.status.conditions[?(@.type=="Degraded")].status}')
    [ "$degraded" != True ] \
        || fail "$object is Degraded: $(field "$object" '{.status.conditions[?(@.type=="Degraded")].message}')"
done
kubectl get probesets -n "$PROBES_NAMESPACE"
kubectl get clusterprobesets -l "ringwarden.dev/e2e=$PROBES_NAMESPACE"
say "ok: the podSelector probe counted through pod churn, the uprobe counts on the nodes' libc"
