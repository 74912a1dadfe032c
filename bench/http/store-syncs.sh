#!/usr/bin/env bash
# The SQLite store's syncs under pooled HTTP load: how many WAL restarts,
# and how long the store's writer thread spent in fsync/fdatasync (every
# write waits meanwhile) and the checkpointer thread (nobody waits), read
# with `perf trace` (tracepoints: the threads are not slowed as under strace).
#
# usage: bench/http/store-syncs.sh SERVER PORT [CONNS] [SECONDS]
#   SERVER: a tsbridge binary (serves bench.toml's pool workflow, store on
#   disk in a temporary dir under ${WDIR:-/tmp})
# prints: NAME rps=.. p99=.. restarts=.. writer_syncs=.. writer_sync_ms=..
#         max=.. ckpt_syncs=.. ckpt_sync_ms=..
# Needs wrk, curl, python3, perf (root); loopback only.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SERVER=$1; PORT=$2; C=${3:-16}; S=${4:-12}
W=$(mktemp -d "${WDIR:-/tmp}/tsbridge-syncs-XXXXXX")
sed -e "s|^bind = .*|bind = \"127.0.0.1:$PORT\"|" -e "s|^url = .*|url = \"sqlite://$W/bench.db\"|" \
  -e "s|^root = \".\"|root = \"$HERE\"|" "$HERE/bench.toml" >"$W/cfg.toml"
env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 "$SERVER" serve --config "$W/cfg.toml" >"$W/server.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 240); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.5; done
URL=http://127.0.0.1:$PORT/workflow/video-generation-pool/execute
# The writer thread is tsb-store-write (builds before 2026-11-27 named both
# store threads tsbridge-store-*, and the writer started last).
WRITER=$(for t in /proc/$PID/task/*; do case "$(cat "$t/comm")" in tsb-store-write|tsbridge-store-*) basename "$t";; esac; done | sort -n | tail -1)
wrk -t1 -c"$C" -d"${S}s" --latency -s "$HERE/post.lua" "$URL" >"$W/wrk.txt" &
WRK=$!
sleep 1
timeout $((S + 5)) perf trace -e fsync,fdatasync -p "$PID" -o "$W/trace.txt" -- sleep $((S - 2)) >/dev/null 2>&1
wait "$WRK"
python3 - "$W" "$WRITER" "$(awk '/Requests\/sec/ {print $2}' "$W/wrk.txt")" \
  "$(awk '$1 == "99%" {print $2}' "$W/wrk.txt")" "$(basename "$SERVER")" <<'PY'
import re, struct, sys
w, writer, rps, p99, name = sys.argv[1:6]
head = open(w + '/bench.db-wal', 'rb').read(16)
restarts = struct.unpack('>I', head[12:16])[0]
mine, other = [], []
for line in open(w + '/trace.txt'):
    m = re.search(r'\(\s*([0-9.]+) ms\): \S+/(\d+) (fsync|fdatasync)', line)
    if m:
        (mine if m.group(2) == writer else other).append(float(m.group(1)))
print(f"{name} rps={rps} p99={p99} restarts={restarts} writer_syncs={len(mine)} "
      f"writer_sync_ms={sum(mine):.0f} max={max(mine or [0]):.1f} "
      f"ckpt_syncs={len(other)} ckpt_sync_ms={sum(other):.0f}")
PY
