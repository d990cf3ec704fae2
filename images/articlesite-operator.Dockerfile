# The articlesite-operator image for users' own CI (docker build -f images/articlesite-operator.Dockerfile .).
# Equivalent to what `make images` builds here without a daemon: the same root filesystem,
# assembled by images/rootfs.sh (binary, its glibc libraries, uid 65532), FROM scratch.
FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p articlesite-operator --bin articlesite-operator \
 && images/rootfs.sh app /rootfs target/release/articlesite-operator

FROM scratch
COPY --from=build /rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/articlesite-operator"]
