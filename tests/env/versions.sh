# Pinned versions of the real servers the test environment builds (sourced by build.sh and up.sh).
# Changing one rebuilds only that component into a new cache directory.
K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
REGISTRY_VERSION=v3.1.2
# MinIO publishes RELEASE.* tags that are not semver; the module proxy serves them as
# pseudo-versions. This one is the commit of the newest release the proxy had on 2026-11-21.
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
# Helm renders the chart stacks (`spec.helm`) in tests and the demo.
HELM_VERSION=v4.3.1
# sops produces the SOPS-encrypted fixtures of tests/sops.rs at test time (age recipients).
SOPS_VERSION=v3.13.3
# Gitea is the forge of the notify tests (webhooks it delivers, commit statuses read back); its
# go.mod (go 1.26.4) accepts the Go this environment has.
GITEA_VERSION=v1.27.3
