#!/usr/bin/env python3
"""Soak test of a tsbridge server: mixed load, cancels, timeouts, escapees,
crashes, and SIGKILLs of the server itself, then the invariants of SPEC §4.

usage: bench/soak/soak.py BIN [--seconds 120] [--kill-every 30] [--threads 6]
                            [--pg URL [--nodes 2]]

Starts `BIN serve` with bench/soak/soak.toml (a spawn workflow running
job.ts through tsx, a pool workflow running handler.ts), then for SECONDS:
THREADS clients submit jobs (POST /v1/jobs, some with an idempotency key
used twice), run some synchronously (/workflow/:type/execute, some with
failing or timing-out jobs), send batches with failFast, and cancel random
jobs; every KILL_EVERY seconds the server is SIGKILLed and started again on
the same store. With `--pg URL` the store is a fresh PostgreSQL database made
beside URL's (dropped at the end) and `--nodes N` servers share it, each
client request going to a random node and each SIGKILL to one node. Then it
waits for every accepted job and checks:

  1. every job a 202/200 named is found after the restarts and is terminal;
  2. an idempotency key sent twice named one job; the events of each job
     (SSE) are numbered 1, 2, 3, ... and end with their terminal state;
  3. within 10 s of each SIGKILL no process the killed server had below it
     is left (the job programs, their setsid'd grandchildren with an empty
     environment, pool workers);
  4. after a clean SIGTERM the server exits 0 and no job process, job cgroup
     or job TMPDIR of its is left (.ci/leftovers, only what a `serve` makes);
  5. the server answered no request with a 500 other than a job's end
     (`ExecutionError`, or `InternalError` for a job interrupted by a
     node's death).

Exits 1 listing each violation, 0 otherwise; prints counts by state and
reason. Needs python3 and the repo's npm packages (tsx). Loopback only.
"""
import argparse, json, os, random, re, signal, subprocess, sys, tempfile, threading, time
import http.client

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def req(port, method, path, body=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body)
        c.request(method, path, body=data, headers={"content-type": "application/json"})
        r = c.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, raw
    finally:
        c.close()


def job_pids(servers):
    """Pids of processes that belong to soak jobs (by their command line):
    job.ts, its grandchildren, and the pool workers of the servers whose
    pids are in `servers` (their host script lies in a folder named after
    the server's pid)."""
    marks = [f"tsbridge-{p}.".encode() for p in servers]
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"soak-grandchild" in cmd or b"soak-job" in cmd or (
                b"worker-host" in cmd and any(m in cmd for m in marks)):
            out.append((int(d), cmd.decode(errors="replace")))
    return out


def descendants(root):
    """(pid, start time) of every process below `root`, by parent links."""
    kids, start = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(st[1]), []).append(int(d))
        start[int(d)] = st[19]
    out, todo = [], [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append((k, start[k]))
            todo.append(k)
    return out


def alive(pid, start):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        return st[19] == start and st[0] != "Z"
    except OSError:
        return False


def leftovers(servers):
    """What .ci/leftovers lists that a `tsbridge serve` of `servers` could
    have left: job cgroups under a server's parent (`tsbridge-<8 hex>`, one
    per store) and TMPDIRs named after a server's pid. Tests running beside
    the soak make cgroups and TMPDIRs of other shapes and owners: those are
    not counted."""
    r = subprocess.run([os.path.join(ROOT, ".ci/leftovers"), "list"], capture_output=True, text=True)
    serve_cg = re.compile(r"/tsbridge-[0-9a-f]{8}(/|$)")
    marks = [f"/tsbridge-{p}." for p in servers]
    return {e for e in r.stdout.split()
            if (e.startswith("/sys/fs/cgroup") and serve_cg.search(e)) or any(m in e for m in marks)}


class Soak:
    def __init__(self, a):
        self.a = a
        self.dir = tempfile.mkdtemp(prefix="tsbridge-soak-")
        self.pg_db = None
        if a.pg:
            self.pg_db = f"tsbridge_soak_{os.getpid()}"
            subprocess.run(["psql", a.pg, "-qc", f"CREATE DATABASE {self.pg_db}"], check=True)
            store = a.pg.rsplit("/", 1)[0] + "/" + self.pg_db
        else:
            store = "sqlite://" + os.path.join(self.dir, "soak.db")
        template = open(os.path.join(HERE, "soak.toml")).read()
        self.nodes = []
        for i in range(a.nodes):
            port = a.port + i
            cfg = os.path.join(self.dir, f"soak-{i}.toml")
            open(cfg, "w").write(template.replace("@PORT@", str(port)).replace("@STORE@", store).replace("@ROOT@", HERE))
            self.nodes.append({"i": i, "port": port, "cfg": cfg, "proc": None})
        self.lock = threading.Lock()
        self.accepted = {}  # jobId -> what
        self.keys = {}      # idempotency key -> set of job ids
        self.violations = []
        self.counts = {}
        self.stop = threading.Event()
        self.pids = []
        self.kills = 0
        self.log = open(os.path.join(self.dir, "server.log"), "ab")

    def count(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def violation(self, msg):
        with self.lock:
            self.violations.append(msg)
        print("VIOLATION:", msg, flush=True)

    @property
    def port(self):
        """A random node's port: where the next request goes."""
        return random.choice(self.nodes)["port"]

    def start(self, node):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", "LANG": "C.UTF-8",
               "TSBRIDGE_LOG": "warn", "TSBRIDGE_NODE_ID": f"soak-{node['i']}"}
        proc = subprocess.Popen([self.a.bin, "serve", "--config", node["cfg"]], stdout=self.log,
                                stderr=self.log, env=env, start_new_session=True)
        node["proc"] = proc
        self.pids.append(proc.pid)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                s, b = req(node["port"], "GET", "/readyz", timeout=5)
                if s == 200:
                    return
            except OSError:
                pass
            if proc.poll() is not None:
                sys.exit(f"server exited with {proc.returncode}; log in {self.dir}/server.log")
            time.sleep(0.2)
        sys.exit("server not ready after 120 s")

    def params(self, wf):
        r = random.random()
        if wf == "spawn-ts":
            p = {"ms": random.choice([20, 50, 200, 800]), "steps": random.randint(1, 5)}
            if r < 0.10: p["exit"] = random.choice([1, 2, 42])
            elif r < 0.16: p.update(ignoreTerm=True, ms=60000)      # timeout -> TERM ignored -> KILL
            elif r < 0.24: p["grandchild"] = True                   # an escapee left running
            elif r < 0.30: p["floodKiB"] = random.choice([64, 1024])  # over max_output
            elif r < 0.40: p["ipc"] = True
            return p
        p = {"ms": random.choice([5, 20, 100, 500]), "steps": random.randint(1, 4)}
        if r < 0.08: p["fail"] = True
        elif r < 0.12: p["crash"] = True
        elif r < 0.16: p.update(ignoreAbort=True, ms=60000)         # timeout while ignoring abort
        return p

    def accept(self, jid, what):
        with self.lock:
            self.accepted[jid] = what

    def check_events(self, jid):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request("GET", f"/v1/jobs/{jid}/events")
            r = c.getresponse()
            text = r.read().decode()
        finally:
            c.close()
        ids, last = [], None
        for block in text.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "id" in fields:
                ids.append(int(fields["id"]))
                last = (fields.get("event"), fields.get("data"))
        if ids != list(range(1, len(ids) + 1)):
            self.violation(f"job {jid}: event ids {ids[:20]} are not 1..{len(ids)}; the stream: {text[:3000]}")
        elif last is None or last[0] != "state" or json.loads(last[1]).get("state") in (None, "queued", "running"):
            self.violation(f"job {jid}: its event stream does not end with a terminal state: {last}")

    def client(self):
        while not self.stop.is_set():
            wf = random.choice(["spawn-ts", "pooled", "pooled"])
            r = random.random()
            try:
                if r < 0.55:
                    body = {"workflow": wf, "parameters": self.params(wf)}
                    key = None
                    if random.random() < 0.1:
                        key = f"k{random.randint(0, 50)}"
                        body = {"workflow": "pooled", "parameters": {"ms": 5}, "options": {"idempotencyKey": key}}
                    s, b = req(self.port, "POST", "/v1/jobs", body)
                    self.count(f"submit {s}")
                    if s == 202 or (s == 200 and key):
                        jid = b["data"]["jobId"]
                        self.accept(jid, "submit")
                        if key:
                            with self.lock:
                                self.keys.setdefault(key, set()).add(jid)
                    elif s >= 500 and s != 503:
                        self.violation(f"POST /v1/jobs answered {s}: {b}")
                elif r < 0.75:
                    s, b = req(self.port, "POST", f"/workflow/{wf}/execute", {"parameters": self.params(wf)}, timeout=120)
                    self.count(f"execute {s}")
                    jid = (b or {}).get("data", {}).get("jobId") if s == 200 else \
                        ((b or {}).get("error", {}).get("details") or {}).get("jobId")
                    if jid:
                        self.accept(jid, "execute")
                    err = (b or {}).get("error", {})
                    # A job interrupted by the death of the node that ran it
                    # ends so (SPEC §4), and its answer says so.
                    interrupted = err.get("type") == "InternalError" and \
                        (err.get("details") or {}).get("reason") == "interrupted"
                    if s == 500 and err.get("type") != "ExecutionError" and not interrupted:
                        self.violation(f"execute answered 500 {b}")
                elif r < 0.85:
                    items = [{"type": random.choice(["spawn-ts", "pooled"]), "parameters": {"ms": 10}} for _ in range(random.randint(1, 5))]
                    if random.random() < 0.5:
                        items.insert(random.randint(0, len(items)), {"type": "pooled", "parameters": {"ms": 10, "fail": True}})
                    s, b = req(self.port, "POST", "/workflow/batch", {"workflows": items[:10], "options": {"failFast": random.random() < 0.5}}, timeout=120)
                    self.count(f"batch {s}")
                    if s == 200:
                        for it in b["results"]:
                            if it.get("jobId"):
                                self.accept(it["jobId"], "batch")
                    elif s >= 500 and s != 503:
                        self.violation(f"batch answered {s}: {b}")
                else:
                    with self.lock:
                        ids = list(self.accepted)
                    if ids:
                        jid = random.choice(ids)
                        s, b = req(self.port, "POST", f"/v1/jobs/{jid}/cancel")
                        self.count(f"cancel {s}")
                        if s not in (200, 409, 503):
                            self.violation(f"cancel {jid} answered {s}: {b}")
            except (OSError, http.client.HTTPException):
                self.count("connection error (server restarting)")
                time.sleep(0.2)

    def killer(self):
        while not self.stop.wait(self.a.kill_every):
            # The hard cases first: a job that ignores SIGTERM and has left
            # an escapee (own session, empty environment) behind, running
            # when the server dies.
            for _ in range(2):
                try:
                    s, b = req(self.port, "POST", "/v1/jobs", {"workflow": "spawn-ts", "parameters": {
                        "grandchild": True, "ignoreTerm": True, "ms": 60000}, "options": {"priority": 10}})
                    if s == 202:
                        self.accept(b["data"]["jobId"], "escapee")
                except (OSError, http.client.HTTPException):
                    pass
            deadline = time.time() + 30
            while time.time() < deadline and not any("soak-grandchild" in c for _, c in job_pids(self.pids)):
                time.sleep(0.1)
            node = random.choice(self.nodes)
            proc = node["proc"]
            below = descendants(proc.pid)
            cmds = {p: c for p, c in job_pids(self.pids)}
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.kills += 1
            deadline = time.time() + 10
            left = [p for p in below if alive(*p)]
            while left and time.time() < deadline:
                time.sleep(0.2)
                left = [p for p in below if alive(*p)]
            if left:
                self.violation(f"10 s after SIGKILL #{self.kills} (node {node['i']}), processes it had live: "
                               f"{[(p, cmds.get(p, '?')[:150]) for p, _ in left[:5]]}")
                for pid, _ in left:
                    try: os.kill(pid, signal.SIGKILL)
                    except OSError: pass
            c = [cmds[p] for p, _ in below if p in cmds]
            kinds = sorted({"grandchild" if "soak-grandchild" in x else "worker" if "worker-host" in x else "job" for x in c})
            print(f"SIGKILL #{self.kills} (node {node['i']}): {len(below)} processes below it ({len(c)} of jobs: "
                  f"{', '.join(kinds)}), {len(left)} left 10 s after", flush=True)
            self.start(node)

    def run(self):
        before = leftovers([])
        for node in self.nodes:
            self.start(node)
        threads = [threading.Thread(target=self.client, daemon=True) for _ in range(self.a.threads)]
        k = threading.Thread(target=self.killer, daemon=True)
        for t in threads: t.start()
        k.start()
        time.sleep(self.a.seconds)
        self.stop.set()
        k.join()
        for t in threads: t.join(timeout=180)
        # Every accepted job must be found and end.
        states = {}
        pending = dict(self.accepted)
        deadline = time.time() + 180
        while pending and time.time() < deadline:
            for jid in list(pending):
                s, b = req(self.port, "GET", f"/v1/jobs/{jid}")
                if s == 404:
                    self.violation(f"accepted job {jid} ({pending[jid]}) not found")
                    del pending[jid]
                elif s == 200 and b["data"]["state"] not in ("queued", "running"):
                    d = b["data"]
                    key = f"{d['state']}/{d.get('reason')}"
                    states[key] = states.get(key, 0) + 1
                    del pending[jid]
            if pending:
                time.sleep(1)
        for jid in pending:
            self.violation(f"job {jid} ({pending[jid]}) not terminal after 180 s")
        # A job's events are numbered 1, 2, 3, ... across restarts, and its
        # stream (SSE) ends with its terminal state.
        for jid in sorted(self.accepted):
            self.check_events(jid)
        for key, ids in self.keys.items():
            if len(ids) > 1:
                self.violation(f"idempotency key {key} named {len(ids)} jobs")
        for node in self.nodes:
            node["proc"].send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                rc = node["proc"].wait(timeout=60)
                if rc != 0:
                    self.violation(f"node {node['i']} exited {rc} on SIGTERM")
            except subprocess.TimeoutExpired:
                self.violation(f"node {node['i']} did not exit within 60 s of SIGTERM")
                node["proc"].kill()
        time.sleep(1)
        if job_pids(self.pids):
            self.violation(f"job processes live after the server stopped: {job_pids(self.pids)[:5]}")
        extra = leftovers(self.pids) - before
        if extra:
            self.violation(f"left behind: {sorted(extra)[:10]}")
        if self.pg_db and not self.violations:
            subprocess.run(["psql", self.a.pg, "-qc", f"DROP DATABASE {self.pg_db}"])
        elif self.pg_db:
            print(f"kept the store for a look: database {self.pg_db}")
        print(json.dumps({"seconds": self.a.seconds, "nodes": len(self.nodes),
                          "store": "postgres" if self.pg_db else "sqlite", "server_kills": self.kills, "accepted": len(self.accepted), "event_streams_checked": len(self.accepted),
                          "ends": dict(sorted(states.items())), "requests": dict(sorted(self.counts.items())),
                          "violations": len(self.violations), "dir": self.dir}, indent=1))
        return 1 if self.violations else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bin")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--kill-every", type=float, default=30)
    ap.add_argument("--threads", type=int, default=6)
    ap.add_argument("--port", type=int, default=8961, help="the first node's port (the next ones follow)")
    ap.add_argument("--pg", help="a PostgreSQL URL whose role may create databases: the store is a fresh database beside it")
    ap.add_argument("--nodes", type=int, default=1, help="servers sharing the store (PostgreSQL only)")
    a = ap.parse_args()
    if a.nodes > 1 and not a.pg:
        ap.error("--nodes > 1 needs a shared store: --pg URL")
    sys.exit(Soak(a).run())


if __name__ == "__main__":
    main()
