#!/usr/bin/env python3
"""What `network = false` adds to a job's start, as root (a network namespace
per job) and as an unprivileged user (a user namespace per job with a network
namespace in it): `tsbridge run [--no-network] /bin/true`, alternated, wall
time of the whole command (the CLI's own start is in both; the difference is
the job's namespaces). BENCHMARKS.md "network = false without privilege".

usage: bench/sandbox/no-network-run.py TSBRIDGE [ROUNDS] [USER]
  USER: a uid to run as through setpriv (default: 65534), or "root"
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

tsb = os.path.abspath(sys.argv[1])
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
user = sys.argv[3] if len(sys.argv) > 3 else "65534"
cwd = tempfile.mkdtemp(prefix="tsbridge-netbench-")
os.chmod(cwd, 0o777)
wrap = [] if user == "root" else ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]


def one(extra):
    t = time.perf_counter()
    r = subprocess.run(wrap + [tsb, "run", *extra, "--timeout", "30", "/bin/true"],
                       capture_output=True, cwd=cwd)
    if r.returncode != 0:
        sys.exit(f"tsbridge run {extra} failed: {r.stderr.decode()}")
    return (time.perf_counter() - t) * 1000


res = {"network": [], "no-network": []}
for _ in range(rounds):
    res["network"].append(one([]))
    res["no-network"].append(one(["--no-network"]))
print(f"# user={user} rounds={rounds} load={open('/proc/loadavg').read().split()[:3]}")
for k, v in res.items():
    print(f"{k:<11} median {statistics.median(v):6.1f} ms  min {min(v):6.1f} ms")
d = statistics.median(res["no-network"]) - statistics.median(res["network"])
print(f"no-network adds {d:.1f} ms (medians)")
os.rmdir(cwd)
