#!/usr/bin/env bash
# Builds the real servers the integration tests and the demo run against, once per version, from
# their official Go modules through the Go module proxy, and caches them outside the repository:
#
#   $DRIFTLESS_CACHE/testenv/<name>-<version>/bin/<binary>
#
# DRIFTLESS_CACHE defaults to ~/.cache/driftless. A component is rebuilt only when its directory
# lacks the `.built` stamp, so a warm cache makes this a few stat calls.
#
# Usage: tests/env/build.sh [component...]   (default: all)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"

cache=${DRIFTLESS_CACHE:-$HOME/.cache/driftless}/testenv
mkdir -p "$cache"

log() { printf '[build] %s\n' "$*" >&2; }

# Runs "$@" in a fresh module directory and stamps the result; removes a half-built one on failure.
stamp_ok() { touch "$1/.built"; }

build_kubernetes() {
    local dir=$cache/kubernetes-$K8S_VERSION
    [ -f "$dir/.built" ] && return 0
    log "kubernetes $K8S_VERSION: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (cold: ~15 min on 2 cores)"
    rm -rf "$dir" && mkdir -p "$dir/mod" "$dir/bin"
    local minor=${K8S_VERSION#v1.}
    minor=${minor%%.*}
    local staging_version=v0.${K8S_VERSION#v1.}
    (
        cd "$dir/mod"
        go mod init driftless.dev/testenv/kubernetes >/dev/null 2>&1
        # k8s.io/kubernetes requires its staging modules at v0.0.0 and redirects them to ./staging
        # with replace directives, which are ignored when it is a dependency: pin each to its
        # published release instead (all of them are listed in the kubernetes module's go.mod).
        local modfile
        modfile=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
        local staging
        for staging in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile"); do
            if go mod download "$staging@$staging_version" >/dev/null 2>&1; then
                go mod edit -replace "$staging=$staging@$staging_version"
            else
                log "  (no $staging@$staging_version published; left out)"
            fi
        done
        go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
        go mod tidy >/dev/null 2>&1 || true
        local pkgs=(cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubectl)
        local p
        for p in "${pkgs[@]}"; do
            go get "k8s.io/kubernetes/$p@$K8S_VERSION" >/dev/null
        done
        local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
            -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
            -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
            -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
        for p in "${pkgs[@]}"; do
            log "  go build $p"
            go build -ldflags "$ldflags" -o "$dir/bin/" "k8s.io/kubernetes/$p"
        done
    )
    stamp_ok "$dir"
}

# A single Go main package from a module, built in a throwaway module of our own so that the
# upstream module's replace directives (etcd has some) do not stop `go install`.
build_go_tool() {
    local name=$1 version=$2 module=$3 package=$4 binary=$5 ldflags=${6:-}
    local dir=$cache/$name-$version
    [ -f "$dir/.built" ] && return 0
    log "$name $version: $package"
    rm -rf "$dir" && mkdir -p "$dir/mod" "$dir/bin"
    (
        cd "$dir/mod"
        go mod init "driftless.dev/testenv/$name" >/dev/null 2>&1
        go get "$module@$version" >/dev/null
        go get "$package@$version" >/dev/null
        go build -ldflags "-s -w $ldflags" -o "$dir/bin/$binary" "$package"
    )
    stamp_ok "$dir"
}

build_etcd() {
    build_go_tool etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 etcd
}

build_kwok() {
    build_go_tool kwok "$KWOK_VERSION" sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok kwok
    # The stage configurations ship in the module; copy the ones the environment uses beside the
    # binary so `up` does not depend on the module cache.
    local dir=$cache/kwok-$KWOK_VERSION src
    src=$(cd "$dir/mod" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
    mkdir -p "$dir/stages"
    cp "$src/kustomize/stage/node/fast/node-initialize.yaml" "$dir/stages/"
    cp "$src/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" "$dir/stages/"
    local f
    for f in "$src"/kustomize/stage/pod/fast/*.yaml; do
        [ "$(basename "$f")" = kustomization.yaml ] || cp "$f" "$dir/stages/"
    done
    chmod -R u+w "$dir/stages"
}

build_registry() {
    build_go_tool registry "$REGISTRY_VERSION" github.com/distribution/distribution/v3 \
        github.com/distribution/distribution/v3/cmd/registry registry \
        "-X github.com/distribution/distribution/v3/version.version=$REGISTRY_VERSION"
}

build_minio() {
    build_go_tool minio "$MINIO_VERSION" github.com/minio/minio github.com/minio/minio minio
}

build_helm() {
    build_go_tool helm "$HELM_VERSION" helm.sh/helm/v4 helm.sh/helm/v4/cmd/helm helm \
        "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
}

build_sops() {
    build_go_tool sops "$SOPS_VERSION" github.com/getsops/sops/v3 github.com/getsops/sops/v3/cmd/sops sops \
        "-X github.com/getsops/sops/v3/version.Version=${SOPS_VERSION#v}"
}

# Gitea has replace directives in its go.mod, so it is built inside its own module (a writable copy
# of the module source) where they apply. SQLite needs cgo and the sqlite tags. No `bindata` tag:
# that would need the frontend build (npm); without it Gitea reads templates/, options/ and public/
# from STATIC_ROOT_PATH, which `testenv up` points at the copy kept here. The API, git over http and
# webhooks need no frontend assets.
build_gitea() {
    local dir=$cache/gitea-$GITEA_VERSION
    [ -f "$dir/.built" ] && return 0
    log "gitea $GITEA_VERSION: gitea (cgo, sqlite; cold: ~20 min on 2 cores)"
    rm -rf "$dir" && mkdir -p "$dir/bin"
    local src
    src=$(go mod download -json "code.gitea.io/gitea@$GITEA_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    [ -n "$src" ] || { log "gitea: module download failed"; return 1; }
    cp -r "$src" "$dir/src" && chmod -R u+w "$dir/src"
    (
        cd "$dir/src"
        CGO_ENABLED=1 go build -trimpath -tags 'sqlite sqlite_unlock_notify' \
            -ldflags "-s -w -X main.Version=${GITEA_VERSION#v}" -o "$dir/bin/gitea" .
    )
    # Only the run-time files stay (templates, locales, public); the Go sources go.
    find "$dir/src" -mindepth 1 -maxdepth 1 ! -name templates ! -name options ! -name public \
        -exec rm -rf {} +
    stamp_ok "$dir"
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(etcd kwok registry minio helm sops gitea kubernetes)
for c in "${components[@]}"; do
    "build_$c"
done
log "all built under $cache"
