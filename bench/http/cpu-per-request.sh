#!/usr/bin/env bash
# CPU per request of one server under wrk: the server process alone, and its
# children (tsbridge's warm pool workers, the Node peer's forked workers).
# A same-session A/B measure for noisy machines: run two builds alternately,
# a few times each, and compare server_us/req and workers_us/req.
#
# usage: bench/http/cpu-per-request.sh SERVER PORT [CONNS] [DURATION]
#   SERVER: a tsbridge binary (serves bench.toml's pool workflow), or
#           node-fork4 (the Node fork pool of $SEED, default /tmp/node-seed)
#   e.g.   bench/http/cpu-per-request.sh target/release/tsbridge 8790 16 15s
# prints: NAME c=CONNS rps=.. p50=.. p99=.. n=REQUESTS server_us/req=.. workers_us/req=..
#   disk_kib/req=.. (bytes the server sent to storage per request, from
#   /proc/PID/io write_bytes: its store's WAL and database file; tsbridge only)
# Needs wrk, curl, python3; loopback only; the server is stopped at the end.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SERVER=$1; PORT=$2; C=${3:-16}; D=${4:-8s}
SEED=${SEED:-/tmp/node-seed}
W=$(mktemp -d /tmp/tsbridge-cpu-XXXXXX)
CLEAN_ENV=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp LANG=C.UTF-8)
if [ "$SERVER" = node-fork4 ]; then
  (cd "$SEED" && exec "${CLEAN_ENV[@]}" PORT="$PORT" node pool-server.js) >"$W/server.log" 2>&1 &
  PID=$!; NAME=node-fork4
  URL=http://127.0.0.1:$PORT/workflow/video-generation/execute
  ready() { curl -sf -XPOST -H 'content-type: application/json' -d '{"parameters":{}}' "$URL" >/dev/null; }
else
  sed -e "s|^bind = .*|bind = \"127.0.0.1:$PORT\"|" -e "s|^url = .*|url = \"sqlite://$W/bench.db\"|" \
    -e "s|^root = \".\"|root = \"$HERE\"|" "$HERE/bench.toml" >"$W/cfg.toml"
  "${CLEAN_ENV[@]}" "$SERVER" serve --config "$W/cfg.toml" >"$W/server.log" 2>&1 &
  PID=$!; NAME=$(basename "$SERVER")
  URL=http://127.0.0.1:$PORT/workflow/video-generation-pool/execute
  ready() { curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; }
fi
trap 'kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 240); do ready && break; sleep 0.5; done
wrk -t1 -c"$C" -d3s -s "$HERE/post.lua" "$URL" >/dev/null   # warm-up
snap() { python3 - "$PID" <<'PY'
import os, sys
pid = int(sys.argv[1])
def ticks(p):
    f = open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()
    return int(f[11]) + int(f[12])
kids = [int(p) for p in os.listdir('/proc') if p.isdigit()
        and open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1] == str(pid)]
def written(p):
    try:
        for line in open(f'/proc/{p}/io'):
            if line.startswith('write_bytes:'):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
print(ticks(pid), sum(ticks(k) for k in kids), written(pid))
PY
}
read -r s0 k0 w0 < <(snap)
wrk -t1 -c"$C" -d"$D" --latency -s "$HERE/post.lua" "$URL" >"$W/wrk.txt"
read -r s1 k1 w1 < <(snap)
N=$(grep -o "[0-9]* requests in" "$W/wrk.txt" | awk '{print $1}')
RPS=$(awk '/Requests\/sec/ {print $2}' "$W/wrk.txt")
P50=$(awk '$1 == "50%" {print $2}' "$W/wrk.txt")
P99=$(awk '$1 == "99%" {print $2}' "$W/wrk.txt")
TICK_US=$((1000000 / $(getconf CLK_TCK)))
echo "$NAME c=$C rps=$RPS p50=$P50 p99=$P99 n=$N server_us/req=$(( (s1 - s0) * TICK_US / N )) workers_us/req=$(( (k1 - k0) * TICK_US / N )) disk_kib/req=$(awk -v b=$((w1 - w0)) -v n="$N" 'BEGIN {printf "%.1f", b / 1024 / n}')"
