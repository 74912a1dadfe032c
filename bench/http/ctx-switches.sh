#!/usr/bin/env bash
# Context switches per request of a pooled server's threads and of its
# workers (BENCHMARKS.md "Pooled HTTP, 2026-11-28 morning"): tsbridge on
# bench.toml's pooled workflow, or the raw pooled server with its SQLite
# store (crates/tsbridge-runtime/examples/raw_pool_server.rs).
# usage: bench/http/ctx-switches.sh tsb|raw BIN [CONNS] [SECS]
#   e.g. bench/http/ctx-switches.sh tsb target/release/tsbridge 16 8
# Needs wrk, curl, bc; loopback port 8972; the server is stopped at the end.
set -u
KIND=$1; BIN=$2; C=${3:-16}; S=${4:-8}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=$(mktemp -d /tmp/tsbridge-ctx-XXXXXX)
trap 'rm -rf "$W"' EXIT; PORT=8972
CLEAN=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp LANG=C.UTF-8)
if [ $KIND = tsb ]; then
sed -e "s|^bind = .*|bind = \"127.0.0.1:$PORT\"|" -e "s|^url = .*|url = \"sqlite://$W/bench.db\"|" -e "s|^root = \".\"|root = \"$HERE\"|" ${SED:+-e "$SED"} $HERE/bench.toml > $W/cfg.toml
"${CLEAN[@]}" $BIN serve --config $W/cfg.toml > $W/serve.log 2>&1 &
else
"${CLEAN[@]}" $BIN --bind 127.0.0.1:$PORT --root "$ROOT" --threads 2 --store sqlite:$W/raw.db > $W/serve.log 2>&1 &
fi
SP=$!
URL=http://127.0.0.1:$PORT/workflow/video-generation-pool/execute
for i in $(seq 200); do curl -sf -XPOST -H 'content-type: application/json' -d '{"parameters":{}}' $URL >/dev/null && break; sleep 0.3; done
wrk -t1 -c$C -d3s -s $HERE/post.lua $URL >/dev/null 2>&1
cs() { local s=0; for f in /proc/$SP/task/*/status; do s=$((s + $(awk '/ctxt_switches/{t+=$2} END{print t}' $f))); done; echo $s; }
kcs() { local s=0; for k in $(ps -o pid= --ppid $SP); do for f in /proc/$k/task/*/status; do s=$((s + $(awk '/ctxt_switches/{t+=$2} END{print t}' $f 2>/dev/null || echo 0))); done; done; echo $s; }
nthr=$(ls /proc/$SP/task | wc -l)
a=$(cs); ka=$(kcs)
out=$(wrk -t1 -c$C -d${S}s -s $HERE/post.lua $URL)
b=$(cs); kb=$(kcs)
n=$(echo "$out" | awk '/requests in/{print $1}')
echo "$KIND threads=$nthr reqs=$n server_cs/req=$(echo "scale=2; ($b-$a)/$n" | bc) workers_cs/req=$(echo "scale=2; ($kb-$ka)/$n" | bc) $(echo "$out" | grep Requests/sec)"
kill $SP; wait $SP 2>/dev/null
