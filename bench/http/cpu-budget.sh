#!/usr/bin/env bash
# Where the machine's CPU goes per pooled request, for tsbridge and the Node
# fork pool in the same run: the server process, its children (the warm
# workers), wrk itself, and the whole machine (/proc/stat; busy = all but
# idle and iowait), per request, alternating the two servers.
#
# usage: bench/http/cpu-budget.sh TSBRIDGE [ROUNDS] [PORT]
#   e.g. bench/http/cpu-budget.sh target/release/tsbridge 3 8811
# prints one line per run:
#   NAME c=CONNS rps=.. p50=.. p99=.. server=.. workers=.. wrk=.. machine_busy=.. us/req idle=..% iowait=..% load=..
# ROUNDS runs at 16 connections and ROUNDS-1 at 1 (10 s each) per server.
# Needs wrk, curl, GNU time (/usr/bin/time), node and the peers in $SEED
# (/tmp/node-seed, as for run.sh). Loopback only; servers stopped on exit.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TSB=$1; ROUNDS=${2:-3}; PORT=${3:-8811}; NODE_PORT=$((PORT + 2))
SEED=${SEED:-/tmp/node-seed}
W=$(mktemp -d /tmp/tsbridge-budget-XXXXXX)
CLEAN_ENV=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp LANG=C.UTF-8)
sed -e "s|^bind = .*|bind = \"127.0.0.1:$PORT\"|" -e "s|^url = .*|url = \"sqlite://$W/bench.db\"|" \
  -e "s|^root = \".\"|root = \"$HERE\"|" "$HERE/bench.toml" > "$W/cfg.toml"
"${CLEAN_ENV[@]}" "$TSB" serve --config "$W/cfg.toml" > "$W/tsb.log" 2>&1 &
A=$!
(cd "$SEED" && exec "${CLEAN_ENV[@]}" PORT="$NODE_PORT" node pool-server.js) > "$W/node.log" 2>&1 &
N=$!
trap 'kill $A $N 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
UA=http://127.0.0.1:$PORT/workflow/video-generation-pool/execute
UN=http://127.0.0.1:$NODE_PORT/workflow/video-generation/execute
for _ in $(seq 240); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.5; done
for _ in $(seq 240); do curl -sf -XPOST -H 'content-type: application/json' -d '{"parameters":{}}' "$UN" >/dev/null && break; sleep 0.5; done
for u in "$UA" "$UN"; do wrk -t1 -c16 -d3s -s "$HERE/post.lua" "$u" > /dev/null; done

# shellcheck source=budget-one.sh
. "$HERE/budget-one.sh"
for _ in $(seq "$ROUNDS"); do
  one tsbridge $A "$UA" 16; one fork4 $N "$UN" 16
done
for _ in $(seq $((ROUNDS - 1))); do
  one tsbridge $A "$UA" 1; one fork4 $N "$UN" 1
done
