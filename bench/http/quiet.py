#!/usr/bin/env python3
# Wait until the (shared) machine is quiet: whole-machine CPU busy < 15% for 2 consecutive 1 s samples.
# Same method as the Node peers' bench/quiet.py; the maximum wait is QUIET_MAX seconds (default 240).
# Prints how long we waited and the last sample.
import os, time
MAX = float(os.environ.get('QUIET_MAX', '240'))
def snap():
    v = list(map(int, open('/proc/stat').readline().split()[1:9])); return sum(v), v[3] + v[4]
t0 = time.time(); ok = 0; a = snap(); busy = 100
while time.time() - t0 < MAX:
    time.sleep(1); b = snap(); busy = 100 * (1 - (b[1] - a[1]) / max(1, b[0] - a[0])); a = b
    ok = ok + 1 if busy < 15 else 0
    if ok >= 2: break
print(f"quiet-wait {time.time()-t0:.0f}s last_busy={busy:.0f}%", flush=True)
