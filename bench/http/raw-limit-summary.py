#!/usr/bin/env python3
# Summary of raw-limit.sh's lines: per connection count and server, the
# median of each column over the rounds, and the median over rounds of the
# server's req/s (and p99) over the fork pool's in the SAME round.
# usage: raw-limit-summary.py LINES... (several runs' lines: their rounds are pooled)
import re, sys, statistics as st
from collections import defaultdict

def ms(v):
    m = re.fullmatch(r'([\d.]+)(us|ms|s)', v)
    return float(m[1]) * {'us': 1e-3, 'ms': 1, 's': 1e3}[m[2]] if m else float('nan')

runs = defaultdict(dict)   # (c, (file, round)) -> name -> row
rnd = 0
lines = [(i, l) for i, path in enumerate(sys.argv[1:]) for l in open(path)]
for fi, line in lines:
    m = re.match(r'# round (\d+) c=(\d+)', line)
    if m:
        rnd = (fi, int(m[1]))
        continue
    f = line.split()
    if len(f) < 3 or not f[1].startswith('c='):
        continue
    kv = dict(x.split('=', 1) for x in f[1:] if '=' in x)
    row = dict(rps=float(kv['rps']), p50=ms(kv['p50']), p99=ms(kv['p99']),
               server=int(kv['server']), workers=int(kv['workers']), wrk=int(kv['wrk']),
               machine=int(kv['machine_busy']), own=int(kv['server']) + int(kv['workers']) + int(kv['wrk']), idle=int(kv['idle'].rstrip('%')), load=float(kv.get('load', 'nan')))
    runs[(int(kv['c']), rnd)][f[0]] = row

names = []
for rows in runs.values():
    for n in rows:
        if n not in names:
            names.append(n)
med = lambda v: st.median(v) if v else float('nan')
print('| c | server | rounds | req/s | x fork4 (same round) | p50 ms | p99 ms | p99 x fork4 | server | workers | wrk | all three | machine busy | idle % | load |')
print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
for c in sorted({c for c, _ in runs}):
    for n in names:
        rs = [rows[n] for (cc, _), rows in sorted(runs.items()) if cc == c and n in rows]
        if not rs:
            continue
        ratio = [rows[n]['rps'] / rows['fork4']['rps'] for (cc, _), rows in runs.items()
                 if cc == c and n in rows and 'fork4' in rows and rows['fork4']['rps'] > 0]
        p99r = [rows[n]['p99'] / rows['fork4']['p99'] for (cc, _), rows in runs.items()
                if cc == c and n in rows and 'fork4' in rows and rows['fork4']['p99'] > 0]
        col = lambda k: med([r[k] for r in rs])
        print(f"| {c} | {n} | {len(rs)} | {col('rps'):,.0f} | {med(ratio):.2f}x [{min(ratio, default=0):.2f}-{max(ratio, default=0):.2f}] "
              f"| {col('p50'):.2f} | {col('p99'):.2f} | {med(p99r):.2f}x | {col('server'):.0f} | {col('workers'):.0f} "
              f"| {col('wrk'):.0f} | {col('own'):.0f} | {col('machine'):.0f} | {col('idle'):.0f} | {col('load'):.2f} |")
print('\nCPU columns: microseconds per request (median over rounds); all three = server + workers + wrk.')
