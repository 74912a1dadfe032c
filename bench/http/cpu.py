#!/usr/bin/env python3
# Copied from the Node peers (shared/peers/bench/cpu.py), unchanged, so both sides are sampled alike.
# cpu.py snap PID  -> prints "total idle server_ticks"   (server_ticks = utime+stime+cutime+cstime of PID and all descendants)
import sys, os
def stat_cpu():
    f = open('/proc/stat').readline().split()[1:]
    v = list(map(int, f)); return sum(v[:8]), v[3] + v[4]
def tree(pid):
    kids = {}
    for p in os.listdir('/proc'):
        if p.isdigit():
            try:
                s = open(f'/proc/{p}/stat').read(); ppid = int(s.rsplit(')', 1)[1].split()[1]); kids.setdefault(ppid, []).append(int(p))
            except Exception: pass
    out, st = [], [pid]
    while st:
        x = st.pop(); out.append(x); st += kids.get(x, [])
    return out
def ticks(pid):
    t = 0
    for p in tree(pid):
        try:
            f = open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()
            t += sum(map(int, f[11:15]))
        except Exception: pass
    return t
tot, idle = stat_cpu()
print(tot, idle, ticks(int(sys.argv[1])))
