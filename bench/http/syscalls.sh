#!/usr/bin/env bash
# System calls per pooled request, by thread and by call (BENCHMARKS.md
# "System calls per pooled request"): tsbridge on bench.toml's pooled
# workflow, or the raw pooled server with its SQLite store
# (crates/tsbridge-runtime/examples/raw_pool_server.rs), under wrk; the
# server is traced with `perf trace -s` for the whole measured run.
# usage: bench/http/syscalls.sh tsb|raw BIN [CONNS] [SECS]
# Needs perf, wrk, curl, python3; loopback port 8973.
set -u
KIND=$1; BIN=$2; C=${3:-16}; S=${4:-6}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
W=$(mktemp -d /tmp/tsbridge-sc-XXXXXX); trap 'rm -rf "$W"' EXIT; PORT=8973
CLEAN=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp LANG=C.UTF-8)
if [ $KIND = tsb ]; then
sed -e "s|^bind = .*|bind = \"127.0.0.1:$PORT\"|" -e "s|^url = .*|url = \"sqlite://$W/bench.db\"|" -e "s|^root = \".\"|root = \"$HERE\"|" $HERE/bench.toml > $W/cfg.toml
"${CLEAN[@]}" $BIN serve --config $W/cfg.toml > $W/serve.log 2>&1 &
else
"${CLEAN[@]}" $BIN --bind 127.0.0.1:$PORT --root "$ROOT" --threads 2 --store sqlite:$W/raw.db > $W/serve.log 2>&1 &
fi
SP=$!
URL=http://127.0.0.1:$PORT/workflow/video-generation-pool/execute
for i in $(seq 200); do curl -sf -XPOST -H 'content-type: application/json' -d '{"parameters":{}}' $URL >/dev/null && break; sleep 0.3; done
wrk -t1 -c$C -d3s -s $HERE/post.lua $URL >/dev/null 2>&1
perf trace -s -p $SP -o $W/trace.txt &
TP=$!
sleep 1
out=$(wrk -t1 -c$C -d${S}s -s $HERE/post.lua $URL)
kill -INT $TP; wait $TP
n=$(echo "$out" | awk '/requests in/{print $1}')
echo "$KIND reqs=$n $(echo "$out" | grep Requests/sec)"
python3 - "$W/trace.txt" "$n" <<'PY'
import sys,re,collections
txt=open(sys.argv[1]).read(); n=int(sys.argv[2])
tot=collections.Counter(); per_thread={}
cur=None
for line in txt.splitlines():
    m=re.match(r'\s*(\S.*?) \((\d+)\), (\d+) events',line)
    if m: cur=m.group(1)+"/"+m.group(2); per_thread[cur]=collections.Counter(); continue
    m=re.match(r'\s+(\w+)\s+(\d+)\s+\d+\s+([\d.]+)',line)
    if m and cur:
        per_thread[cur][m.group(1)]+=int(m.group(2)); tot[m.group(1)]+=int(m.group(2))
print("total syscalls/req %.2f"%(sum(tot.values())/n))
for k,v in tot.most_common(25): print("  %-22s %.3f"%(k,v/n))
print("per thread (syscalls/req):")
for t,c in sorted(per_thread.items(), key=lambda x:-sum(x[1].values())):
    print("  %-30s %.2f  %s"%(t,sum(c.values())/n, ", ".join("%s %.2f"%(k,v/n) for k,v in c.most_common(6))))
PY
kill $SP; wait $SP 2>/dev/null
