#!/usr/bin/env bash
# Engine benchmarks (numbers go in the engine's report / docs):
#  1. divan: engine spawn+wait of /bin/true vs bare std::process::Command (and
#     the fork+pre_exec floor), capture of 1 GiB through the engine vs a raw
#     read loop (crates/tsbridge-process/benches/spawn.rs);
#  2. TypeScript startup in spawn mode, hyperfine -N: the engine running
#     fixtures/ts/hello.ts through the warm transpile cache, vs plain
#     `node hello.js` (pre-bundled), `node --import tsx hello.ts` and ts-node
#     with type checking.
# Needs: cargo, node, the root npm packages (`make setup`), hyperfine (apt).
# Usage: bench/engine/run.sh [--quick] [--startup-only]
# Every command runs with the same minimal environment the engine gives its
# children (`env -i PATH HOME`): an inherited NODE_EXTRA_CA_CERTS alone costs
# node ~40 ms of startup CPU and would skew the comparison.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
RUNS=30; WARMUP=5; DIVAN=1
for a in "$@"; do
  case "$a" in
    --quick) RUNS=10; WARMUP=2 ;;
    --startup-only) DIVAN=0 ;;
  esac
done
OUT=${OUT:-/tmp/tsbridge-bench-engine}
mkdir -p "$OUT"

echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$DIVAN" = 1 ]; then
  echo "== 1. divan (spawn overhead, capture throughput)"
  cargo bench -p tsbridge-process --bench spawn 2>&1 | tee "$OUT/divan.txt" | sed -n '/^spawn/,$p'
fi

echo "== 2. TypeScript startup (spawn mode)"
cargo build --release -p tsbridge-process --bin tsbridge-engine-probe >/dev/null 2>&1
PROBE=$ROOT/target/release/tsbridge-engine-probe
HELLO=$ROOT/fixtures/ts/hello.ts
# Warm the transpile cache, and make the plain-node reference bundle.
"$PROBE" --script -- "$HELLO" >/dev/null
"$ROOT/node_modules/.bin/esbuild" "$HELLO" --bundle --platform=node --format=cjs \
  --packages=external --log-level=warning --outfile="$OUT/hello.js"
cat > "$OUT/tsconfig.json" <<JSON
{ "compilerOptions": { "module": "commonjs", "moduleResolution": "node", "target": "es2020", "strict": true,
  "esModuleInterop": true, "typeRoots": ["$ROOT/node_modules/@types"], "types": ["node"] } }
JSON
cp "$ROOT/fixtures/ts/hello.ts" "$ROOT/fixtures/ts/greet.ts" "$OUT/"
if ! command -v hyperfine >/dev/null; then
  echo "hyperfine not found (apt-get install hyperfine); skipping startup comparison"; exit 0
fi
cd "$OUT"
E="env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp"
hyperfine -N --warmup "$WARMUP" --runs "$RUNS" --export-markdown "$OUT/startup.md" \
  -n "node hello.js (pre-bundled)" "$E node $OUT/hello.js" \
  -n "engine: hello.ts via transpile cache" "$E $PROBE --script -- $HELLO" \
  -n "engine: node hello.js (no TS)" "$E $PROBE -- node $OUT/hello.js" \
  -n "node --import tsx hello.ts" "$E node --import $ROOT/node_modules/tsx/dist/loader.mjs $HELLO"
hyperfine -N --warmup 1 --runs 5 --export-markdown "$OUT/startup-tsnode.md" \
  -n "ts-node (type-check) hello.ts" "$E node -r $ROOT/node_modules/ts-node/register/type-check.js $OUT/hello.ts"
cat "$OUT/startup.md" "$OUT/startup-tsnode.md"
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
