#!/usr/bin/env bash
# The S3-compatible server of the backup tests: `rclone serve s3` (RCLONE_VERSION in versions.sh,
# built by build.sh with the local backend only) serving the directory $CLUSTER_DIR/s3/data over
# HTTPS, with a server certificate of the cluster's own CA. up.sh starts it with the real node(s),
# on the address where their pods reach this machine, and only there; down.sh stops it before
# their network goes. Tests stop and start it to simulate an outage: objects are plain files under
# the data directory, so they survive that (object metadata and tags, kept in memory, do not).
#
#   hack/cluster/s3.sh start    # idempotent; builds rclone when missing, prints the endpoint
#   hack/cluster/s3.sh stop     # stops exactly the pid of $CLUSTER_DIR/pids/s3.pid; keeps the data
#   hack/cluster/s3.sh status   # whether it runs and where; exit 0 when it runs, 3 when not
#
# Environment:
#   S3_ADDRESS  the one address it listens on. Default: that of its previous start (endpoint.env),
#               else the real node's gateway (rn_gateway: 10.88.0.1 with REAL_NODE=1, the host's
#               10.89.0.1 on the machines' network with REAL_NODES=N). An IPv4 address of this
#               machine; 0.0.0.0 is refused. (127.0.0.1 for a check without a cluster.)
#   S3_PORT     default 9443 (lib.sh); up.sh records it in $CLUSTER_DIR/ports.env.
#   S3_LOG_LEVEL  rclone's log level (start), default NOTICE; DEBUG logs every request.
#   CLUSTER_DIR default .cluster; its pki/ca.crt and ca.key must exist (make cluster-up, or
#               make_pki of pki.sh for a check without a cluster).
#
# Files, all under $CLUSTER_DIR (down.sh removes them with the cluster, keeping logs/):
#   s3/data/articlesite-backups/  the bucket: every directory of s3/data is a bucket
#   s3/credentials.env            S3_ACCESS_KEY_ID=, S3_SECRET_ACCESS_KEY= (mode 0600, made once)
#   s3/endpoint.env               S3_ENDPOINT=<addr>:<port>, S3_ADDRESS, S3_PORT, S3_URL, S3_CA_FILE,
#                                 S3_BUCKET=articlesite-backups, S3_REGION=us-east-1, S3_URI_STYLE=path
#   pki/s3-serving.crt, .key      the server certificate; SAN: the address as IP and as DNS name
#                                 (pgBackRest 2.45 matches the host only against DNS names)
#   logs/s3.log, pids/s3.pid
#
# pgBackRest against it (README.md, "Local cluster"): repo1-type=s3, repo1-s3-endpoint=$S3_ADDRESS,
# repo1-storage-port=$S3_PORT, repo1-s3-bucket=$S3_BUCKET, repo1-s3-region=$S3_REGION,
# repo1-s3-uri-style=path, repo1-storage-ca-file=<the CA>, and the keys in the environment:
# PGBACKREST_REPO1_S3_KEY, PGBACKREST_REPO1_S3_KEY_SECRET. Checked with pgBackRest 2.45 (stanza-create,
# asynchronous archive-push and archive-get, full, diff, incr and bundled backups, expire, verify,
# point-in-time restore); what to know:
# - the CA file must be readable by pgBackRest's user, else [095] "unable to set user-defined CA
#   certificate location"; repo1-s3-endpoint may also be <addr>:<port>;
# - any region passes (rclone does not check it), repo1-s3-uri-style=host cannot work (no DNS);
# - a missing bucket is a 404 NoSuchBucket for listings (info, stanza-create) but a plain
#   FileMissingError [055] for reads (check, backup, archive-push);
# - refused connections and TLS failures are retried for io-timeout (default 60 s) per request:
#   with the server stopped, backup, check and archive-push fail after about 8 x io-timeout;
# - rclone allows 15 minutes of clock skew (RequestTimeTooSkewed); pods share this clock.
set -euo pipefail
s3_address_env=${S3_ADDRESS:-}
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
. "$here/pki.sh"
. "$here/components.sh" # rn_gateway, from realnode.sh (realnodes.sh with REAL_NODES=N)

S3_DIR="$CLUSTER_DIR/s3"
S3_BUCKET=articlesite-backups
S3_REGION=us-east-1
S3_PID_FILE="$PIDS/s3.pid"
S3_LOG="$LOGS/s3.log"

# pid of the running server, or nothing. Its command line names our data directory, so a
# recycled pid of an unrelated process (or another cluster's server) is never taken for ours.
s3_pid() {
  local pid
  [ -f "$S3_PID_FILE" ] || return 0
  pid=$(cat "$S3_PID_FILE")
  if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
    { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "rclone serve s3 $S3_DIR/data "; then
    echo "$pid"
  fi
}

# The address a running server listens on (its --addr), or nothing.
s3_running_addr() {
  tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | sed -n 's/^--addr=//p'
}

s3_address() {
  local a=$s3_address_env
  [ -n "$a" ] || a=$(sed -n 's/^S3_ADDRESS=//p' "$S3_DIR/endpoint.env" 2>/dev/null || true)
  [ -n "$a" ] || a=$(rn_gateway)
  echo "$a"
}

check_address() {
  local a=$1
  [[ $a =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "S3_ADDRESS '$a' is not an IPv4 address"
  [ "$a" != 0.0.0.0 ] || die "S3_ADDRESS 0.0.0.0 would expose the S3 server on every interface: give the one address it should listen on"
  ip -o -4 addr show | awk '{print $4}' | cut -d/ -f1 | grep -qxF -- "$a" ||
    die "$a is not an address of this machine (is the real node's bridge up? make cluster-up REAL_NODE=1 or REAL_NODES=N makes it); set S3_ADDRESS to one that is"
}

# The listener that holds PORT for ADDR (ADDR itself or a wildcard), if any.
port_holder() { # ADDR PORT
  ss -Hltnp "sport = :$2" 2>/dev/null |
    awk -v a="$1" '{h = $4; sub(/:[0-9]+$/, "", h); if (h == a || h == "0.0.0.0" || h == "*" || h == "[::]") {print; exit}}'
}

# Made once per cluster; the secret never appears on a command line.
s3_credentials() {
  local f="$S3_DIR/credentials.env"
  [ -s "$f" ] && return 0
  (
    umask 077
    printf 'S3_ACCESS_KEY_ID=%s\nS3_SECRET_ACCESS_KEY=%s\n' \
      "AS$(openssl rand -hex 9 | tr a-f A-F)" "$(openssl rand -hex 20)" >"$f.tmp"
    mv "$f.tmp" "$f"
  )
}

# A serving certificate of the cluster CA for ADDR; remade when it names another address, was
# signed by another CA or expires within a day. The address is a DNS name in the SAN too:
# pgBackRest 2.45 checks the host only against DNS names (and the CN), never against IP entries.
s3_certificate() { # ADDR
  local a=$1 crt="$PKI/s3-serving.crt"
  [ -f "$PKI/ca.crt" ] && [ -f "$PKI/ca.key" ] ||
    die "no cluster CA in $PKI (make cluster-up makes it; without a cluster: make_pki of hack/cluster/pki.sh)"
  if [ -f "$crt" ] && [ -f "$PKI/s3-serving.key" ] &&
    openssl x509 -in "$crt" -noout -checkip "$a" 2>/dev/null | grep -q 'does match' &&
    openssl x509 -in "$crt" -noout -checkend 86400 >/dev/null 2>&1 &&
    openssl verify -CAfile "$PKI/ca.crt" "$crt" >/dev/null 2>&1; then
    return 0
  fi
  sign s3-serving "/CN=$a" "IP:$a,DNS:$a"
  chmod 600 "$PKI/s3-serving.key"
}

write_endpoint() { # ADDR PORT
  cat >"$S3_DIR/endpoint.env.tmp" <<EOF
S3_ENDPOINT=$1:$2
S3_ADDRESS=$1
S3_PORT=$2
S3_URL=https://$1:$2
S3_CA_FILE=$PKI/ca.crt
S3_BUCKET=$S3_BUCKET
S3_REGION=$S3_REGION
S3_URI_STYLE=path
EOF
  mv "$S3_DIR/endpoint.env.tmp" "$S3_DIR/endpoint.env"
}

log_tail() {
  say "last lines of $S3_LOG:"
  tail -n 25 "$S3_LOG" >&2 2>/dev/null || true
}

# A signed ListObjectsV2 of the bucket (max 1 key): TLS with the cluster CA, the keys, the bucket.
# The keys reach curl on stdin, not on its command line.
s3_list_ok() { # ADDR PORT
  (
    # shellcheck disable=SC1091
    . "$S3_DIR/credentials.env"
    printf 'user = "%s:%s"\n' "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY" |
      curl -fsS -K - -o /dev/null --max-time 5 --cacert "$PKI/ca.crt" \
        --aws-sigv4 "aws:amz:$S3_REGION:s3" "https://$1:$2/$S3_BUCKET?list-type=2&max-keys=1"
  )
}

s3_start() {
  local addr port=$S3_PORT pid holder deadline
  ensure_commands openssl:openssl curl:curl ss:iproute2 ip:iproute2
  addr=$(s3_address)
  pid=$(s3_pid)
  if [ -n "$pid" ]; then
    local running; running=$(s3_running_addr "$pid")
    [ "$running" = "$addr:$port" ] ||
      die "the S3 server (pid $pid) runs at $running, not $addr:$port: hack/cluster/s3.sh stop first"
    say "S3 server already running (pid $pid) at https://$addr:$port, bucket $S3_BUCKET"
    return 0
  fi
  if [ -f "$S3_PID_FILE" ]; then
    say "warning: the S3 server of $S3_PID_FILE (pid $(cat "$S3_PID_FILE")) is not running any more (it died?); starting it again"
    log_tail
    rm -f "$S3_PID_FILE"
  fi
  check_address "$addr"
  holder=$(port_holder "$addr" "$port")
  [ -z "$holder" ] ||
    die "port $addr:$port, needed by the S3 server, is already in use: $holder. Stop that process or set S3_PORT."
  # Built only when missing (build.sh also checks, cheaply, the cached control-plane binaries).
  [ -x "$RCLONE_BIN/rclone" ] || "$here/build.sh" rclone >/dev/null
  mkdir -p "$S3_DIR/data/$S3_BUCKET" "$LOGS" "$PIDS"
  chmod 700 "$S3_DIR"
  s3_credentials
  s3_certificate "$addr"
  # A server killed in an upload leaves its temporary object (hidden from listings, never
  # removed by rclone); none is in use while no server runs.
  find "$S3_DIR/data" -type f -name '.rclone_temp_*' -delete

  # The key pair in the environment (RCLONE_AUTH_KEY, CSV-quoted), not in the arguments that
  # ps shows to everyone. --vfs-cache-mode off: a 200 means the object is in the data directory
  # (what WAL archiving relies on). --dir-cache-time 5s: a bucket made or removed on disk (by a
  # test) is seen within 5 s. --config /dev/null: no rclone.conf is read or written.
  (
    # shellcheck disable=SC1091
    . "$S3_DIR/credentials.env"
    export RCLONE_AUTH_KEY="\"$S3_ACCESS_KEY_ID,$S3_SECRET_ACCESS_KEY\""
    exec setsid "$RCLONE_BIN/rclone" serve s3 "$S3_DIR/data" \
      --addr="$addr:$port" \
      --cert="$PKI/s3-serving.crt" \
      --key="$PKI/s3-serving.key" \
      --min-tls-version=tls1.2 \
      --vfs-cache-mode=off \
      --dir-cache-time=5s \
      --config=/dev/null \
      --log-level="${S3_LOG_LEVEL:-NOTICE}" \
      >>"$S3_LOG" 2>&1 </dev/null
  ) &
  echo $! >"$S3_PID_FILE"

  deadline=$(( $(date +%s) + 20 ))
  until s3_list_ok "$addr" "$port" 2>/dev/null; do
    if [ -z "$(s3_pid)" ]; then
      say "error: the S3 server died on start"
      log_tail
      rm -f "$S3_PID_FILE"
      exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      say "error: the S3 server (pid $(s3_pid)) did not answer a signed ListObjectsV2 of $S3_BUCKET at https://$addr:$port within 20 s: $(s3_list_ok "$addr" "$port" 2>&1 | tail -n1)"
      log_tail
      exit 1
    fi
    sleep 0.2
  done
  write_endpoint "$addr" "$port"
  say "S3 server (rclone $RCLONE_VERSION serve s3, pid $(s3_pid)) at https://$addr:$port, bucket $S3_BUCKET, region $S3_REGION, path-style; CA $PKI/ca.crt; keys in $S3_DIR/credentials.env; endpoint in $S3_DIR/endpoint.env"
}

# TERM, then KILL after 10 s; exactly the pid of the pid file. The data stays.
s3_stop() {
  local pid i
  pid=$(s3_pid)
  if [ -z "$pid" ]; then
    [ -f "$S3_PID_FILE" ] && say "the S3 server of $S3_PID_FILE (pid $(cat "$S3_PID_FILE")) was not running"
    rm -f "$S3_PID_FILE"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    [ -d "/proc/$pid" ] || break
    grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && break
    sleep 0.1
  done
  [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$S3_PID_FILE"
  say "S3 server stopped (pid $pid); its data stays in $S3_DIR/data"
}

s3_status() {
  local pid; pid=$(s3_pid)
  if [ -n "$pid" ]; then
    echo "S3 server running (pid $pid) at https://$(s3_running_addr "$pid"), bucket $S3_BUCKET, data $S3_DIR/data, log $S3_LOG"
    return 0
  fi
  if [ -f "$S3_PID_FILE" ]; then
    echo "S3 server not running: it died (pid $(cat "$S3_PID_FILE") of $S3_PID_FILE is gone); log $S3_LOG"
  else
    echo "S3 server not running (data $S3_DIR/data)"
  fi
  return 3
}

case ${1:-} in
  start) s3_start ;;
  stop) s3_stop ;;
  status) s3_status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
