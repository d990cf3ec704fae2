# The article-server image for users' own CI (docker build -f images/article-server.Dockerfile .).
# Equivalent to what `make images` builds here without a daemon: the same root filesystem,
# assembled by images/rootfs.sh (binary, its glibc libraries, uid 65532), FROM scratch.
FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p article-server --bin article-server \
 && images/rootfs.sh app /rootfs target/release/article-server

FROM scratch
COPY --from=build /rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/article-server"]
