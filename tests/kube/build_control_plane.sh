#!/usr/bin/env bash
# Build a real Kubernetes control plane for the tests in tests/kube/: kube-apiserver,
# kube-controller-manager (the Job controller), kube-scheduler, etcd and kwok (fake GPU nodes).
#
# Why a wrapper module: k8s.io/kubernetes's own go.mod replaces every k8s.io/* staging module with
# a path inside its repository (./staging/src/k8s.io/...), and replace directives of a dependency
# are ignored, so `go install k8s.io/kubernetes/cmd/...@v1.37.2` cannot resolve them
# (kubernetes/kubernetes#79384). The wrapper requires k8s.io/kubernetes and replaces each staging
# module with its published release v0.<minor>.<patch>, the same code the staging tree held.
#
# The binaries go to ~/.cache/gpuslice-kube/<release>/bin (GPUSLICE_KUBE_CACHE overrides the
# root), outside the work tree, and are reused: a finished build leaves a stamp and a second run
# returns at once. Builds from the Go module proxy only.
#
# Last, Kueue's controller (sigs.k8s.io/kueue, its module has no replace directives, so `go install`
# builds it) and its CRDs go to ~/.cache/gpuslice-kube/kueue-<version>/ for tests/kube/test_kueue.py
# (Kueue mode). It is optional: when it fails the control plane stands and that test is skipped;
# GPUSLICE_SKIP_KUEUE_BUILD=1 leaves it out.
set -euo pipefail

KUBE_VERSION="${GPUSLICE_KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${GPUSLICE_ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${GPUSLICE_KWOK_VERSION:-v0.8.0}"
CACHE_ROOT="${GPUSLICE_KUBE_CACHE:-$HOME/.cache/gpuslice-kube}"
DEST="$CACHE_ROOT/$KUBE_VERSION"
BIN="$DEST/bin"
STAMP="$DEST/.built-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
KUEUE_VERSION="${GPUSLICE_KUEUE_VERSION:-v0.17.0}"
KUEUE_DEST="$CACHE_ROOT/kueue-$KUEUE_VERSION"

build_kueue() {
    if [ "${GPUSLICE_SKIP_KUEUE_BUILD:-}" = 1 ] || [ -f "$KUEUE_DEST/.built" ]; then
        return 0
    fi
    local started kueue_dir
    started=$(date +%s)
    mkdir -p "$KUEUE_DEST/bin" "$KUEUE_DEST/crd"
    echo "[$(date -u +%T)] building kueue $KUEUE_VERSION"
    GOBIN="$KUEUE_DEST/bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
    kueue_dir=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    install -m 0644 "$kueue_dir"/config/components/crd/bases/*.yaml "$KUEUE_DEST/crd/"
    touch "$KUEUE_DEST/.built"
    echo "[$(date -u +%T)] kueue $KUEUE_VERSION built in $KUEUE_DEST in $(( $(date +%s) - started )) s"
}

kueue_or_warn() {
    if ! (build_kueue); then
        echo "warning: Kueue $KUEUE_VERSION was not built; tests/kube/test_kueue.py will be skipped" >&2
    fi
}

if [ -f "$STAMP" ]; then
    echo "control plane $KUBE_VERSION already built in $BIN"
    command -v go >/dev/null && kueue_or_warn
    exit 0
fi
command -v go >/dev/null || { echo "go is not on PATH: cannot build the control plane" >&2; exit 1; }
mkdir -p "$BIN" "$DEST/src"
export GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0
staging_minor="v0.${KUBE_VERSION#v1.}"
started=$(date +%s)

# --- kube-apiserver, kube-controller-manager, kube-scheduler -------------------------------
kube_src="$DEST/src/kubernetes"
mkdir -p "$kube_src"
go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" >"$kube_src/download.json"
kube_dir=$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' "$kube_src/download.json")
{
    echo "module gpuslice.local/kube-control-plane"
    echo
    echo "go $(sed -n 's/^go //p' "$kube_dir/go.mod")"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    # every staging module the release replaces locally, pinned to its published release instead
    sed -n 's|^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*$|\t\1 => \1 '"$staging_minor"'|p' "$kube_dir/go.mod"
    echo ")"
    echo
    echo "tool ("
    echo "	k8s.io/kubernetes/cmd/kube-apiserver"
    echo "	k8s.io/kubernetes/cmd/kube-controller-manager"
    echo "	k8s.io/kubernetes/cmd/kube-scheduler"
    echo ")"
} >"$kube_src/go.mod"
minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
(
    cd "$kube_src"
    echo "[$(date -u +%T)] resolving k8s.io/kubernetes $KUBE_VERSION"
    go mod tidy
    echo "[$(date -u +%T)] building kube-apiserver kube-controller-manager kube-scheduler"
    go build -trimpath -ldflags "$ldflags" -o "$BIN/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler
)

# --- etcd: its server module's etcdmain, in a module of its own (its dependencies differ) ---
etcd_src="$DEST/src/etcd"
mkdir -p "$etcd_src"
cat >"$etcd_src/main.go" <<'GO'
// etcd, as the etcd repository's own main package starts it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
(
    cd "$etcd_src"
    [ -f go.mod ] || go mod init gpuslice.local/etcd >/dev/null 2>&1
    echo "[$(date -u +%T)] building etcd $ETCD_VERSION"
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go mod tidy
    go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" .
)

# --- kwok: fake nodes with the capacity we give them, pods moved through their phases --------
echo "[$(date -u +%T)] building kwok $KWOK_VERSION"
GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"

touch "$STAMP"
echo "[$(date -u +%T)] control plane $KUBE_VERSION built in $BIN in $(( $(date +%s) - started )) s"
ls -la "$BIN"
kueue_or_warn
