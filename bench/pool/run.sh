#!/usr/bin/env bash
# Pool benchmark, one run (bench/pool/README.md):
#   (pool) pooled round trip of a trivial TypeScript handler (tsx), 1 and 2 workers
#   (a)    spawn mode: node --import tsx per job, through the engine
#   (c)    bare IPC round trip: Rust <-> node echo over NODE_CHANNEL_FD (the raw limit)
#   peers  the Node fork pool and piscina from /work/shared/peers/node-seed, driven in-process
# Usage: bench/pool/run.sh [jobs=5000] [spawn_jobs=30]
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS=${1:-5000}
SPAWN=${2:-30}
SEED=${SEED:-/tmp/poolbench/node-seed}

(cd crates/tsbridge-runtime/tests/fixtures-pool && [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error)
if [ ! -d "$SEED/node_modules" ]; then
  mkdir -p "$(dirname "$SEED")"
  cp -r /work/shared/peers/node-seed "$SEED"
  (cd "$SEED" && rm -rf node_modules && npm ci --no-audit --no-fund --loglevel=error)
fi
cargo build --release -p tsbridge-runtime --example pool_bench
# Best effort: wait (up to 4 min) until the machine is quiet.
[ -f /work/shared/peers/bench/quiet.py ] && python3 /work/shared/peers/bench/quiet.py || true
uptime
./target/release/examples/pool_bench "$JOBS" "$SPAWN"
TSBRIDGE_BENCH_RT=current ./target/release/examples/pool_bench "$JOBS" 0
node bench/pool/node-peers.mjs "$SEED" "$JOBS" $((JOBS / 10))
