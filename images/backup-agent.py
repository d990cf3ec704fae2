#!/opt/patroni/bin/python3
"""backup-agent: runs beside PostgreSQL in every database pod of a site with spec.backup.

On the primary it creates pgBackRest's stanza in the repository (once per promotion; the
command is idempotent) and runs `pgbackrest check`, which archives a WAL segment at once, so a
new site has its first archived segment (and then its first backup) within a minute. On every
instance it publishes, every INTERVAL seconds, what pg_stat_archiver says and pgBackRest's last
archive error in the pod's `articlesite.io/archive` annotation (also: a segment stuck longer than
STALL_SECONDS, and the last segment pgBackRest dropped because the queue was full), with the pod's own token (the
database Role allows pods patch, for Patroni). The annotation is written only when it changes,
so an idle site costs no writes. The operator reads it into status.backup and the
ContinuousArchiving condition (src/archive.rs); it never dials the pods.

Nothing here prints or publishes a secret: pgBackRest's errors name hosts and HTTP codes, not
keys (the keys are only in this container's environment).
"""

import glob
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request

INTERVAL = 10
# The spool is looked at more often: pgBackRest's notes on dropped segments (its `.ok` files)
# are removed by its next run.
SPOOL_TICK = 2
STANZA_RETRY = 30
# A segment waiting this long for the repository means archiving is stuck, well before
# PostgreSQL's archive_command reports a failure (pgBackRest retries for minutes first).
STALL_SECONDS = 30
STATE = "/tmp/backup-agent-state.json"
# While archiving fails and the spool holds no error file (archive-push removes global.error
# when it respawns its background process), `pgbackrest info` names the cause; at most this often.
INFO_RETRY = 60
ANNOTATION = "articlesite.io/archive"
SA = "/var/run/secrets/kubernetes.io/serviceaccount"
STANZA = os.environ.get("ARTICLESITE_STANZA", "db")
SPOOL = os.environ.get("ARTICLESITE_SPOOL", "/var/lib/postgresql/pgbackrest-spool")
# One line per field, so that no value needs quoting.
QUERY = """
select pg_is_in_recovery(),
       coalesce(last_archived_wal, ''),
       coalesce(to_char(last_archived_time at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), ''),
       coalesce(last_failed_wal, ''),
       coalesce(to_char(last_failed_time at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), ''),
       (select count(*) from pg_ls_archive_statusdir() where name like '%.ready')
  from pg_stat_archiver
"""


def log(message, **fields):
    print(json.dumps({"message": message, **fields}), flush=True)


def last_error_line(text):
    """pgBackRest's ERROR line (its code and message), else the last line."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    errors = [l for l in lines if "ERROR" in l]
    return (errors or lines or [""])[-1][:800]


def archiver():
    """pg_stat_archiver of the local instance, or None while PostgreSQL does not answer."""
    try:
        out = subprocess.run(
            ["psql", "-XAtq", "-F", "\n", "-c", QUERY],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    fields = out.stdout.split("\n")
    if len(fields) < 6:
        return None
    return {
        "primary": fields[0] == "f",
        "lastArchivedWal": fields[1] or None,
        "lastArchivedAt": fields[2] or None,
        "lastFailedWal": fields[3] or None,
        "lastFailedAt": fields[4] or None,
        "pendingSegments": int(fields[5] or 0),
    }


def spool_error():
    """The newest error the asynchronous archive-push left in the spool, if any."""
    files = glob.glob(os.path.join(SPOOL, "archive", STANZA, "out", "*.error"))
    if not files:
        return None
    newest = max(files, key=os.path.getmtime)
    try:
        with open(newest, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    # The file holds the error code, then the message.
    if len(lines) >= 2 and lines[0].strip().isdigit():
        return f"[{lines[0].strip()}]: {' '.join(lines[1:])}"[:800]
    return " ".join(lines)[:800] or None


def info_error():
    """The repository's error as `pgbackrest info` reports it (it exits 0 even then)."""
    try:
        # A short io-timeout: an unreachable repository answers within seconds.
        out = subprocess.run(
            ["pgbackrest", f"--stanza={STANZA}", "--io-timeout=5", "--output=json", "info"],
            capture_output=True, text=True, timeout=120,
        )
        stanzas = json.loads(out.stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    for stanza in stanzas:
        for repo in stanza.get("repo", []):
            status = repo.get("status", {})
            if status.get("code", 0) != 0:
                return " ".join(str(status.get("message", "")).split())[:800]
    return None


def dropped_segments():
    """Segments pgBackRest dropped because the archive queue exceeded archive-push-queue-max:
    it tells PostgreSQL they were archived, and notes it in their `.ok` status files."""
    dropped = []
    for path in glob.glob(os.path.join(SPOOL, "archive", STANZA, "out", "*.ok")):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        if "dropped WAL file" in text:
            dropped.append(os.path.basename(path)[:-3])
    return dropped


def stalled_since():
    """When the oldest segment still waiting to be archived was finished, if that is more than
    STALL_SECONDS ago."""
    pgdata = os.environ.get("PGDATA", "/var/lib/postgresql/pgdata")
    ready = glob.glob(os.path.join(pgdata, "pg_wal", "archive_status", "*.ready"))
    try:
        oldest = min((os.path.getmtime(r) for r in ready), default=None)
    except OSError:
        return None
    if oldest is None or time.time() - oldest < STALL_SECONDS:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest))


def load_state():
    try:
        with open(STATE, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def save_state(state):
    tmp = STATE + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp, STATE)


def pgbackrest(*args, timeout=300):
    try:
        out = subprocess.run(
            ["pgbackrest", f"--stanza={STANZA}", *args],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, f"pgbackrest {args[-1]} did not finish within {timeout}s"
    except OSError as e:
        return False, str(e)
    return out.returncode == 0, last_error_line(out.stdout + "\n" + out.stderr)


def patch_annotation(value):
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    ns = os.environ["POD_NAMESPACE"]
    pod = os.environ["POD_NAME"]
    with open(f"{SA}/token", encoding="utf-8") as f:
        token = f.read().strip()
    body = json.dumps({"metadata": {"annotations": {ANNOTATION: value}}}).encode()
    req = urllib.request.Request(
        f"https://{host}:{port}/api/v1/namespaces/{ns}/pods/{pod}",
        data=body, method="PATCH",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/merge-patch+json",
            "User-Agent": "articlesite-backup-agent",
        },
    )
    context = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    with urllib.request.urlopen(req, context=context, timeout=10) as r:
        r.read()


def main():
    published = None
    stanza = ""  # "ok" once created on this primary; "error" while creation fails
    stanza_error = None
    last_attempt = 0.0
    last_info, info_text = 0.0, None
    # The newest dropped segment survives container restarts (the /tmp volume is the pod's):
    # the gap it leaves lasts until the next backup, which the operator then starts.
    state = load_state()
    log("backup agent started", stanza=STANZA)
    next_cycle = 0.0
    while True:
        dropped = dropped_segments()
        if dropped and max(dropped) > state.get("droppedWal", ""):
            state = {"droppedWal": max(dropped),
                     "droppedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            save_state(state)
            log("pgBackRest dropped WAL: the archive has a gap until the next backup", **state)
            next_cycle = 0.0
        if time.monotonic() < next_cycle:
            time.sleep(SPOOL_TICK)
            continue
        next_cycle = time.monotonic() + INTERVAL
        seen = archiver()
        if seen is None:
            continue
        if not seen["primary"]:
            stanza, stanza_error = "", None
        elif stanza != "ok" and time.monotonic() - last_attempt >= (
            STANZA_RETRY if stanza == "error" else 0
        ):
            last_attempt = time.monotonic()
            ok, text = pgbackrest("stanza-create")
            if ok:
                # Archives a segment now and proves the round trip.
                ok, text = pgbackrest("check", timeout=120)
            stanza, stanza_error = ("ok", None) if ok else ("error", text)
            log("stanza " + ("ready" if ok else "failed"), error=stanza_error)
        report = dict(seen, stanza=stanza, **state)
        stalled = stalled_since() if seen["primary"] else None
        if stalled:
            report["stalledSince"] = stalled
        failed_last = seen["lastFailedAt"] and (
            not seen["lastArchivedAt"] or seen["lastFailedAt"] > seen["lastArchivedAt"]
        )
        trouble = failed_last or stalled
        error = stanza_error or (spool_error() if trouble else None)
        if trouble and not error and seen["primary"]:
            if time.monotonic() - last_info >= INFO_RETRY:
                last_info, info_text = time.monotonic(), info_error()
            error = info_text
        if not trouble:
            info_text = None
        if error:
            report["error"] = error
        value = json.dumps(report, sort_keys=True, separators=(",", ":"))
        if value != published:
            try:
                patch_annotation(value)
                published = value
                log("archive status published", **report)
            except Exception as e:  # the API may be away: try again next round
                log("could not publish the archive status", error=str(e))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
