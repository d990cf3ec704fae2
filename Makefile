# The way in: `make demo` runs an ArticleSite on a local cluster, `make test` runs every test.
# Scripts live in hack/; this file only names them.
.PHONY: help deps build-cluster cluster-up cluster-down test e2e images demo crds bench

help:
	@echo "make demo          local cluster + operator + an example ArticleSite"
	@echo "make test          fmt, clippy and every test (starts and stops the local cluster)"
	@echo "make cluster-up    start the local control plane (6 simulated nodes, 3 zones)"
	@echo "make cluster-up REAL_NODE=1   ... plus one real node (containerd, kubelet, kube-proxy)"
	@echo "make cluster-up REAL_NODES=3  ... plus three real nodes in zones a-c (faults: hack/cluster/node-fault.sh)"
	@echo "make cluster-down  stop it and remove its state"
	@echo "make images        OCI images of the operator, article server, PostgreSQL, pause"
	@echo "make e2e           end-to-end tests on one real node, then on three with node failures"
	@echo "make crds          regenerate crds/ (and the chart's copy) from the Rust types"
	@echo "make bench         benchmarks: operator at 100 and 1,000 sites, article server under load"

deps:
	hack/deps.sh

build-cluster:
	hack/cluster/build.sh

cluster-up: deps
	hack/cluster/up.sh

cluster-down:
	hack/cluster/down.sh

test:
	hack/test.sh

images:
	hack/images.sh

e2e:
	hack/e2e.sh

demo: cluster-up
	hack/demo.sh

crds:
	cargo run --quiet --bin articlesite-operator -- crd > crds/articlesite.yaml
	cp crds/articlesite.yaml charts/articlesite-operator/files/articlesite.crd.yaml

bench:
	hack/bench/run.sh
