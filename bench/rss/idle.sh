#!/usr/bin/env bash
# Idle RSS of `tsbridge serve` (the server process alone, not its children).
#
#   bench/rss/idle.sh [TSBRIDGE] [CONFIG]
#   bench/rss/idle.sh target/release/tsbridge examples/omega-workflow/tsbridge.toml
#   bench/rss/idle.sh target/release/tsbridge bench/http/bench.toml
#
# Builds nothing. Starts `TSBRIDGE serve` on a copy of CONFIG written next to
# it (relative paths in a config are relative to its folder, so the copy
# resolves them as the original does) with a fresh store in a temporary
# directory and the bind below; waits for /readyz (ready, every workflow
# "available"), then for every pool workflow to have its `pool.min` workers
# idle (from /metrics), sleeps SETTLE seconds, prints VmRSS, RssAnon,
# RssFile, RssShmem (and VmHWM, threads) from /proc/PID/status, and stops
# the server (SIGTERM; SIGKILL after 10 s). One line on stdout, e.g.
#   VmRSS=21.0MiB RssAnon=2.9MiB RssFile=18.1MiB RssShmem=0.0MiB VmHWM=21.1MiB threads=9
#
# env: PORT (8796), SETTLE (3: seconds after the pools are warm),
#   SMAPS (a file: /proc/PID/smaps is copied there before the server stops),
#   LABEL (printed first on the line), TIMEOUT (120: seconds to wait for ready),
#   SERVER_ENV (extra NAME=VALUE words for the server's environment, e.g.
#   "MALLOC_ARENA_MAX=2 TSBRIDGE_LOG=warn").
# Needs: curl, python3 (3.11: tomllib), and what CONFIG's workflows need (for
# the example: `npm ci` in examples/omega-workflow and in the repository root,
# as `make setup` does). The server runs with a minimal environment
# (env -i PATH HOME LANG TSBRIDGE_TOKEN=dev-token), as `make run` would with
# TSBRIDGE_TOKEN set, and logs to $TMPDIR/.../server.log (kept on failure).
set -euo pipefail

TSB=${1:-target/release/tsbridge}
CONFIG=${2:-examples/omega-workflow/tsbridge.toml}
PORT=${PORT:-8796}
SETTLE=${SETTLE:-3}
TIMEOUT=${TIMEOUT:-120}
LABEL=${LABEL:-}

[ -x "$TSB" ] || { echo "idle.sh: $TSB is not an executable (build it first)" >&2; exit 2; }
[ -f "$CONFIG" ] || { echo "idle.sh: no config $CONFIG" >&2; exit 2; }
TSB=$(cd "$(dirname "$TSB")" && pwd)/$(basename "$TSB")
CONFIG_DIR=$(cd "$(dirname "$CONFIG")" && pwd)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tsbridge-rss.XXXXXX")
COPY=$CONFIG_DIR/.tsbridge-rss-$$.toml
PID=
cleanup() {
  local rc=$?
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -f "$COPY"
  if [ "$rc" -eq 0 ]; then rm -rf "$WORK"; else echo "idle.sh: failed; server log: $WORK/server.log" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The copy: the same config with its store in $WORK (a fresh database each run).
python3 - "$CONFIG" "$COPY" "$WORK/store.db" <<'EOF'
import re, sys
src, dst, db = sys.argv[1:]
text = open(src).read()
line = f'url = "sqlite://{db}"'
# The url key of the [store] table (up to the next table header).
m = re.search(r'(?ms)^\[store\][^\n]*\n(.*?)(?=^\[|\Z)', text)
if m is None:
    text += f'\n[store]\n{line}\n'
else:
    body, n = re.subn(r'(?m)^\s*url\s*=.*$', line, m.group(1), count=1)
    if n == 0:
        body = line + '\n' + body
    text = text[:m.start(1)] + body + text[m.end(1):]
open(dst, 'w').write(text)
EOF

env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="${HOME:-/tmp}" LANG=C.UTF-8 TSBRIDGE_TOKEN=dev-token \
  ${SERVER_ENV:-} "$TSB" serve --config "$COPY" --bind "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
PID=$!

AUTH=(-H "Authorization: Bearer dev-token")
# ready: /readyz says ready with every workflow available, and every pool
# workflow has at least its pool.min workers idle (none starting).
ready() {
  local readyz metrics
  readyz=$(curl -sf "${AUTH[@]}" "http://127.0.0.1:$PORT/readyz") || return 1
  metrics=$(curl -sf "${AUTH[@]}" "http://127.0.0.1:$PORT/metrics") || return 1
  python3 - "$COPY" "$readyz" "$metrics" <<'EOF'
import json, re, sys, tomllib
cfg = tomllib.load(open(sys.argv[1], 'rb'))
d = json.loads(sys.argv[2])["data"]
if not d["ready"] or any(v != "available" for v in d["workflows"].values()):
    sys.exit(1)
state = {}
for m in re.finditer(r'^tsbridge_pool_workers_by_state\{([^}]*)\} (\S+)$', sys.argv[3], re.M):
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    state[(labels.get("workflow"), labels.get("state"))] = float(m.group(2))
for name, wf in cfg.get("workflows", {}).items():
    if wf.get("mode") != "pool":
        continue
    want = wf.get("pool", {}).get("min", 1)
    if state.get((name, "idle"), 0) < want or state.get((name, "starting"), 0) > 0:
        sys.exit(1)
EOF
}
deadline=$((SECONDS + TIMEOUT))
until ready; do
  kill -0 "$PID" 2>/dev/null || { echo "idle.sh: the server exited" >&2; exit 1; }
  [ "$SECONDS" -lt "$deadline" ] || { echo "idle.sh: not ready after ${TIMEOUT}s" >&2; exit 1; }
  sleep 0.2
done
sleep "$SETTLE"

[ -z "${SMAPS:-}" ] || cp "/proc/$PID/smaps" "$SMAPS"
python3 - "$PID" "$LABEL" <<'EOF'
import sys
pid, label = sys.argv[1], sys.argv[2]
st = {}
for l in open(f'/proc/{pid}/status'):
    k, _, v = l.partition(':'); st[k] = v.strip()
mib = lambda k: f"{int(st[k].split()[0]) / 1024:.1f}MiB"
fields = [f"{k}={mib(k)}" for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")]
print(" ".join(([label] if label else []) + fields + [f"threads={st['Threads']}"]))
EOF
