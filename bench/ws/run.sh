#!/usr/bin/env bash
# 10,000 idle WebSocket subscribers against `tsbridge serve` (bench/ws/ws.toml):
# JOBS jobs are submitted (one runs and stays silent, the rest wait in the queue),
# then CONNS connections to /v1/ws each subscribe to one of them; the script
# reports the server's RSS before and after (subscribers.js). Loopback only;
# the server this script starts is stopped on exit (trap).
# usage: bench/ws/run.sh   env: CONNS (10000) JOBS (1000) HOLD (15 s) TSB (target/release/tsbridge)
#        SERVER_ENV (extra NAME=VALUE words for the server's environment, e.g. MALLOC_ARENA_MAX=2)
# Needs: node 20, the `ws` npm package (installed into /tmp/bench-ws-node if missing),
# a release build (`cargo build --release -p tsbridge`).
set -uo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
ROOT=$(cd ../.. && pwd)
TSB=${TSB:-$ROOT/target/release/tsbridge}
CONNS=${CONNS:-10000}
JOBS=${JOBS:-1000}
HOLD=${HOLD:-15}
OUT=${OUT:-/tmp/tsbridge-bench/ws}
WSMOD=/tmp/bench-ws-node
mkdir -p "$OUT"
if [ ! -d "$WSMOD/node_modules/ws" ]; then
  mkdir -p "$WSMOD" && (cd "$WSMOD" && npm install --no-audit --no-fund ws@8 >/dev/null)
fi
SPID=""
stop_server() {
  if [ -n "$SPID" ]; then
    kill -TERM "$SPID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SPID" 2>/dev/null
    wait "$SPID" 2>/dev/null
    SPID=""
  fi
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# A fresh store every run (jobs left by an earlier run would be recovered).
DB=$(sed -n 's|^url = "sqlite://\(.*\)"$|\1|p' "$HERE/ws.toml")
[ -n "$DB" ] && rm -f -- "$DB" "$DB"-*
# shellcheck disable=SC2086 # SERVER_ENV is a list of words
env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 ${SERVER_ENV:-} \
  prlimit --nofile="$(ulimit -Hn)" "$TSB" serve --config "$HERE/ws.toml" >"$OUT/server.log" 2>&1 &
SPID=$!
for _ in $(seq 600); do curl -sf http://127.0.0.1:8789/healthz >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:8789/healthz >/dev/null || { tail "$OUT/server.log"; exit 1; }
sleep 2
ulimit -n "$(ulimit -Hn)"
echo "== $(date -u +%FT%TZ) $(uname -r) conns=$CONNS jobs=$JOBS server=$TSB ${SERVER_ENV:-}; load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/ws.txt"
NODE_PATH=$WSMOD/node_modules node "$HERE/subscribers.js" --base http://127.0.0.1:8789 --pid "$SPID" \
  --conns "$CONNS" --jobs "$JOBS" --hold "$HOLD" 2>&1 | tee -a "$OUT/ws.txt"
rc=${PIPESTATUS[0]}
exit "$rc"
