# The pod sandbox (pause) image for users' own CI (docker build -f images/pause.Dockerfile .).
# Equivalent to what `make images` builds here: images/pause/pause.go, static, FROM scratch.
FROM golang:1.24-bookworm AS build
COPY images/ /images/
RUN cd /images/pause && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o /pause pause.go \
 && /images/rootfs.sh pause /rootfs /pause

FROM scratch
COPY --from=build /rootfs/ /
USER 65535:65535
ENTRYPOINT ["/usr/local/bin/pause"]
