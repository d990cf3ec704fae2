# The PostgreSQL image with Patroni for users' own CI (docker build -f images/postgresql.Dockerfile .).
# Equivalent to what `make images` builds here without a daemon (images/postgresql-rootfs.sh:
# mmdebstrap minbase): PostgreSQL 15 and pgBackRest from Debian's packages, Patroni from the
# pinned requirements in the venv /opt/patroni, the same trimming (docs, man pages, locales,
# the JIT and LLVM, apt lists, perl after installation), uid 999, the same entry point.
FROM debian:bookworm-slim
# What dpkg leaves out, as in images/postgresql-rootfs.sh (bookworm-slim already drops docs,
# man pages and locales).
RUN printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
      'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' \
      'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/i18n/*' \
      'path-exclude=/usr/share/lintian/*' 'path-exclude=/usr/lib/postgresql/*/lib/llvmjit*' \
      'path-exclude=/usr/lib/postgresql/*/lib/bitcode/*' 'path-exclude=/usr/lib/*/libLLVM-*' \
      'path-exclude=/usr/lib/*/libz3.so*' >/etc/dpkg/dpkg.cfg.d/articlesite-postgresql \
 && groupadd --system --gid 999 postgres \
 && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --no-create-home \
      --shell /usr/sbin/nologin postgres
COPY images/postgresql-requirements.txt /tmp/requirements.txt
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 pgbackrest python3 python3-venv \
 && python3 -m venv /opt/patroni \
 && /opt/patroni/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements.txt \
 && /opt/patroni/bin/pip check \
 && /opt/patroni/bin/pip uninstall --yes pip setuptools \
 && dpkg --purge python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl \
 && dpkg --purge --force-depends perl perl-modules-5.36 libperl5.36 \
 && rm -rf /usr/share/postgresql/*/man /etc/postgresql/* /var/lib/postgresql/* \
      /var/lib/apt/lists/* /var/cache/apt/* /var/log/* /usr/share/python-wheels /tmp/requirements.txt \
 && ln -sfn 15 /usr/lib/postgresql/current
COPY images/ /images/
RUN /images/postgresql-rootfs.sh --finish / && rm -rf /images
ENV PATH=/opt/patroni/bin:/usr/lib/postgresql/current/bin:/usr/local/bin:/usr/bin:/bin \
    PGDATA=/var/lib/postgresql/data TZ=UTC LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
USER 999:999
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/postgresql-entrypoint"]
