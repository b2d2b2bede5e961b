#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v kubectl >/dev/null 2>&1 || {
  echo "kubectl is missing: the end-to-end tests need kubectl v1.32 on PATH" >&2
  echo "install it from https://kubernetes.io/docs/tasks/tools/ (it is not in Debian's archive)" >&2
  exit 1
}
# dockerd also runs a second engine in a network namespace for the instances pool test.
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
command -v busybox >/dev/null 2>&1 || need_apt+=(busybox-static)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need_apt+=(util-linux)
# The Service proxy writes its rules with nft.
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
# The etcd store's tests run a real etcd; etcd-client's build compiles etcd's protobufs.
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if ! docker info >/dev/null 2>&1 && command -v dockerd >/dev/null 2>&1; then
  (dockerd >/tmp/berth-dockerd.log 2>&1 &)
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest

# Azure's Python SDK, unchanged, for the instances tests, the Prometheus client's parser
# for the /metrics tests, and the official Kubernetes Python client, run inside a pod with
# its in-cluster configuration: a venv under target/.
venv=target/aci-venv
if ! "$venv/bin/python" -c "import azure.mgmt.containerinstance, prometheus_client, kubernetes" >/dev/null 2>&1; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q azure-mgmt-containerinstance prometheus-client kubernetes
fi

cargo nextest run --workspace --no-fail-fast "$@"
