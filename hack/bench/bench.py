#!/usr/bin/env python3
"""The measurements of `make bench` (run through hack/bench/run.sh, which builds the binaries and
starts the benchmark cluster). Standard library only.

Two parts:
- operator: N ArticleSites created at once in a fresh namespace, watched by a release build of
  the operator limited to that namespace; convergence, CPU and memory from /proc, reconcile
  durations from its /metrics, write requests from the API server's audit log.
- app: the article server over a PostgreSQL of its own with 10,000 articles, under wrk, with the
  cache on and off; beside it a bare axum handler (the HTTP ceiling) and pgbench select-only
  (the database ceiling), in the same run.

Writes <out>.json and <out>.md.
"""

import argparse
import concurrent.futures
import datetime as dt
import http.client
import json
import os
import platform
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "target" / "release"
IMAGE = "articlesite/article-server:0.1.0"
UA_PREFIX = "articlesite-operator/"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
ARTICLES = 10_000


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def _terminate(signum, frame):
    # Turn SIGTERM into an exception so every `finally` stops what it started.
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------------------------
# processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_sample(pid):
    """(rss bytes, cpu seconds) of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the command: state is field 3, utime 14, stime 15, rss 24 (1-based in proc(5))
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    rss = int(fields[21]) * PAGE
    return rss, cpu


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Samples RSS and CPU of some processes once a second in a thread."""

    def __init__(self, pids):
        self.pids = {k: v for k, v in pids.items() if v}
        self.samples = []  # (t, {name: (rss, cpu)})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            now = time.time()
            row = {}
            for name, pid in self.pids.items():
                try:
                    row[name] = proc_sample(pid)
                except (OSError, IndexError, ValueError):
                    pass
            self.samples.append((now, row))
            self._stop.wait(1.0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def window(self, name, t0, t1):
        """RSS (peak, mean, last) in bytes and CPU (mean %, peak 1-s %) of `name` in [t0, t1]."""
        pts = [(t, r[name]) for t, r in self.samples if name in r and t0 <= t <= t1]
        if len(pts) < 2:
            return None
        rss = [p[1][0] for p in pts]
        rates = [
            100.0 * (b[1][1] - a[1][1]) / (b[0] - a[0])
            for a, b in zip(pts, pts[1:])
            if b[0] > a[0]
        ]
        return {
            "rss_peak_mib": mib(max(rss)),
            "rss_mean_mib": mib(sum(rss) / len(rss)),
            "rss_last_mib": mib(rss[-1]),
            "cpu_mean_pct": round(100.0 * (pts[-1][1][1] - pts[0][1][1]) / (pts[-1][0] - pts[0][0]), 1),
            "cpu_peak_pct": round(max(rates), 1) if rates else 0.0,
        }


def mib(b):
    return round(b / 1048576, 1)


def wait_until(what, timeout, check, every=0.5):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception as e:  # the condition is polled; its last failure is reported
            last = e
        time.sleep(every)
    raise BenchError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def http_get(port, path, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def stop(proc, timeout=30):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def prom(text):
    """Prometheus text → {name: [(labels dict, value)]}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        try:
            out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
        except ValueError:
            pass
    return out


def metric_sum(p, name):
    return sum(v for _, v in p.get(name, []))


def buckets(p, name):
    return sorted(
        (float("inf") if l["le"] in ("+Inf", "inf") else float(l["le"]), v)
        for l, v in p.get(name + "_bucket", [])
    )


def quantile(q, bs):
    """histogram_quantile of Prometheus: linear interpolation inside the bucket."""
    if not bs or bs[-1][1] <= 0:
        return None
    rank = q * bs[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in bs:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def bucket_diff(a, b):
    base = dict(a)
    return [(le, c - base.get(le, 0.0)) for le, c in b]


# --------------------------------------------------------------------------------------------
# Kubernetes (admin client certificate of the benchmark cluster)


class Kube:
    def __init__(self, pki, port):
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.port = port
        self.local = threading.local()

    def _conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=120)
            self.local.conn = c
        return c

    def req(self, method, path, body=None, ok=(200, 201)):
        for attempt in range(5):
            c = self._conn()
            try:
                data = json.dumps(body).encode() if body is not None else None
                c.request(method, path, body=data, headers={"Content-Type": "application/json"})
                r = c.getresponse()
                text = r.read()
            except (OSError, http.client.HTTPException):
                c.close()
                self.local.conn = None
                time.sleep(0.2 * (attempt + 1))
                continue
            if r.status == 429 or r.status >= 500:
                time.sleep(0.2 * (attempt + 1))
                continue
            if r.status not in ok:
                raise BenchError(f"{method} {path}: {r.status} {text[:300]!r}")
            return json.loads(text) if text else None
        raise BenchError(f"{method} {path}: no answer after 5 attempts")


# --------------------------------------------------------------------------------------------
# audit log


def audit_writes(logs_dir, ns, t0, t1):
    """The operator's write requests in namespace `ns`, received in [t0, t1): (time, verb, resource)."""
    out = []
    needle = '"' + UA_PREFIX
    files = sorted(Path(logs_dir).glob("audit*.log"), key=lambda p: p.stat().st_mtime)
    for path in files:
        with open(path, errors="replace") as f:
            for line in f:
                if needle not in line or f'"namespace":"{ns}"' not in line:
                    continue
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if not e.get("userAgent", "").startswith(UA_PREFIX):
                    continue
                if e.get("verb") not in WRITE_VERBS:
                    continue
                ref = e.get("objectRef", {})
                if ref.get("namespace") != ns:
                    continue
                t = dt.datetime.fromisoformat(e["requestReceivedTimestamp"]).timestamp()
                if t0 <= t < t1:
                    res = ref.get("resource", "?") + ("/" + ref["subresource"] if ref.get("subresource") else "")
                    out.append((t, e["verb"], res))
    return out


def tally(writes):
    out = {}
    for _, verb, res in writes:
        k = f"{verb} {res}"
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------------------------
# operator at scale


def site_manifest(name):
    small = lambda cpu, mem, lim: {"requests": {"cpu": cpu, "memory": mem}, "limits": {"memory": lim}}
    return {
        "apiVersion": "articlesite.io/v1alpha1",
        "kind": "ArticleSite",
        "metadata": {"name": name},
        "spec": {
            "app": {"image": IMAGE, "replicas": 1, "resources": small("10m", "32Mi", "64Mi")},
            # instances: 1 keeps the figures comparable with the runs before the replicated
            # database (3 instances per site would triple the database pods and claims).
            "database": {"instances": 1, "resources": small("10m", "32Mi", "128Mi"), "storage": {"size": "1Gi"}},
        },
    }


def _ts(stamp):
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def _cond(obj, kind):
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return _ts(c.get("lastTransitionTime"))
    return None


# Stages of one site on its way to Ready, in order, with the component that does each.
STAGES = [
    ("children created", "operator"),
    ("app pod created", "kube-controller-manager"),
    ("app pod scheduled", "kube-scheduler"),
    ("app pod ready", "kwok"),
    ("Deployment available", "kube-controller-manager (minReadySeconds 5)"),
    ("database claim created", "kube-controller-manager"),
    ("database volume provisioned", "kube-controller-manager (host-path provisioner)"),
    ("database pod created", "kube-controller-manager"),
    ("database pod scheduled", "kube-scheduler"),
    ("database pod ready", "kwok"),
    ("site Ready", "operator"),
]


def timeline(kube, ns):
    """Per stage, seconds after each site's creation (API server timestamps, whole seconds):
    where the time to Ready goes, and which component spends it."""
    base = f"/namespaces/{ns}"
    get = lambda path: kube.req("GET", path + "?resourceVersion=0")["items"]
    sites = get(f"/apis/articlesite.io/v1alpha1{base}/articlesites")
    deps = {d["metadata"]["name"]: d for d in get(f"/apis/apps/v1{base}/deployments")}
    pods = get(f"/api/v1{base}/pods")
    pvcs = {c["metadata"]["name"]: c for c in get(f"/api/v1{base}/persistentvolumeclaims")}
    pvs = {v["metadata"]["name"]: v for v in kube.req("GET", "/api/v1/persistentvolumes?resourceVersion=0")["items"]}
    by_site = {}
    for p in pods:
        labels = p["metadata"].get("labels") or {}
        by_site.setdefault(labels.get("app.kubernetes.io/instance"), {}) \
            .setdefault(labels.get("app.kubernetes.io/component"), []).append(p)
    lags = {name: [] for name, _ in STAGES}
    for site in sites:
        name = site["metadata"]["name"]
        t0 = _ts(site["metadata"]["creationTimestamp"])
        dep = deps.get(name)
        app = min((by_site.get(name) or {}).get("app") or [], default=None,
                  key=lambda p: p["metadata"]["creationTimestamp"])
        db = next(iter((by_site.get(name) or {}).get("database") or []), None)
        claim = pvcs.get(f"data-{name}-postgresql-0")
        volume = pvs.get(((claim or {}).get("spec") or {}).get("volumeName") or "")
        stamps = {
            "children created": _ts((dep or {}).get("metadata", {}).get("creationTimestamp")),
            "app pod created": _ts(app["metadata"]["creationTimestamp"]) if app else None,
            "app pod scheduled": _cond(app, "PodScheduled") if app else None,
            "app pod ready": _cond(app, "Ready") if app else None,
            "Deployment available": _cond(dep, "Available") if dep else None,
            "database claim created": _ts((claim or {}).get("metadata", {}).get("creationTimestamp")),
            "database volume provisioned": _ts((volume or {}).get("metadata", {}).get("creationTimestamp")),
            "database pod created": _ts(db["metadata"]["creationTimestamp"]) if db else None,
            "database pod scheduled": _cond(db, "PodScheduled") if db else None,
            "database pod ready": _cond(db, "Ready") if db else None,
            "site Ready": _cond(site, "Ready"),
        }
        for k, v in stamps.items():
            if v is not None and t0 is not None:
                lags[k].append(v - t0)

    def q(xs, f):
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(f * len(xs)))], 1) if xs else None

    return [{"stage": name, "by": by, "sites": len(lags[name]), "p50_s": q(lags[name], 0.5),
             "p90_s": q(lags[name], 0.9), "max_s": q(lags[name], 1.0)} for name, by in STAGES]


def is_ready(site):
    for c in (site.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def cluster_pids():
    pids_dir = Path(os.environ["PIDS"])
    out = {}
    for name in ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok"):
        try:
            out[name] = int((pids_dir / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            pass
    return out


def operator_run(args, kube, n, workdir):
    ns = f"bench-{n}-{int(time.time())}"
    log(f"operator: {n} sites in namespace {ns}")
    kube.req("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    port = free_port()
    oplog = open(workdir / f"operator-{n}.log", "w")
    env = dict(os.environ, RUST_LOG="info")
    op = subprocess.Popen(
        [str(RELEASE / "articlesite-operator"), "run", "--namespace", ns,
         "--metrics-addr", f"127.0.0.1:{port}", "--resync-seconds", str(args.resync_seconds),
         "--concurrency", str(args.concurrency)],
        stdin=subprocess.DEVNULL, stdout=oplog, stderr=oplog, env=env,
    )
    try:
        wait_until("operator /readyz", 60, lambda: http_get(port, "/readyz")[0] == 200)
        idle_rss, _ = proc_sample(op.pid)
        pids = dict(cluster_pids(), operator=op.pid)
        with Sampler(pids) as sampler:
            time.sleep(2)  # a baseline sample before the load
            t0 = time.time()
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(
                    lambda i: kube.req("POST", f"/apis/articlesite.io/v1alpha1/namespaces/{ns}/articlesites",
                                       site_manifest(f"site-{i:04d}")),
                    range(n)))
            t_created = time.time()
            log(f"operator: {n} sites created in {t_created - t0:.1f}s")
            progress = []
            deadline = t0 + args.converge_timeout
            converged = True
            while True:
                items = kube.req("GET", f"/apis/articlesite.io/v1alpha1/namespaces/{ns}/articlesites?resourceVersion=0")["items"]
                ready = sum(1 for s in items if is_ready(s))
                progress.append((round(time.time() - t0, 1), ready))
                if ready == n:
                    break
                if time.time() > deadline:
                    # Report what was reached rather than nothing: memory and CPU at n sites are
                    # still measured; the steady window is not (it would still be converging).
                    converged = False
                    log(f"operator: only {ready}/{n} Ready after {args.converge_timeout}s (the deadline)")
                    break
                if len(progress) % 15 == 0:
                    log(f"operator: {ready}/{n} Ready after {time.time() - t0:.0f}s")
                time.sleep(2)
            t_ready = time.time()
            m_ready = prom(http_get(port, "/metrics")[1])
            stages = timeline(kube, ns)
            if converged:
                log(f"operator: all {n} Ready after {t_ready - t0:.1f}s")
                # Settle (late status writes of the last sites count as convergence), then a
                # steady window longer than the resync period, so every site is re-checked in it.
                time.sleep(args.settle_seconds)
                t_steady = time.time()
                m_steady0 = prom(http_get(port, "/metrics")[1])
                time.sleep(args.steady_seconds)
            else:
                t_steady = time.time()
                m_steady0 = prom(http_get(port, "/metrics")[1])
            t_end = time.time()
            m_end = prom(http_get(port, "/metrics")[1])
            hwm = peak_rss(op.pid)
        converge = audit_writes(os.environ["LOGS"], ns, t0 - 1, t_steady)
        steady = audit_writes(os.environ["LOGS"], ns, t_steady, t_end + 1)
        conv_b = buckets(m_ready, "articlesite_operator_reconcile_duration_seconds")
        steady_b = bucket_diff(
            buckets(m_steady0, "articlesite_operator_reconcile_duration_seconds"),
            buckets(m_end, "articlesite_operator_reconcile_duration_seconds"))
        rec_conv = metric_sum(m_ready, "articlesite_operator_reconciles_total")
        rec_steady = metric_sum(m_end, "articlesite_operator_reconciles_total") - metric_sum(
            m_steady0, "articlesite_operator_reconciles_total")
        op_conv = sampler.window("operator", t0, t_ready)
        op_steady = sampler.window("operator", t_steady, t_end)
        result = {
            "sites": n,
            "namespace": ns,
            "create_seconds": round(t_created - t0, 1),
            "converged": converged,
            "ready_sites": progress[-1][1],
            "converge_seconds": round(t_ready - t0, 1) if converged else None,
            "observed_seconds": round(t_ready - t0, 1),
            "last_convergence_write_seconds": round(max((w[0] for w in converge), default=t0) - t0, 1),
            "reconciles_to_converge": int(rec_conv),
            "reconciles_per_second": round(rec_conv / (t_ready - t0), 1),  # over the observed time
            "reconcile_errors": int(metric_sum(m_end, "articlesite_operator_reconcile_errors_total")),
            "reconcile_p50_ms_converge": ms(quantile(0.5, conv_b)),
            "reconcile_p99_ms_converge": ms(quantile(0.99, conv_b)),
            "reconcile_p50_ms_steady": ms(quantile(0.5, steady_b)),
            "reconcile_p99_ms_steady": ms(quantile(0.99, steady_b)),
            "rss_idle_mib": mib(idle_rss),
            "rss_peak_mib": mib(hwm),
            "rss_steady_mib": op_steady["rss_mean_mib"] if op_steady else None,
            "cpu_mean_pct_converge": op_conv["cpu_mean_pct"] if op_conv else None,
            "cpu_peak_pct": op_conv["cpu_peak_pct"] if op_conv else None,
            "cpu_mean_pct_steady": op_steady["cpu_mean_pct"] if op_steady else None,
            "writes_to_converge": len(converge),
            "writes_per_site": round(len(converge) / n, 2) if converged else None,
            "writes_by_kind": tally(converge),
            "steady_seconds": round(t_end - t_steady, 1) if converged else None,
            "steady_reconciles": int(rec_steady) if converged else None,
            "steady_writes": len(steady) if converged else None,
            "steady_writes_per_minute": round(60.0 * len(steady) / (t_end - t_steady), 2) if converged else None,
            "steady_writes_by_kind": tally(steady),
            "client_writes_counted_by_operator": int(metric_sum(m_end, "articlesite_operator_write_requests_total")),
            "cluster_during_convergence": {
                name: sampler.window(name, t0, t_ready) for name in pids if name != "operator"
            },
            "ready_progress": progress,
            "timeline": stages,
        }
        log("operator: " + json.dumps({k: v for k, v in result.items()
                                       if k not in ("ready_progress", "cluster_during_convergence", "writes_by_kind")}))
        return result
    finally:
        stop(op)
        oplog.close()



# The kinds the operator creates for a site, as `kubectl get` names them.
REFERENCE_KINDS = "serviceaccounts,secrets,services,deployments.apps,statefulsets.apps,poddisruptionbudgets.policy,networkpolicies.networking.k8s.io"
# Metadata the API server sets; a manifest to apply elsewhere carries none of it.
SERVER_SET = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
              "ownerReferences", "namespace", "selfLink")


def exported(obj, ns):
    """`obj` as a manifest for namespace `ns`: no owner references, status or server-set fields."""
    obj = json.loads(json.dumps(obj))
    obj.pop("status", None)
    meta = obj["metadata"]
    for key in SERVER_SET:
        meta.pop(key, None)
    meta["namespace"] = ns
    annotations = meta.get("annotations") or {}
    annotations.pop("deployment.kubernetes.io/revision", None)
    if not annotations:
        meta.pop("annotations", None)
    spec = obj.get("spec") or {}
    if obj["kind"] == "Service":
        for key in ("clusterIP", "clusterIPs"):
            if spec.get("clusterIP") != "None":
                spec.pop(key, None)
    if obj["kind"] == "StatefulSet":
        for claim in spec.get("volumeClaimTemplates") or []:
            claim.pop("status", None)
    return obj


def reference_run(args, kube, source_ns, n, workdir):
    """The reference point of the same run: the children the operator created for `n` sites,
    exported and applied with `kubectl apply --server-side` to a fresh namespace, and the time
    until all of their pods are Ready."""
    k = [os.environ["K8S_BIN"] + "/kubectl", "--kubeconfig", os.environ["KUBECONFIG"]]
    ns = f"reference-{n}-{int(time.time())}"
    listed = json.loads(subprocess.run(
        k + ["get", REFERENCE_KINDS, "-n", source_ns, "-l", "app.kubernetes.io/managed-by=articlesite-operator",
             "-o", "json"], check=True, capture_output=True, text=True).stdout)
    items = [exported(o, ns) for o in listed["items"]]
    pods_expected = len(kube.req("GET", f"/api/v1/namespaces/{source_ns}/pods?resourceVersion=0")["items"])
    # As many kubectl processes at once as the operator reconciles sites at once (kubectl applies
    # the objects of one file one after another); each site's objects stay in one file.
    site_of = lambda o: o["metadata"].get("labels", {}).get("app.kubernetes.io/instance", "")
    chunks = [[] for _ in range(max(1, args.concurrency))]
    for o in items:
        chunks[sum(map(ord, site_of(o))) % len(chunks)].append(o)
    manifests = []
    for i, chunk in enumerate(c for c in chunks if c):
        manifest = workdir / f"reference-{n}-{i}.json"
        # Holds the bench's generated Secrets (of a throw-away cluster): written next to its logs.
        manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": chunk}))
        manifests.append(manifest)
    kube.req("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    log(f"reference: applying {len(items)} objects of {n} sites to {ns} with {len(manifests)} concurrent "
        "kubectl apply --server-side")
    t0 = time.time()
    procs = [subprocess.Popen(k + ["apply", "--server-side", "--field-manager=articlesite-bench-reference",
                                   "-f", str(m)], stdout=subprocess.DEVNULL) for m in manifests]
    failed = [p.args for p in procs if p.wait() != 0]
    if failed:
        raise BenchError(f"reference: kubectl apply failed: {failed[0]}")
    t_applied = time.time()
    deadline = t0 + args.converge_timeout
    ready = 0
    while True:
        pods = kube.req("GET", f"/api/v1/namespaces/{ns}/pods?resourceVersion=0")["items"]
        ready = sum(1 for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                           for c in (p.get("status") or {}).get("conditions") or []))
        if ready >= pods_expected or time.time() > deadline:
            break
        time.sleep(2)
    t_ready = time.time()
    converged = ready >= pods_expected
    result = {
        "objects": len(items),
        "kubectl_processes": len(manifests),
        "pods": pods_expected,
        "apply_seconds": round(t_applied - t0, 1),
        "pods_ready_seconds": round(t_ready - t0, 1) if converged else None,
        "ready_pods": ready,
    }
    log("reference: " + json.dumps(result))
    return result


def ms(seconds):
    return None if seconds is None else round(1000 * seconds, 1)


def operator_part(args, workdir):
    pki = Path(os.environ["PKI"])
    kube = Kube(pki, int(os.environ["APISERVER_PORT"]))
    k = [os.environ["K8S_BIN"] + "/kubectl", "--kubeconfig", os.environ["KUBECONFIG"]]
    subprocess.run(k + ["apply", "--server-side", "--force-conflicts", "--field-manager=articlesite-bench",
                        "-f", str(ROOT / "crds" / "articlesite.yaml")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(k + ["wait", "--for=condition=Established", "--timeout=60s",
                        "crd/articlesites.articlesite.io"], check=True, stdout=subprocess.DEVNULL)
    runs = []
    for n in args.sites:
        run = operator_run(args, kube, n, workdir)
        # Measured in the same run, on the same cluster, right after the operator's.
        ref = reference_run(args, kube, run["namespace"], n, workdir)
        run["reference"] = ref
        if run.get("converge_seconds") and ref.get("pods_ready_seconds"):
            run["converge_vs_reference"] = round(run["converge_seconds"] / ref["pods_ready_seconds"], 2)
        runs.append(run)
    out = {"runs": runs, "nodes": args.nodes, "resync_seconds": args.resync_seconds,
           "concurrency": args.concurrency, "site_spec": site_manifest("site-0000")["spec"]}
    if len(runs) >= 2:
        a, b = runs[0], runs[-1]
        out["rss_per_site_kib"] = {
            key: round(1024 * (b[key] - a[key]) / (b["sites"] - a["sites"]), 1)
            for key in ("rss_peak_mib", "rss_steady_mib") if a.get(key) is not None and b.get(key) is not None
        }
    return out


# --------------------------------------------------------------------------------------------
# article server


def pg_bin():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise BenchError("PostgreSQL server binaries not found under /usr/lib/postgresql (make deps)")
    return found[-1].parent


class Postgres:
    """A throwaway PostgreSQL on 127.0.0.1, as the `postgres` user when we are root."""

    def __init__(self, bindir):
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="articlesite-bench-pg-"))
        self.port = free_port()
        self.proc = None
        self.user = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.user = "postgres"

    def _as(self, cmd):
        return (["runuser", "-u", self.user, "--"] + cmd) if self.user else cmd

    def start(self):
        data = self.dir / "data"
        subprocess.run(self._as([str(self.bin / "initdb"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                                 "--locale=C.UTF-8", "--no-sync", "-D", str(data)]),
                       check=True, stdout=subprocess.DEVNULL)
        self.logf = open(self.dir / "postgres.log", "w")
        if self.user:
            os.chown(self.dir / "postgres.log", *(lambda p: (p.pw_uid, p.pw_gid))(pwd.getpwnam(self.user)))
        self._spawn()

    def _spawn(self):
        # Defaults apart from the address and room for the connections of the load runs.
        self.proc = subprocess.Popen(
            self._as([str(self.bin / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
                      "-h", "127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=200"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.logf, start_new_session=True)
        wait_until("PostgreSQL to accept connections", 300, lambda: subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
            stdout=subprocess.DEVNULL).returncode == 0)

    def halt(self):
        """Stops the server at once (immediate shutdown, like a crash: no checkpoint to wait for)
        but keeps its data: a database outage. It restarts with crash recovery."""
        os.killpg(self.proc.pid, signal.SIGQUIT)
        self.proc.wait(60)

    def resume(self):
        self._spawn()

    def psql(self, db, sql):
        r = subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                            "-d", db, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                           check=True, capture_output=True, text=True)
        return r.stdout.strip()

    def url(self, db):
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


SEED_SQL = f"""
INSERT INTO articles (slug, title, summary, body, tags, status, published_at)
SELECT 'article-' || i,
       'Article number ' || i,
       'The summary of article ' || i || ', one sentence long.',
       '# Article ' || i || E'\\n\\n' ||
         repeat('Some **bold** words, a [link](https://example.com/' || i || E') and plain text. ', 12) ||
         E'\\n\\n## A section\\n\\n- one\\n- two\\n- three\\n\\n' ||
         repeat('Another paragraph of ordinary prose for the renderer to work on. ', 10),
       ARRAY['tag-' || (i % 50), CASE WHEN i % 3 = 0 THEN 'news' ELSE 'blog' END],
       'published',
       now() - i * interval '1 minute'
FROM generate_series(1, {ARTICLES}) AS i;
ANALYZE articles;
"""


class Server:
    def __init__(self, argv, env, logpath):
        self.port = free_port()
        self.logf = open(logpath, "w")
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        env = {k: v.replace("{port}", str(self.port)) for k, v in env.items()}
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf)

    def stop(self):
        stop(self.proc)
        self.logf.close()


def wrk(port, path, conns, duration, env_extra):
    env = dict(os.environ, **env_extra)
    cmd = ["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{duration}s", "--timeout", "10s",
           "-s", str(ROOT / "hack" / "bench" / "wrk.lua"), f"http://127.0.0.1:{port}{path}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    line = next((l for l in r.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
    if r.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")
    d = json.loads(line.split(" ", 1)[1])
    errors = sum(v for k, v in d.items() if k.startswith("errors_"))
    secs = d["duration_us"] / 1e6
    return {
        "connections": conns,
        "requests": d["requests"],
        "rps": round(d["requests"] / secs, 1),
        "p50_ms": round(d["p50_us"] / 1000, 2),
        "p99_ms": round(d["p99_us"] / 1000, 2),
        "mean_ms": round(d["mean_us"] / 1000, 2),
        "errors": errors,
    }


def measured(pid, fn):
    """Runs fn() while sampling `pid`; adds the process's peak RSS and CPU during the run."""
    with Sampler({"p": pid}) as s:
        t0 = time.time()
        out = fn()
        t1 = time.time()
    w = s.window("p", t0, t1 + 1)
    if w:
        out["server_rss_peak_mib"] = w["rss_peak_mib"]
        out["server_cpu_pct"] = w["cpu_mean_pct"]
    return out


def app_part(args, workdir):
    pg = Postgres(pg_bin())
    servers = []
    try:
        pg.start()
        log(f"app: PostgreSQL on 127.0.0.1:{pg.port}")
        pg.psql("postgres", "CREATE DATABASE articles")
        pg.psql("postgres", "CREATE DATABASE pgbench")
        token = secrets.token_hex(24)
        results = {"articles": ARTICLES, "connections": args.connections, "duration_seconds": args.duration,
                   "scenarios": {}, "http_ceiling": [], "db_ceiling": []}

        # HTTP ceiling: the bare axum handler.
        ceil = Server([str(RELEASE / "http_ceiling"), "127.0.0.1:{port}"], dict(os.environ),
                      workdir / "http-ceiling.log")
        servers.append(ceil)
        wait_until("HTTP ceiling server", 30, lambda: http_get(ceil.port, "/")[0] == 200)
        for c in args.connections:
            r = measured(ceil.proc.pid, lambda: wrk(ceil.port, "/", c, args.duration, {"BENCH_MODE": "get"}))
            results["http_ceiling"].append(r)
            log(f"app: http ceiling c={c}: {r['rps']} rps p99 {r['p99_ms']} ms")
        ceil.stop()
        servers.remove(ceil)

        # Database ceiling: pgbench select-only (one SELECT by primary key per transaction, the
        # shape of a GET by slug), prepared statements as sqlx uses.
        pgbench = str(pg.bin / "pgbench")
        base = ["-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres"]
        subprocess.run([pgbench, *base, "-i", "-q", "-s", "10", "pgbench"], check=True, capture_output=True)
        for c in args.connections:
            results["db_ceiling"].append(pgbench_run(pgbench, base, c, args.duration, workdir))
            r = results["db_ceiling"][-1]
            log(f"app: pgbench -S c={c}: {r['tps']} tps p99 {r['p99_ms']} ms")

        for cache in ("on", "off"):
            env = dict(os.environ, ARTICLES_LISTEN_ADDR="127.0.0.1:{port}", ARTICLES_DATABASE_URL=pg.url("articles"),
                       ARTICLES_WRITE_TOKEN=token, ARTICLES_CACHE_ENABLED="true" if cache == "on" else "false",
                       RUST_LOG="warn")
            srv = Server([str(RELEASE / "article-server")], env, workdir / f"article-server-cache-{cache}.log")
            servers.append(srv)
            wait_until("article server /readyz", 60, lambda: http_get(srv.port, "/readyz")[0] == 200)
            if pg.psql("articles", "SELECT count(*) FROM articles WHERE slug LIKE 'article-%'") == "0":
                t = time.time()
                pg.psql("articles", SEED_SQL)
                log(f"app: seeded {ARTICLES} articles in {time.time() - t:.1f}s")
                # Rows written by SQL have no stored rendering: a server renders them in the
                # background at start-up (render once), so restart and wait for it.
                srv.stop()
                servers.remove(srv)
                t = time.time()
                srv = Server([str(RELEASE / "article-server")], env, workdir / f"article-server-cache-{cache}.log")
                servers.append(srv)
                wait_until("the seeded articles to be rendered", 300, lambda: pg.psql(
                    "articles", "SELECT count(*) FROM articles WHERE render_version = 0") == "0")
                log(f"app: rendered {ARTICLES} articles in the background in {time.time() - t:.1f}s")
                wait_until("article server /readyz", 60, lambda: http_get(srv.port, "/readyz")[0] == 200)
            status, _ = http_get(srv.port, f"/api/v1/articles/article-{ARTICLES}")
            if status != 200:
                raise BenchError(f"seeded article not served: {status}")
            idle = proc_sample(srv.proc.pid)[0]
            wrk(srv.port, "/api/v1/articles", 4, 2, {"BENCH_MODE": "get"})  # warm-up
            scen = {
                "api_get": ("/", {"BENCH_MODE": "slug", "BENCH_PREFIX": "/api/v1/articles/"}),
                "html_get": ("/", {"BENCH_MODE": "slug", "BENCH_PREFIX": "/articles/"}),
                "api_get_zipf": ("/", {"BENCH_MODE": "zipf", "BENCH_PREFIX": "/api/v1/articles/"}),
                "html_get_zipf": ("/", {"BENCH_MODE": "zipf", "BENCH_PREFIX": "/articles/"}),
                "api_list": ("/api/v1/articles", {"BENCH_MODE": "get"}),
                "create": ("/", {"BENCH_MODE": "create", "BENCH_TOKEN": token}),
            }
            for c in args.connections:
                for name, (path, extra) in scen.items():
                    before = prom(http_get(srv.port, "/metrics")[1])
                    extra = dict(extra, BENCH_ARTICLES=str(ARTICLES), BENCH_RUN=f"{cache}{c}")
                    r = measured(srv.proc.pid, lambda: wrk(srv.port, path, c, args.duration, extra))
                    after = prom(http_get(srv.port, "/metrics")[1])
                    hits = metric_sum(after, "articles_cache_hits_total") - metric_sum(before, "articles_cache_hits_total")
                    miss = metric_sum(after, "articles_cache_misses_total") - metric_sum(before, "articles_cache_misses_total")
                    r["cache_hit_ratio"] = round(hits / (hits + miss), 3) if hits + miss else None
                    results["scenarios"].setdefault(f"{name}/cache-{cache}", []).append(r)
                    log(f"app: {name} cache {cache} c={c}: {r['rps']} rps p50 {r['p50_ms']} p99 {r['p99_ms']} ms, "
                        f"{r['errors']} errors, rss {r.get('server_rss_peak_mib')} MiB")
            results.setdefault("server_rss_idle_mib", {})[cache] = mib(idle)
            srv.stop()
            servers.remove(srv)
            pg.psql("articles", "DELETE FROM articles WHERE slug LIKE 'bench-%'")
            pg.psql("articles", "VACUUM ANALYZE articles")  # (not allowed inside the DELETE's transaction)

        results.update(replicas_and_outage(args, pg, token, workdir, servers))

        # Ratios to the two ceilings at the same number of connections.
        http_by_c = {r["connections"]: r["rps"] for r in results["http_ceiling"]}
        db_by_c = {r["connections"]: r["tps"] for r in results["db_ceiling"]}
        for rows in results["scenarios"].values():
            for r in rows:
                c = r["connections"]
                r["vs_http_ceiling"] = round(r["rps"] / http_by_c[c], 3) if http_by_c.get(c) else None
                r["vs_db_ceiling"] = round(r["rps"] / db_by_c[c], 3) if db_by_c.get(c) else None
        return results
    finally:
        for s in servers:
            s.stop()
        pg.stop()


def fetch(port, method, path, headers=None, body=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def article_server(pg, token, workdir, name, **extra):
    env = dict(os.environ, ARTICLES_LISTEN_ADDR="127.0.0.1:{port}", ARTICLES_DATABASE_URL=pg.url("articles"),
               ARTICLES_WRITE_TOKEN=token, RUST_LOG="warn", **extra)
    srv = Server([str(RELEASE / "article-server")], env, workdir / f"article-server-{name}.log")
    wait_until(f"article server {name} /readyz", 60, lambda: http_get(srv.port, "/readyz")[0] == 200)
    wait_until(f"article server {name} listening for changes", 30,
               lambda: metric_sum(prom(http_get(srv.port, "/metrics")[1]), "articles_cache_resyncs_total") >= 1)
    return srv


def compressed_sizes(port):
    out = {}
    for name, path in (("article page", "/articles/article-1"), ("article JSON", "/api/v1/articles/article-1"),
                       ("index page", "/"), ("list JSON", "/api/v1/articles"), ("feed", "/feed.xml")):
        row = {}
        for enc in ("identity", "gzip", "br"):
            fetch(port, "GET", path, {"Accept-Encoding": enc})  # fills the cache
            status, h, body = fetch(port, "GET", path, {"Accept-Encoding": enc})
            row[enc] = len(body)
            row[f"{enc}_encoding"] = h.get("content-encoding", "identity")
        out[name] = row
    return out


def coherence(a, b, token, samples, load_port=None):
    """Writes on replica a, and measures how long until replica b serves the new title."""
    slug = "article-2"
    delays = []
    conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=10)
    for i in range(samples):
        status, h, body = fetch(a.port, "GET", f"/api/v1/articles/{slug}", {"Authorization": f"Bearer {token}"})
        etag = h["etag"]
        # b has the current version in its cache.
        for _ in range(3):
            conn.request("GET", f"/api/v1/articles/{slug}")
            conn.getresponse().read()
        title = f"Coherence probe {i} {secrets.token_hex(4)}"
        status, _, _ = fetch(a.port, "PATCH", f"/api/v1/articles/{slug}",
                             {"Authorization": f"Bearer {token}", "If-Match": etag,
                              "Content-Type": "application/json"}, json.dumps({"title": title}))
        if status != 200:
            raise BenchError(f"coherence write failed: {status}")
        t0 = time.perf_counter()
        deadline = t0 + 10
        while True:
            conn.request("GET", f"/api/v1/articles/{slug}")
            r = conn.getresponse()
            if title.encode() in r.read():
                delays.append((time.perf_counter() - t0) * 1000)
                break
            if time.perf_counter() > deadline:
                raise BenchError("replica b never served the write")
    conn.close()
    delays.sort()
    pick = lambda q: round(delays[min(len(delays) - 1, int(q * len(delays)))], 2)
    return {"samples": samples, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(delays[-1], 2)}


def replicas_and_outage(args, pg, token, workdir, servers):
    """Two replicas with the cache on: compressed sizes, cross-replica coherence (writes on a,
    reads on b, with and without Zipf read load on b), and a database outage."""
    out = {}
    a = article_server(pg, token, workdir, "replica-a")
    servers.append(a)
    b = article_server(pg, token, workdir, "replica-b", ARTICLES_DATABASE_TIMEOUT_MS="2000")
    servers.append(b)
    out["compressed_bytes"] = compressed_sizes(b.port)
    log(f"app: compressed sizes {out['compressed_bytes']}")
    out["coherence_idle"] = coherence(a, b, token, 200)
    log(f"app: coherence, idle: {out['coherence_idle']}")
    # The same under read load on b (Zipf, 16 connections).
    box = {}
    load = threading.Thread(target=lambda: box.update(r=wrk(
        b.port, "/", 16, 12, {"BENCH_MODE": "zipf", "BENCH_PREFIX": "/articles/", "BENCH_ARTICLES": str(ARTICLES)})))
    load.start()
    time.sleep(1)
    out["coherence_loaded"] = coherence(a, b, token, 100)
    load.join()
    out["coherence_loaded"]["background_rps"] = box.get("r", {}).get("rps")
    log(f"app: coherence, under load: {out['coherence_loaded']}")

    # Outage: warm b's cache with the Zipf head, stop PostgreSQL, then read cached pages (served
    # stale) and uncached ones (503, once the breaker is open).
    wrk(b.port, "/", 4, 3, {"BENCH_MODE": "zipf", "BENCH_PREFIX": "/articles/", "BENCH_ARTICLES": str(ARTICLES)})
    before = prom(http_get(b.port, "/metrics")[1])
    pg.halt()
    t_down = time.time()
    try:
        first = time.perf_counter()
        status, _, _ = fetch(b.port, "GET", "/articles/article-9999")
        out["outage_first_miss_ms"] = round((time.perf_counter() - first) * 1000, 1)
        wait_until("the circuit breaker to open", 30, lambda: metric_sum(
            prom(http_get(b.port, "/metrics")[1]), "articles_db_circuit_open") == 1)
        hits = wrk(b.port, "/", 16, 5, {"BENCH_MODE": "slug", "BENCH_PREFIX": "/articles/", "BENCH_ARTICLES": "20"})
        misses = wrk(b.port, "/?q=outage", 16, 5, {"BENCH_MODE": "get"})
        after = prom(http_get(b.port, "/metrics")[1])
        out["outage"] = {
            "stale_reads": hits,
            "misses": misses,
            "stale_served": int(metric_sum(after, "articles_cache_stale_served_total")
                                - metric_sum(before, "articles_cache_stale_served_total")),
            "first_miss_ms": out.pop("outage_first_miss_ms"),
        }
    finally:
        pg.resume()
    t_up = time.time()
    wait_until("replica b to serve fresh again", 60,
               lambda: fetch(b.port, "GET", "/articles/article-9998")[1].get("x-cache") in ("miss", "hit"))
    out["outage"]["recovered_after_s"] = round(time.time() - t_up, 2)
    out["outage"]["down_s"] = round(t_up - t_down, 1)
    log(f"app: outage {out['outage']}")
    out["outage"]["database"] = "stopped with SIGQUIT (immediate shutdown), restarted with crash recovery"
    for s in (a, b):
        s.stop()
        servers.remove(s)
    return out


def pgbench_run(pgbench, base, c, duration, workdir):
    logdir = Path(tempfile.mkdtemp(prefix="pgbench-", dir=workdir))
    r = subprocess.run([pgbench, *base, "-S", "-M", "prepared", "-c", str(c), "-j", str(min(c, 2)),
                        "-T", str(duration), "-l", "--log-prefix", str(logdir / "pgbench"), "pgbench"],
                       capture_output=True, text=True, check=True)
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", r.stdout)
    lat = []
    for f in logdir.iterdir():
        with open(f) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
    shutil.rmtree(logdir, ignore_errors=True)
    lat.sort()
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] / 1000, 2) if lat else None
    return {"connections": c, "tps": round(float(m.group(1)), 1) if m else None,
            "p50_ms": pick(0.5), "p99_ms": pick(0.99), "transactions": len(lat)}


# --------------------------------------------------------------------------------------------
# report


def cmd_out(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def lock_version(name):
    text = (ROOT / "Cargo.lock").read_text()
    m = re.search(r'name = "' + re.escape(name) + r'"\nversion = "([^"]+)"', text)
    return m.group(1) if m else "unknown"


def machine():
    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal:")), "0")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(int(mem) / 1048576, 1),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "rustc": cmd_out(["rustc", "-V"]),
        "kube": lock_version("kube"),
        "k8s-openapi": lock_version("k8s-openapi"),
        "axum": lock_version("axum"),
        "sqlx": lock_version("sqlx"),
        "kubernetes": os.environ.get("KUBERNETES_VERSION", "unknown"),
        "etcd": os.environ.get("ETCD_VERSION", "unknown"),
        "kwok": os.environ.get("KWOK_VERSION", "unknown"),
        "postgres": cmd_out([str(pg_bin() / "postgres"), "--version"]),
        "wrk": cmd_out(["wrk", "-v"]),
    }


def fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        v = f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.2f}"
    elif isinstance(v, int):
        v = f"{v:,}"
    return f"{v}{unit}"


def pct(ratio):
    return "–" if ratio is None else f"{100 * ratio:.0f} %"


def markdown(report):
    m = report["machine"]
    L = []
    L.append("# Benchmarks\n")
    L.append("Figures, not timed tests: `make bench` (hack/bench/run.sh, hack/bench/bench.py) measures them and "
             "rewrites this file and `docs/benchmarks.json` (every figure, including the ones not shown here).\n")
    L.append(f"Run {report['started']} → {report['finished']} UTC, command: `{report['command']}`.\n")
    L.append("## Machine and versions\n")
    L.append("| | |\n|---|---|")
    L.append(f"| CPU | {m['nproc']} × {m['cpu']} |")
    L.append(f"| memory | {m['memory_gib']} GiB |")
    L.append(f"| kernel | {m['kernel']} |")
    L.append(f"| load average at start | {', '.join(str(x) for x in m['load_average_at_start'])} |")
    L.append(f"| Rust | {m['rustc']}; kube {m['kube']}, k8s-openapi {m['k8s-openapi']}, axum {m['axum']}, sqlx {m['sqlx']} |")
    L.append(f"| control plane | Kubernetes {m['kubernetes']}, etcd {m['etcd']}, kwok {m['kwok']} |")
    L.append(f"| PostgreSQL | {m['postgres']} |")
    L.append(f"| load generator | {m['wrk']} |")
    L.append("")
    L.append("The machine is shared: other engineers build and test on the same two cores while this runs, so "
             "every figure is noisy (repeat runs differ by tens of per cent) and the load generator, the "
             "servers and the control plane compete for the same CPUs. Read ratios and trends, not the third "
             "digit.\n")
    op = report.get("operator")
    if op:
        L.append("## The operator at scale\n")
        L.append(f"A release build of the operator (`--concurrency {op['concurrency']}`, "
                 f"`--resync-seconds {op['resync_seconds']}`) watches one fresh namespace of the benchmark "
                 f"cluster (its own control plane: {op['nodes']} kwok nodes). All sites are created at once "
                 "(16 parallel POSTs); each has 1 app replica and 1 database pod with small requests. "
                 "Converged = every site has `Ready=True`. Writes are the operator's write requests in the API "
                 "server's audit log (by its user agent). The steady window starts "
                 f"{report['args']['settle_seconds']} s after convergence and lasts longer than the resync "
                 "period, so every site is re-checked in it. RSS and CPU are sampled from /proc every second; "
                 "peak RSS is the kernel's high-water mark (VmHWM). Reconcile durations are "
                 "interpolated from the operator's own histogram. The reference, measured in the same run right "
                 "after each operator run: every child the operator created (ServiceAccount, Secrets, Services, "
                 "Deployment, StatefulSet, budgets, policies), exported without owner references, status and "
                 "server-set fields, applied to a fresh namespace with `kubectl apply --server-side` (as many "
                 "kubectl processes at once as the operator's --concurrency, each site's objects in one), "
                 "until all of its pods are Ready: what the same objects cost without an operator.\n")
        runs = op["runs"]
        head = "| | " + " | ".join(f"{r['sites']:,} sites" for r in runs) + " |"
        L.append(head)
        L.append("|---|" + "---|" * len(runs))
        rows = [
            ("create all sites (s)", "create_seconds"),
            ("all Ready after (s)", "converge_seconds"),
            ("reference: the same children by `kubectl apply --server-side`, all pods Ready after (s)",
             lambda r: (r.get("reference") or {}).get("pods_ready_seconds")),
            ("operator's convergence / reference", "converge_vs_reference"),
            ("Ready sites at the end of the wait / waited (s)", ("ready_sites", "observed_seconds")),
            ("operator's last convergence write after (s)", "last_convergence_write_seconds"),
            ("reconciles to converge", "reconciles_to_converge"),
            ("reconciles per second", "reconciles_per_second"),
            ("reconcile errors", "reconcile_errors"),
            ("reconcile p50 / p99, converging (ms)", ("reconcile_p50_ms_converge", "reconcile_p99_ms_converge")),
            ("reconcile p50 / p99, steady (ms)", ("reconcile_p50_ms_steady", "reconcile_p99_ms_steady")),
            ("RSS idle, before the sites (MiB)", "rss_idle_mib"),
            ("RSS peak (MiB)", "rss_peak_mib"),
            ("RSS steady (MiB)", "rss_steady_mib"),
            ("CPU mean / peak converging (% of a core)", ("cpu_mean_pct_converge", "cpu_peak_pct")),
            ("CPU mean steady (% of a core)", "cpu_mean_pct_steady"),
            ("write requests to converge", "writes_to_converge"),
            ("write requests per site", "writes_per_site"),
            ("steady window (s) / reconciles in it", ("steady_seconds", "steady_reconciles")),
            ("write requests per minute, steady", "steady_writes_per_minute"),
        ]
        for label, key in rows:
            if callable(key):
                cells = [fmt(key(r)) for r in runs]
            elif isinstance(key, tuple):
                cells = [" / ".join(fmt(r.get(k)) for k in key) for r in runs]
            else:
                cells = [fmt(r.get(key)) for r in runs]
            L.append(f"| {label} | " + " | ".join(cells) + " |")
        L.append("")
        last = runs[-1]
        for r in runs:
            what = "to converge" if r.get("converged", True) else "while waiting (not converged)"
            L.append(f"Writes {what} at {r['sites']:,} sites, by verb and resource: " +
                     ", ".join(f"{k} {v:,}" for k, v in r["writes_by_kind"].items()) + ".\n")
        per = op.get("rss_per_site_kib")
        if per:
            L.append(f"Memory per site (slope of the operator's RSS between {runs[0]['sites']:,} and {runs[-1]['sites']:,} sites): "
                     + ", ".join(f"{k.replace('_mib', '').replace('rss_', '')} {v} KiB" for k, v in per.items())
                     + ".\n")
        cl = last.get("cluster_during_convergence") or {}
        if cl:
            L.append(f"The control plane while {last['sites']:,} sites converged (mean CPU in % of a core, peak RSS): "
                     + ", ".join(f"{k} {fmt(v['cpu_mean_pct'])} % / {fmt(v['rss_peak_mib'])} MiB"
                                 for k, v in cl.items() if v) + ".\n")
        L.append(f"Where the time to Ready goes at {last['sites']:,} sites: seconds from a site's creation "
                 "to each stage (API server timestamps, whole seconds), and the component that performs it.\n")
        L.append("| stage | done by | p50 (s) | p90 (s) | max (s) |")
        L.append("|---|---|---|---|---|")
        for st in last.get("timeline") or []:
            L.append(f"| {st['stage']} | {st['by']} | {fmt(st['p50_s'])} | {fmt(st['p90_s'])} | {fmt(st['max_s'])} |")
        L.append("")
        L.append("### Goals\n")
        L.append("| goal | result | |")
        L.append("|---|---|---|")
        rss = last.get("rss_peak_mib")
        L.append(f"| operator RSS under 64 MiB at {last['sites']:,} sites | peak {fmt(rss)} MiB, steady "
                 f"{fmt(last.get('rss_steady_mib'))} MiB | {'met' if rss is not None and rss < 64 else 'missed'} |")
        sw = last.get("steady_writes")
        if not last.get("converged", True):
            L.append(f"| all {last['sites']:,} sites Ready | {last['ready_sites']:,} Ready after the "
                     f"{fmt(last['observed_seconds'])} s the run could wait | missed (see notes) |")
        L.append(f"| zero writes at steady state | {fmt(sw)} writes in {fmt(last['steady_seconds'])} s "
                 f"({fmt(last['steady_reconciles'])} reconciles) | {'met' if sw == 0 else ('not measured' if sw is None else 'missed')} |")
        opcpu = last.get("cpu_mean_pct_converge")
        api = (cl.get("kube-apiserver") or {}).get("cpu_mean_pct")
        L.append(f"| convergence bounded by the API server, not the operator | operator {fmt(opcpu)} % of a core "
                 f"vs kube-apiserver {fmt(api)} % while converging; operator's last write at "
                 f"{fmt(last['last_convergence_write_seconds'])} s of {fmt(last['observed_seconds'])} s; "
                 f"reconcile p50 {fmt(last['reconcile_p50_ms_converge'])} ms | see notes |")
        L.append("")
    app = report.get("app")
    if app:
        L.append("## The article server\n")
        if app.get("run"):
            load = app["run"].get("load_average_at_start")
            L.append(f"Run {app['run']['started']} → {app['run']['finished']} UTC, command: `{app['run']['command']}`"
                     + (f", load average at start {', '.join(str(x) for x in load)}" if load else "") + ".\n")
        L.append(f"A release build of the article server (pool of 10 connections, `RUST_LOG=warn`, the default "
                 f"cache: 64 MiB, TTL 600 s, kept coherent through LISTEN/NOTIFY) over a "
                 f"PostgreSQL of its own on this machine (default settings, fsync on) holding "
                 f"{app['articles']:,} published articles (about 2 KB of Markdown each). wrk runs "
                 f"{app['duration_seconds']} s per cell with 1–2 threads, without `Accept-Encoding` (identity). "
                 f"*Uniform* GETs pick one of the {app['articles']:,} slugs at random; *Zipf* GETs pick the "
                 "k-th article with weight 1/k (a few articles get most reads, as on a real site). The scenarios "
                 "run one after another on one server, so the cache holds what the earlier ones left. Creates "
                 "POST a new draft each. The HTTP ceiling is a bare axum handler (app/src/bin/http_ceiling.rs) "
                 "that returns `ok`; the database ceiling is `pgbench -S -M prepared` (one SELECT by primary key "
                 "per transaction) on the same PostgreSQL. Ratios compare requests per second with the ceiling "
                 "at the same number of connections.\n")
        L.append("| what | cache | conns | req/s | p50 ms | p99 ms | errors | cache hits | server RSS MiB | × HTTP ceiling | × DB ceiling |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        labels = {"api_get": "GET /api/v1/articles/{slug}, uniform", "html_get": "GET /articles/{slug} (HTML), uniform",
                  "api_get_zipf": "GET /api/v1/articles/{slug}, Zipf", "html_get_zipf": "GET /articles/{slug} (HTML), Zipf",
                  "api_list": "GET /api/v1/articles (first page)", "create": "POST /api/v1/articles"}
        for key, rows in app["scenarios"].items():
            name, cache = key.split("/")
            for r in rows:
                L.append(f"| {labels[name]} | {cache.replace('cache-', '')} | {r['connections']} | {fmt(r['rps'])} | "
                         f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {r['errors']} | {pct(r.get('cache_hit_ratio'))} | "
                         f"{fmt(r.get('server_rss_peak_mib'))} | {fmt(r.get('vs_http_ceiling'))} | {fmt(r.get('vs_db_ceiling'))} |")
        for r in app["http_ceiling"]:
            L.append(f"| HTTP ceiling: bare axum `GET /` | – | {r['connections']} | {fmt(r['rps'])} | {fmt(r['p50_ms'])} | "
                     f"{fmt(r['p99_ms'])} | {r['errors']} | – | {fmt(r.get('server_rss_peak_mib'))} | 1 | – |")
        for r in app["db_ceiling"]:
            L.append(f"| DB ceiling: pgbench select-only | – | {r['connections']} | {fmt(r['tps'])} | {fmt(r['p50_ms'])} | "
                     f"{fmt(r['p99_ms'])} | – | – | – | – | 1 |")
        L.append("")
        idle = app.get("server_rss_idle_mib", {})
        L.append("Server RSS idle, after start-up: " + ", ".join(f"cache {k} {v} MiB" for k, v in idle.items()) + ".\n")
        sizes = app.get("compressed_bytes")
        if sizes:
            L.append("Response sizes in bytes (each cached body compressed once, by the first request that accepts the encoding: gzip level 6, brotli quality 5):\n")
            L.append("| response | identity | gzip | brotli |")
            L.append("|---|---|---|---|")
            for name, row in sizes.items():
                L.append(f"| {name} | {row['identity']:,} | {row['gzip']:,} | {row['br']:,} |")
            L.append("")
        ci, cl = app.get("coherence_idle"), app.get("coherence_loaded")
        if ci:
            L.append("Cross-replica coherence: two replicas over the same database (each on its own port); a PATCH "
                     "on replica A, then replica B is polled (one keep-alive connection, its entry cached before "
                     "the write) until it serves the new title. Time from A's 200 to B's first new answer:\n")
            L.append("| | samples | p50 ms | p99 ms | max ms |")
            L.append("|---|---|---|---|---|")
            L.append(f"| B idle | {ci['samples']} | {fmt(ci['p50_ms'])} | {fmt(ci['p99_ms'])} | {fmt(ci['max_ms'])} |")
            if cl:
                L.append(f"| B under Zipf page load ({fmt(cl.get('background_rps'))} req/s, 16 conns) | {cl['samples']} | "
                         f"{fmt(cl['p50_ms'])} | {fmt(cl['p99_ms'])} | {fmt(cl['max_ms'])} |")
            L.append("")
        o = app.get("outage")
        if o:
            sr, mi = o["stale_reads"], o["misses"]
            L.append(f"Database outage (PostgreSQL stopped for {fmt(o['down_s'])} s under replica B, whose cache "
                     "held the Zipf head): the first miss waited "
                     f"{fmt(o['first_miss_ms'])} ms (the pool's timeout); once the circuit breaker was open:\n")
            L.append("| reads during the outage | req/s | p50 ms | p99 ms | non-2xx |")
            L.append("|---|---|---|---|---|")
            L.append(f"| cached pages (served stale, {o['stale_served']:,} stale answers) | {fmt(sr['rps'])} | "
                     f"{fmt(sr['p50_ms'])} | {fmt(sr['p99_ms'])} | {sr['errors']} |")
            L.append(f"| uncached searches (503 at once) | {fmt(mi['rps'])} | {fmt(mi['p50_ms'])} | "
                     f"{fmt(mi['p99_ms'])} | {mi['errors']} |")
            L.append("")
            L.append(f"After PostgreSQL was back, replica B answered fresh again within {fmt(o['recovered_after_s'])} s.\n")
        goals = app_goals(app)
        if goals:
            L.append("### Goals (ratios in this run)\n")
            L.append("| goal | result | |")
            L.append("|---|---|---|")
            for g in goals:
                L.append(f"| {g[0]} | {g[1]} | {g[2]} |")
            L.append("")
    return "\n".join(L) + "\n"


def app_goals(app):
    """The targets of issue 19, at the highest connection count, from this run's figures."""
    sc = app.get("scenarios", {})
    http = {r["connections"]: r["rps"] for r in app.get("http_ceiling", [])}
    db = {r["connections"]: r["tps"] for r in app.get("db_ceiling", [])}
    if not sc or not http:
        return []
    c = max(http)
    at = lambda key: next((r for r in sc.get(key, []) if r["connections"] == c), None)
    out = []
    for name, what in (("api_get_zipf", "API"), ("html_get_zipf", "HTML")):
        r = at(f"{name}/cache-on")
        if r:
            ratio = r["rps"] / http[c]
            out.append((f"cached single-article reads ({what}, Zipf) ≥ 0.35 × HTTP ceiling, {c} conns",
                        f"{fmt(r['rps'])} req/s = {ratio:.2f} × {fmt(http[c])} (hits {pct(r.get('cache_hit_ratio'))})",
                        "met" if ratio >= 0.35 else "missed"))
    for name, what in (("api_get", "API"), ("html_get", "HTML")):
        r = at(f"{name}/cache-off")
        if r and db.get(c):
            ratio = r["rps"] / db[c]
            out.append((f"uncached reads ({what}) ≥ 0.30 × pgbench select-only, {c} conns",
                        f"{fmt(r['rps'])} req/s = {ratio:.2f} × {fmt(db[c])}", "met" if ratio >= 0.30 else "missed"))
    for suffix, cache in (("", "off"), ("_zipf", "on")):
        h, a = at(f"html_get{suffix}/cache-{cache}"), at(f"api_get{suffix}/cache-{cache}")
        if h and a:
            ratio = h["rps"] / a["rps"]
            out.append((f"HTML ≥ 0.8 × API rate (cache {cache}{', Zipf' if suffix else ', uniform'}, {c} conns)",
                        f"{fmt(h['rps'])} vs {fmt(a['rps'])} = {ratio:.2f}", "met" if ratio >= 0.8 else "missed"))
    for key, what in (("coherence_idle", "idle"), ("coherence_loaded", "under load")):
        co = app.get(key)
        if co:
            out.append((f"cross-replica invalidation p99 < 100 ms ({what})", f"p99 {fmt(co['p99_ms'])} ms",
                        "met" if co["p99_ms"] < 100 else "missed"))
    return out


NOTES = "\n## Notes (by hand)\n"


def write_markdown(path, report):
    """Writes the generated report, keeping a hand-written notes section of the old file."""
    text = markdown(report)
    if path.exists():
        old = path.read_text()
        if NOTES in old:
            text += NOTES + old.split(NOTES, 1)[1]
    path.write_text(text)


def main():
    signal.signal(signal.SIGTERM, _terminate)
    ap = argparse.ArgumentParser(description=__doc__)
    split_ints = lambda s: [int(x) for x in s.replace(",", " ").split()]
    ap.add_argument("--parts", default="operator app")
    ap.add_argument("--sites", type=split_ints, default=[100, 1000])
    ap.add_argument("--nodes", type=int, default=0)
    ap.add_argument("--connections", type=split_ints, default=[1, 16, 64])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--steady-seconds", type=int, default=75)
    ap.add_argument("--settle-seconds", type=int, default=10)
    ap.add_argument("--resync-seconds", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--converge-timeout", type=int, default=1800)
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite <out>.md from <out>.json")
    args = ap.parse_args()
    if args.markdown_only:
        out = ROOT / args.out
        write_markdown(out.with_suffix(".md"), json.loads(out.with_suffix(".json").read_text()))
        return 0
    parts = args.parts.split()
    workdir = Path(os.environ.get("CLUSTER_DIR", tempfile.gettempdir())) / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    knobs = ("BENCH_PARTS", "BENCH_SITES", "BENCH_CONNECTIONS", "BENCH_DURATION", "BENCH_STEADY_SECONDS",
             "BENCH_RESYNC_SECONDS", "BENCH_CONCURRENCY", "BENCH_CONVERGE_TIMEOUT")
    env_knobs = " ".join(f"{k}='{os.environ[k]}'" for k in knobs if os.environ.get(k))
    report = {
        "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": (env_knobs + " make bench").strip(),
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": machine(),
    }
    out = ROOT / args.out
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    try:
        if "app" in parts:
            started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
            report["app"] = app_part(args, workdir)
            report["app"]["run"] = {"started": started, "command": report["command"],
                                    "finished": dt.datetime.now(dt.timezone.utc).strftime("%H:%M"),
                                    "load_average_at_start": report["machine"]["load_average_at_start"]}
        elif old.get("app"):
            report["app"] = old["app"]
        if "operator" in parts:
            report["operator"] = operator_part(args, workdir)
        elif old.get("operator"):
            # A partial run keeps the other part's figures (and says when they were taken).
            report["operator"] = old["operator"]
            report["started"], report["finished"] = old.get("started"), old.get("finished")
            report["command"] = old.get("command")
            report["machine"] = old.get("machine", report["machine"])
    except BenchError as e:
        log(f"error: {e}")
        return 1
    if "operator" in parts or not old.get("operator"):
        report["finished"] = dt.datetime.now(dt.timezone.utc).strftime("%H:%M")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(out.with_suffix(".md"), report)
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
