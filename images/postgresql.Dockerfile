# The PostgreSQL image for users' own CI (docker build -f images/postgresql.Dockerfile .).
# Equivalent to what `make images` builds here without a daemon: PostgreSQL from Debian's
# packages, assembled by images/rootfs.sh (server, client tools, their libraries, /bin/sh,
# uid 999), FROM scratch, with the environment contract of the official image.
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/*
COPY images/ /images/
RUN /images/rootfs.sh postgresql /rootfs

FROM scratch
COPY --from=build /rootfs/ /
ENV PATH=/usr/lib/postgresql/current/bin:/usr/local/bin:/usr/bin:/bin \
    PGDATA=/var/lib/postgresql/data TZ=UTC LANG=C.UTF-8
USER 999:999
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgresql-entrypoint"]
