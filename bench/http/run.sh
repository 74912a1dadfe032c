#!/usr/bin/env bash
# End-to-end HTTP benchmark of `tsbridge serve` against the Node peers
# (shared/peers/node-seed), same method as the peers' bench/run-wrk.sh:
# wrk -t1 --timeout 30s --latency -s post.lua, quiet.py before every run,
# machine CPU and server-tree CPU sampled around each run (cpu.py).
#
# usage: bench/http/run.sh [CELL ...]        CELL = SERVER@CONNS, e.g. tsb-pool@16
#        bench/http/run.sh rss                idle RSS of tsbridge serve only
#   SERVER: tsb-spawn tsb-pool tsb0-spawn tsb0-pool node-spawn-node node-spawn-ts-node-T node-spawn-tsx node-fork4 node-piscina4
#   no CELL: every server at its default connection counts (see CONNS below), then rss.
# env: REPEATS (3), DUR_POOL (15s), DUR_SPAWN (10s), SEED (/tmp/node-seed: a copy
#   of shared/peers/node-seed with `npm ci` done), TSB (target/release/tsbridge),
#   OUT (/tmp/tsbridge-bench/http), QUIET_MAX (240 s max wait for an idle machine),
#   TSB0 (a second tsbridge binary, e.g. a build of the previous commit, served as
#   tsb0-pool/tsb0-spawn on port 8789 with its own store: before/after in one run),
#   TSB_PORT/TSB0_PORT (8788/8789), PEER_PORT_OFFSET (0: the Node peers on 3001..3005),
#   BENCH_DIR (/tmp/tsbridge-bench: the stores; each run deletes the ones it uses):
#   another run on the same machine needs other ports and another BENCH_DIR.
# Needs: wrk, python3, curl, node 20, a release build (`cargo build --release -p tsbridge`).
# Loopback only. Every server this script starts is stopped on exit (trap).
#
# Every server runs with the same minimal environment (env -i PATH HOME LANG):
# tsbridge gives its children an allowlisted environment anyway, and an inherited
# NODE_EXTRA_CA_CERTS alone costs each node child ~40 ms of startup CPU, which
# would penalise only the Node spawn-per-request peers.
set -uo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
ROOT=$(cd ../.. && pwd)
TSB=${TSB:-$ROOT/target/release/tsbridge}
SEED=${SEED:-/tmp/node-seed}
OUT=${OUT:-/tmp/tsbridge-bench/http}
REPEATS=${REPEATS:-3}
DUR_POOL=${DUR_POOL:-15s}
DUR_SPAWN=${DUR_SPAWN:-10s}
TSB_PORT=${TSB_PORT:-8788}
TSB0=${TSB0:-}
TSB0_PORT=${TSB0_PORT:-8789}
PEER_PORT_OFFSET=${PEER_PORT_OFFSET:-0}
BENCH_DIR=${BENCH_DIR:-/tmp/tsbridge-bench}
CLEAN_ENV=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp LANG=C.UTF-8)
mkdir -p "$OUT"
WRK_OUT=$OUT/wrk.txt
RSS_OUT=$OUT/rss.txt

declare -A PEER_CMD=(
  [node-spawn-node]="env RUNNER=node node server.js"
  [node-spawn-ts-node-T]="env RUNNER=ts-node-t node server.js"
  [node-spawn-tsx]="env RUNNER=tsx node server.js"
  [node-fork4]="node pool-server.js"
  [node-piscina4]="node piscina-server.js"
)
declare -A CONNS=(
  [tsb-spawn]="1 16" [node-spawn-node]="1 16" [node-spawn-ts-node-T]="1 16" [node-spawn-tsx]="1 16"
  [tsb-pool]="1 16 256" [node-fork4]="1 16 256" [node-piscina4]="1 16 256"
  [tsb0-spawn]="1 16" [tsb0-pool]="1 16 256"
)
declare -A PATHS=(
  [tsb-spawn]=/workflow/video-generation/execute
  [tsb-pool]=/workflow/video-generation-pool/execute
  [tsb0-spawn]=/workflow/video-generation/execute
  [tsb0-pool]=/workflow/video-generation-pool/execute
)

PIDS=()   # every server this script started
stop_servers() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  PIDS=()
}
trap stop_servers EXIT
trap 'stop_servers; exit 130' INT TERM

# wait_until CMD...: retry for up to 60 s.
wait_until() {
  for _ in $(seq 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

tsb_ready() { # [PORT]
  curl -sf "http://127.0.0.1:${1:-$TSB_PORT}/readyz" | python3 -c '
import json, sys
d = json.load(sys.stdin)["data"]
w = d["workflows"]
sys.exit(0 if d["ready"] and all(v == "available" for v in w.values()) else 1)'
}

declare -A SPID=()  # server name -> pid (tsb serves both tsb-spawn and tsb-pool)
declare -A PORT=([tsb]=$TSB_PORT [tsb0]=$TSB0_PORT [node-spawn-node]=$((3001 + PEER_PORT_OFFSET))
  [node-spawn-ts-node-T]=$((3002 + PEER_PORT_OFFSET)) [node-spawn-tsx]=$((3003 + PEER_PORT_OFFSET))
  [node-fork4]=$((3004 + PEER_PORT_OFFSET)) [node-piscina4]=$((3005 + PEER_PORT_OFFSET)))
server_of() { case $1 in tsb-*) echo tsb ;; tsb0-*) echo tsb0 ;; *) echo "$1" ;; esac; }
url_of() {
  local s; s=$(server_of "$1")
  echo "http://127.0.0.1:${PORT[$s]}${PATHS[$1]:-/workflow/video-generation/execute}"
}

# bench_config DB PORT: bench.toml with this store (in BENCH_DIR) and port, in OUT.
bench_config() {
  local cfg=$OUT/bench-$2.toml
  sed -e "s|^bind = .*|bind = \"127.0.0.1:$2\"|" \
    -e "s|^url = .*|url = \"sqlite://$BENCH_DIR/$1\"|" -e "s|^root = \".\"|root = \"$HERE\"|" \
    "$HERE/bench.toml" >"$cfg"
  echo "$cfg"
}

# start_tsb: a fresh store each time.
start_tsb() {
  rm -rf "$BENCH_DIR"/bench.db*
  mkdir -p "$BENCH_DIR"
  "${CLEAN_ENV[@]}" "$TSB" serve --config "$(bench_config bench.db "$TSB_PORT")" >"$OUT/server-tsb.log" 2>&1 &
  SPID[tsb]=$!; PIDS+=($!)
  if ! wait_until tsb_ready; then
    echo "tsbridge did not become ready; /readyz says:" >&2
    curl -s "http://127.0.0.1:$TSB_PORT/readyz" >&2; echo >&2
    tail -20 "$OUT/server-tsb.log" >&2
    return 1
  fi
}

# start_tsb0: the TSB0 binary with bench.toml on its own port and store.
start_tsb0() {
  rm -rf "$BENCH_DIR"/bench0.db*
  mkdir -p "$BENCH_DIR"
  "${CLEAN_ENV[@]}" "$TSB0" serve --config "$(bench_config bench0.db "$TSB0_PORT")" >"$OUT/server-tsb0.log" 2>&1 &
  SPID[tsb0]=$!; PIDS+=($!)
  if ! wait_until tsb_ready "$TSB0_PORT"; then
    echo "TSB0 did not become ready" >&2; tail -20 "$OUT/server-tsb0.log" >&2
    return 1
  fi
}

start_peer() {
  (cd "$SEED" && exec "${CLEAN_ENV[@]}" PORT="${PORT[$1]}" ${PEER_CMD[$1]}) >"$OUT/server-$1.log" 2>&1 &
  SPID[$1]=$!; PIDS+=($!)
  wait_until curl -sf "http://127.0.0.1:${PORT[$1]}/health"
}

# rss_line PID LABEL: VmRSS/VmHWM of the server process, plus the RSS of its descendants.
rss_line() {
  python3 - "$1" "$2" <<'EOF' | tee -a "$RSS_OUT"
import os, sys
pid, label = int(sys.argv[1]), sys.argv[2]
def status(p):
    d = {}
    for l in open(f'/proc/{p}/status'):
        k, _, v = l.partition(':'); d[k] = v.strip()
    return d
kids = {}
for p in os.listdir('/proc'):
    if p.isdigit():
        try:
            s = open(f'/proc/{p}/stat').read(); kids.setdefault(int(s.rsplit(')', 1)[1].split()[1]), []).append(int(p))
        except Exception: pass
desc, st = [], list(kids.get(pid, []))
while st:
    x = st.pop(); desc.append(x); st += kids.get(x, [])
kb = lambda s: int(s.split()[0])
me = status(pid)
child_rss = 0
for p in desc:
    try: child_rss += kb(status(p).get('VmRSS', '0 kB'))
    except Exception: pass
print(f"rss {label}: VmRSS={kb(me['VmRSS'])/1024:.1f}MiB VmHWM={kb(me['VmHWM'])/1024:.1f}MiB "
      f"threads={me['Threads']} children={len(desc)} children_RSS={child_rss/1024:.1f}MiB")
EOF
}

# ensure_up SERVER: restart a server that died (logged in wrk.txt; it happened once: an
# outside SIGTERM while other engineers' tests ran on this shared machine).
ensure_up() {
  kill -0 "${SPID[$1]}" 2>/dev/null && return 0
  echo "!!! $1 (pid ${SPID[$1]}) is gone; restarting it" | tee -a "$WRK_OUT" >&2
  if [ "$1" = tsb ]; then
    cp "$OUT/server-tsb.log" "$OUT/server-tsb.died-$(date +%s).log"
    start_tsb
  elif [ "$1" = tsb0 ]; then
    start_tsb0
  else
    start_peer "$1"
  fi
}

measure() { # CELL RUN
  local cell=$1 r=$2 n=${1%@*} c=${1#*@} url d pid q a b out busy srv
  url=$(url_of "$n")
  ensure_up "$(server_of "$n")" || return 1
  pid=${SPID[$(server_of "$n")]}
  case $n in *spawn*) d=$DUR_SPAWN ;; *) d=$DUR_POOL ;; esac
  q=$(python3 quiet.py)
  a=($(python3 cpu.py "$pid"))
  out=$(/usr/bin/time -f 'wrkcpu %U %S' wrk -t1 -c"$c" -d"$d" --timeout 30s --latency -s post.lua "$url" 2>&1)
  b=($(python3 cpu.py "$pid"))
  busy=$(python3 -c "t=$((b[0] - a[0]));i=$((b[1] - a[1]));print(f'{100*(t-i)/t:.0f}')")
  srv=$(python3 -c "t=$((b[0] - a[0]));print(f'{100*($((b[2] - a[2])))/t:.0f}')")
  echo "=== $n@$c run=$r c=$c d=$d machine_busy=${busy}% server_tree_share=${srv}% $q" >>"$WRK_OUT"
  echo "$out" >>"$WRK_OUT"
  echo "$q busy=$busy% srv=$srv% $(echo "$out" | grep -E 'Requests/sec|^ +(50|99)%|Non-2xx|Socket errors' | tr -s ' ' | paste -sd' ')"
}

# Idle RSS of tsbridge serve with the example config (copied to OUT: its store lives beside it).
rss_example() {
  local ex=$OUT/omega-workflow
  rm -rf "$ex"; cp -r "$ROOT/examples/omega-workflow" "$ex"; rm -rf "$ex/.tsbridge"
  sed -i "s/^bind = .*/bind = \"127.0.0.1:$TSB_PORT\"/" "$ex/tsbridge.toml"
  "${CLEAN_ENV[@]}" TSBRIDGE_TOKEN=bench-token "$TSB" serve --config "$ex/tsbridge.toml" >"$OUT/server-example.log" 2>&1 &
  local pid=$!; PIDS+=($pid)
  wait_until curl -sf "http://127.0.0.1:$TSB_PORT/healthz" || { tail "$OUT/server-example.log"; stop_servers; return 1; }
  sleep 3; rss_line "$pid" "examples/omega-workflow after startup"
  # a little load: 200 pooled data-analysis jobs, 2 at a time
  local body='{"parameters":{"inputPath":"data/sample.csv","outputPath":"data/out/bench-summary.json"}}'
  for _ in $(seq 100); do
    for _ in 1 2; do
      curl -s -o /dev/null -w '%{http_code}\n' -H 'authorization: Bearer bench-token' -H 'content-type: application/json' \
        -d "$body" "http://127.0.0.1:$TSB_PORT/workflow/data-analysis-pooled/execute" &
    done
    wait
  done | sort | uniq -c | sed 's/^/HTTP status count: /' | tee -a "$RSS_OUT"
  sleep 2; rss_line "$pid" "examples/omega-workflow after 200 pooled jobs"
  stop_servers
}

echo "== $(date -u +%FT%TZ) $(uname -r) nproc=$(nproc) load: $(cut -d' ' -f1-3 /proc/loadavg) tsbridge at $(git -C "$ROOT" rev-parse --short HEAD)${TSB0:+ TSB0=$TSB0}" | tee -a "$WRK_OUT" "$RSS_OUT"
[ -x "$TSB" ] || { echo "no $TSB: cargo build --release -p tsbridge" >&2; exit 1; }
[ -d "$SEED/node_modules" ] || { echo "no $SEED/node_modules: cp -r shared/peers/node-seed $SEED && (cd $SEED && npm ci)" >&2; exit 1; }

if [ $# -eq 0 ]; then
  set -- tsb-pool node-fork4 node-piscina4 tsb-spawn node-spawn-node node-spawn-ts-node-T node-spawn-tsx rss
fi
# Cells in order; a bare SERVER means all of its default connection counts.
CELLS=(); DO_RSS=0
for cell in "$@"; do
  n=${cell%@*}
  if [ "$n" = rss ]; then DO_RSS=1; continue; fi
  [ -n "${CONNS[$n]+x}" ] || { echo "unknown server $n" >&2; exit 2; }
  if [ "$cell" = "$n" ]; then for c in ${CONNS[$n]}; do CELLS+=("$n@$c"); done; else CELLS+=("$cell"); fi
done
# Cells grouped by connection count (pooled ones first), so tsbridge and its peers run back to back.
if [ ${#CELLS[@]} -gt 0 ]; then
  mapfile -t CELLS < <(printf '%s\n' "${CELLS[@]}" | awk -F@ '{print ($1 ~ /spawn/ ? 1 : 0), $2, NR, $0}' |
    sort -k1,1n -k2,2n -k3,3n | cut -d' ' -f4)
  # Every server up at once (idle ones cost nothing), each on its own port.
  declare -A UP=()
  for cell in "${CELLS[@]}"; do
    s=$(server_of "${cell%@*}")
    [ -n "${UP[$s]+x}" ] && continue
    UP[$s]=1
    if [ "$s" = tsb ]; then
      start_tsb || exit 1
      sleep 2; rss_line "${SPID[tsb]}" "bench.toml after startup"
    elif [ "$s" = tsb0 ]; then
      [ -x "$TSB0" ] || { echo "tsb0 cells need TSB0=<tsbridge binary>" >&2; exit 1; }
      start_tsb0 || exit 1
    else
      start_peer "$s" || { echo "peer $s did not start" >&2; exit 1; }
    fi
  done
  echo "== servers: $(for s in "${!SPID[@]}"; do printf '%s=%s ' "$s" "${SPID[$s]}"; done)"
  # One check request per cell: fail loudly on a broken server instead of benchmarking errors.
  for cell in "${CELLS[@]}"; do
    printf '%s: ' "$cell"
    curl -s -m 30 -H 'content-type: application/json' -d "$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" post.lua)" \
      "$(url_of "${cell%@*}")" | head -c 300; echo
  done
  # Warm-up (pools, JIT, transpile cache), then REPEATS rounds over all cells:
  # interleaving spreads the load of this shared machine over every server alike.
  for cell in "${CELLS[@]}"; do wrk -t1 -c"${cell#*@}" -d3s --timeout 30s -s post.lua "$(url_of "${cell%@*}")" >/dev/null 2>&1; done
  for r in $(seq "$REPEATS"); do
    for cell in "${CELLS[@]}"; do printf '%s run %s: ' "$cell" "$r"; measure "$cell" "$r"; done
  done
  if [ -n "${SPID[tsb]+x}" ]; then sleep 2; rss_line "${SPID[tsb]}" "bench.toml after load"; fi
  stop_servers
fi
[ "$DO_RSS" = 1 ] && rss_example
python3 "$HERE/summarize.py" "$WRK_OUT"
