#!/usr/bin/env bash
# The raw limit of pooled HTTP on this machine (BENCHMARKS.md "Raw limit of
# pooled HTTP", issue #5): in the same run, alternating, the Node fork pool,
# tsbridge (bench.toml's pooled workflow), and the minimal Rust server
# crates/tsbridge-runtime/examples/raw_pool_server.rs (the same 4 Node
# workers through tsbridge's worker host, axum, nothing else) without a store
# and with a SQLite store (one writer thread, group commit, WAL,
# synchronous = NORMAL), each at 2 and 1 tokio worker threads.
#
# usage: bench/http/raw-limit.sh TSBRIDGE RAW [ROUNDS] [PORT]
#   e.g. bench/http/raw-limit.sh target/release/tsbridge target/release/examples/raw_pool_server 3 8940
# env: SERVERS (which of fork4 tsbridge tsb-t1 raw raw-t1 rawsql rawsql-t1 to run; all by default)
# prints one line per run (budget-one.sh's `one`, CPU in microseconds per request):
#   NAME c=CONNS rps=.. p50=.. p99=.. server=.. workers=.. wrk=.. machine_busy=.. us/req idle=..% iowait=..% load=..
# then the summary (raw-limit-summary.py): medians, and each server's req/s
# over the fork pool's in the same round.
# ROUNDS rounds at 16 connections, then ROUNDS-1 (at least 1) at 1; 10 s per
# run; the order of the servers rotates by one each round. tsb-t1, raw-t1
# and rawsql-t1 run with 1 tokio worker thread (tsbridge: TOKIO_WORKER_THREADS=1).
# Needs wrk, curl, GNU time (/usr/bin/time), node, npm packages in the repo
# (tsx) and the peers in $SEED (/tmp/node-seed, as for run.sh). Loopback
# only; every server is stopped on exit.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TSB=$1; RAW=$2; ROUNDS=${3:-3}; PORT=${4:-8940}
SEED=${SEED:-/tmp/node-seed}
SERVERS=${SERVERS:-fork4 tsbridge tsb-t1 raw raw-t1 rawsql rawsql-t1}
W=$(mktemp -d /tmp/tsbridge-rawlimit-XXXXXX)
CLEAN_ENV=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp LANG=C.UTF-8)
declare -A PID URL
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT

tsb_cfg() { # PORT DIR
  mkdir -p "$2"
  sed -e "s|^bind = .*|bind = \"127.0.0.1:$1\"|" -e "s|^url = .*|url = \"sqlite://$2/bench.db\"|" \
    -e "s|^root = \".\"|root = \"$HERE\"|" "$HERE/bench.toml" > "$2/cfg.toml"
}
started() { # NAME PID URL
  PID[$1]=$2; URL[$1]=$3; PIDS+=("$2")
}
port=$PORT
for s in $SERVERS; do
  port=$((port + 1))
  if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
    echo "port $port is in use: pass another PORT (the servers take PORT+1..PORT+7)" >&2; exit 1
  fi
  pool=http://127.0.0.1:$port/workflow/video-generation-pool/execute
  case $s in
    fork4)
      (cd "$SEED" && exec "${CLEAN_ENV[@]}" PORT="$port" node pool-server.js) > "$W/$s.log" 2>&1 &
      started "$s" $! "http://127.0.0.1:$port/workflow/video-generation/execute" ;;
    tsbridge | tsb-t1)
      tsb_cfg "$port" "$W/$s"
      threads=(); [ "$s" = tsb-t1 ] && threads=(TOKIO_WORKER_THREADS=1)
      "${CLEAN_ENV[@]}" "${threads[@]}" "$TSB" serve --config "$W/$s/cfg.toml" > "$W/$s.log" 2>&1 &
      started "$s" $! "$pool" ;;
    raw | raw-t1 | rawsql | rawsql-t1)
      t=2; case $s in *-t1) t=1 ;; esac
      args=(--bind "127.0.0.1:$port" --root "$ROOT" --threads "$t")
      case $s in rawsql*) mkdir -p "$W/$s"; args+=(--store "sqlite:$W/$s/raw.db") ;; esac
      "${CLEAN_ENV[@]}" "$RAW" "${args[@]}" > "$W/$s.log" 2>&1 &
      started "$s" $! "$pool" ;;
    *) echo "unknown server $s" >&2; exit 2 ;;
  esac
done
BODY=$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$HERE/post.lua")
for s in $SERVERS; do
  ok=
  for _ in $(seq 240); do
    curl -sf -XPOST -H 'content-type: application/json' -d "$BODY" "${URL[$s]}" > "$W/check" && ok=1 && break
    sleep 0.5
  done
  if [ -z "$ok" ] || ! kill -0 "${PID[$s]}" 2> /dev/null; then
    echo "$s did not answer (or is not running); its log:" >&2; cat "$W/$s.log" >&2; exit 1
  fi
  echo "# $s: $(head -c 300 "$W/check")"
done
for s in $SERVERS; do wrk -t1 -c16 -d3s -s "$HERE/post.lua" "${URL[$s]}" > /dev/null; done
echo "# $(date -u +%FT%TZ) $(uname -r) nproc=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)"

# shellcheck source=budget-one.sh
. "$HERE/budget-one.sh"
read -r -a order <<< "$SERVERS"
round() { # CONNS ROUND
  local r=$2 n=${#order[@]} i
  echo "# round $r c=$1"
  for ((i = 0; i < n; i++)); do
    local s=${order[$(( (i + r) % n ))]}
    one "$s" "${PID[$s]}" "${URL[$s]}" "$1"
  done
}
{
  for r in $(seq "$ROUNDS"); do round 16 "$r"; done
  for r in $(seq $(( ROUNDS > 1 ? ROUNDS - 1 : 1 ))); do round 1 "$r"; done
} | tee "$W/lines"
python3 "$HERE/raw-limit-summary.py" "$W/lines"
