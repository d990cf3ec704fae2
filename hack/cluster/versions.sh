# Pinned versions of the local control plane. Sourced by the other scripts.
# Changing a version here rebuilds that component once; binaries are cached by version.
KUBERNETES_VERSION=v1.36.3
ETCD_VERSION=v3.6.14
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.21.4
# The resource metrics API (metrics.k8s.io) behind the HorizontalPodAutoscaler; v0.9 is built
# against the Kubernetes 0.36 libraries.
METRICS_SERVER_VERSION=v0.9.0
# Cluster DNS of the real node (REAL_NODE=1 only).
COREDNS_VERSION=v1.15.0
# The S3-compatible server of the backup tests (`rclone serve s3`, real node(s) only, s3.sh).
# Debian's rclone (1.60) predates `serve s3`.
RCLONE_VERSION=v1.76.0

CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/articlesite"
