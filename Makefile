# The way in: `make demo` runs an ArticleSite on a local cluster, `make test` runs every test.
# Scripts live in hack/; this file only names them.
.PHONY: help deps build-cluster cluster-up cluster-down test demo crds bench

help:
	@echo "make demo          local cluster + operator + an example ArticleSite"
	@echo "make test          fmt, clippy and every test (starts and stops the local cluster)"
	@echo "make cluster-up    start the local control plane (6 simulated nodes, 3 zones)"
	@echo "make cluster-down  stop it and remove its state"
	@echo "make crds          regenerate crds/ from the Rust types"
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

demo: cluster-up
	hack/demo.sh

crds:
	cargo run --quiet --bin articlesite-operator -- crd > crds/articlesite.yaml

bench:
	hack/bench/run.sh
