#!/usr/bin/env python3
"""Cost of a freshly forked child joining per-job cgroup v1 directories, as
tsbridge's sandbox does between fork and exec (BENCHMARKS.md "Joining v1
cgroups"). Needs root on a cgroup v1 host; creates and removes
<hierarchy>/spawnlat-bench/job-N.

usage: cgroup-join.py procs|tasks [N=30] [GAP_S=0.05]
  procs: the child writes its pid to each cgroup.procs (tsbridge before)
  tasks: the child writes "0" to each tasks file (moves itself; tsbridge after)
"""
import os, sys, time, statistics as st

mode = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 30
gap = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
own = next(l.split(':', 2)[2].strip() for l in open('/proc/self/cgroup') if l.split(':')[1] == 'memory')
roots = {'pids': '/sys/fs/cgroup/pids', 'freezer': '/sys/fs/cgroup/freezer',
         'memory': f'/sys/fs/cgroup/memory{own}', 'cpuacct': '/sys/fs/cgroup/cpuacct',
         'cpu': '/sys/fs/cgroup/cpu'}
parents = {k: os.path.join(v, 'spawnlat-bench') for k, v in roots.items()}
for p in parents.values():
    os.makedirs(p, exist_ok=True)
res = {k: [] for k in roots}
tot = []
try:
    for i in range(n):
        dirs = {k: os.path.join(p, f'job-{i}') for k, p in parents.items()}
        for d in dirs.values():
            os.mkdir(d)
        fname = 'cgroup.procs' if mode == 'procs' else 'tasks'
        fds = {k: os.open(os.path.join(d, fname), os.O_WRONLY | os.O_CLOEXEC) for k, d in dirs.items()}
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            me = str(os.getpid()).encode() if mode == 'procs' else b'0'
            out = []
            for fd in fds.values():
                a = time.perf_counter()
                os.write(fd, me)
                out.append(time.perf_counter() - a)
            os.write(w, ' '.join(f'{x:.6f}' for x in out).encode())
            os._exit(0)
        os.close(w)
        data = os.read(r, 1000).decode().split()
        os.close(r)
        os.waitpid(pid, 0)
        for k, x in zip(fds, data):
            res[k].append(float(x))
        tot.append(sum(float(x) for x in data))
        for fd in fds.values():
            os.close(fd)
        for d in dirs.values():
            os.rmdir(d)
        time.sleep(gap)
finally:
    for p in parents.values():
        os.rmdir(p)
for k, v in res.items():
    print(f"{mode} {k:8s} median {st.median(v)*1e3:.3f} ms max {max(v)*1e3:.3f} ms")
tot.sort()
print(f"{mode} all 5 writes: median {st.median(tot)*1e3:.3f} ms p90 {tot[9*len(tot)//10]*1e3:.3f} ms (n={n})")
