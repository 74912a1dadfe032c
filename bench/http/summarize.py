#!/usr/bin/env python3
# Summary of run.sh's wrk.txt -> markdown rows, median [min-max] over runs (the peers' summarize.py format),
# then ratios of tsbridge against the Node peers at the same connection count.
# usage: summarize.py WRK_TXT
import re, sys, collections, statistics as st

def rng(v, f='{:.0f}'):
    return f"{f.format(st.median(v))} [{f.format(min(v))}–{f.format(max(v))}]"

def ms(x, u):
    return float(x) * {'us': 1e-3, 'ms': 1, 's': 1e3}[u]

d = collections.OrderedDict()
cur = None
for l in open(sys.argv[1]):
    m = re.match(r'=== (\S+) run=\d+ c=(\d+) d=(\S+) machine_busy=(\d+)% server_tree_share=(\d+)% quiet-wait (\d+)s', l)
    if m:
        cur = dict(name=m[1], c=int(m[2]), d=m[3], busy=int(m[4]), srv=int(m[5]), qw=int(m[6]), err=0, rps=0.0,
                   p50=float('nan'), p99=float('nan'), wrk=0.0)
        d.setdefault(m[1], []).append(cur)
        continue
    if cur is None:
        continue
    m = re.match(r'\s+(50|99)%\s+([\d.]+)(us|ms|s)', l)
    if m: cur['p' + m[1]] = ms(m[2], m[3])
    m = re.match(r'Requests/sec:\s+([\d.]+)', l)
    if m: cur['rps'] = float(m[1])
    m = re.search(r'Non-2xx or 3xx responses: (\d+)', l)
    if m: cur['err'] += int(m[1])
    m = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', l)
    if m: cur['err'] += sum(int(x) for x in m.groups())
    m = re.match(r'wrkcpu ([\d.]+) ([\d.]+)', l)
    if m: cur['wrk'] = float(m[1]) + float(m[2])

print('| cell | load | req/s | p50 ms | p99 ms | machine CPU | server / wrk CPU | errors |')
print('|---|---|---|---|---|---|---|---|')
med = {}
for k, runs in d.items():
    dur = float(runs[0]['d'].rstrip('s'))
    f = lambda key, fmt='{:.0f}': rng([r[key] for r in runs], fmt)
    wrkpct = [100 * r['wrk'] / (2 * dur) for r in runs]
    p50fmt = '{:.2f}' if st.median([r['p50'] for r in runs]) < 10 else '{:.0f}'
    p99fmt = '{:.2f}' if st.median([r['p99'] for r in runs]) < 10 else '{:.0f}'
    print(f"| {k} | c={runs[0]['c']} {runs[0]['d']} ×{len(runs)} | {f('rps', '{:.1f}')} | {f('p50', p50fmt)} | "
          f"{f('p99', p99fmt)} | {f('busy')}% | {f('srv')}% / {rng(wrkpct)}% | {sum(r['err'] for r in runs)} |")
    med[k] = {key: st.median([r[key] for r in runs]) for key in ('rps', 'p50', 'p99', 'srv')}

print()
print('Ratios (medians): tsbridge / peer. req/s: higher is better; p50, p99, server CPU per request: lower is better.')
print()
print('| tsbridge cell | vs peer | req/s ratio | p50 ratio | p99 ratio | server CPU per req ratio |')
print('|---|---|---|---|---|---|')
pairs = [('tsb-pool', ['node-fork4', 'node-piscina4', 'tsb0-pool']),
         ('tsb0-pool', ['node-fork4', 'node-piscina4']),
         ('tsb-spawn', ['node-spawn-tsx', 'node-spawn-ts-node-T', 'node-spawn-node', 'tsb0-spawn'])]
for t, peers in pairs:
    for k in med:
        if not k.startswith(t + '@'):
            continue
        c = k.split('@')[1]
        for p in peers:
            pk = f'{p}@{c}'
            if pk not in med:
                continue
            a, b = med[k], med[pk]
            cpu_a = a['srv'] / max(a['rps'], 1e-9)
            cpu_b = b['srv'] / max(b['rps'], 1e-9)
            # A server whose CPU was not sampled (0) has no CPU ratio.
            cpu = f"{cpu_a / cpu_b:.2f}×" if cpu_a > 0 and cpu_b > 0 else "n/a"
            print(f"| {k} | {pk} | {a['rps'] / b['rps']:.2f}× | {a['p50'] / b['p50']:.2f}× | {a['p99'] / b['p99']:.2f}× | "
                  f"{cpu} |")
