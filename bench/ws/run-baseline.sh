#!/usr/bin/env bash
# The same 10,000 idle subscribers against a bare axum WebSocket server
# (bench/ws/axum-baseline): how much of tsbridge's per-connection memory is
# axum/tungstenite's own, with tungstenite's default 128 KiB read buffer and
# with 4 KiB and 1 KiB ones (tsbridge uses 1 KiB). Loopback only; the server is stopped on exit.
# usage: bench/ws/run-baseline.sh   env: CONNS (10000)
set -uo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
CONNS=${CONNS:-10000}
WSMOD=/tmp/bench-ws-node
[ -d "$WSMOD/node_modules/ws" ] || { mkdir -p "$WSMOD" && (cd "$WSMOD" && npm install --no-audit --no-fund ws@8 >/dev/null); }
(cd axum-baseline && CARGO_TARGET_DIR=/tmp/bench-ws-target cargo build --release --quiet) || exit 1
BIN=/tmp/bench-ws-target/release/ws-axum-baseline
SPID=""
stop_server() { [ -n "$SPID" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null; SPID=""; }
trap stop_server EXIT
ulimit -n "$(ulimit -Hn)"
for buf in default 4096 1024; do
  if [ $buf = default ]; then "$BIN" & else WS_READ_BUFFER=$buf "$BIN" & fi
  SPID=$!
  for _ in $(seq 100); do curl -s -o /dev/null -X POST http://127.0.0.1:8790/v1/jobs && break; sleep 0.1; done
  echo "== axum baseline, read buffer $buf, $(date -u +%FT%TZ), load: $(cut -d" " -f1-3 /proc/loadavg)"
  NODE_PATH=$WSMOD/node_modules node "$HERE/subscribers.js" --base http://127.0.0.1:8790 --pid "$SPID" \
    --conns "$CONNS" --jobs 1 --hold 5
  stop_server
done
