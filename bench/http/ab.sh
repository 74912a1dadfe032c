#!/usr/bin/env bash
# A/B two tsbridge builds on the pooled benchmark workflow, alternating runs
# (A B, B A, ...) so that a drift of the machine hits both alike.
#
# usage: bench/http/ab.sh BIN_A BIN_B [ROUNDS] [CONNS] [SECS]
#   BIN may be a wrapper script that execs tsbridge (e.g. to set an env var);
#   B_URL=<store url> gives B another store (e.g. sqlite::memory:, or a file
#   on tmpfs); B_NICE=N renices B's pool workers; B_SED=<sed expression>
#   edits B's config (e.g. 's/^concurrency = 4/concurrency = 8/').
# prints one line per run:
#   A|B c=CONNS rps=.. p99=.. server=.. workers=.. us/req idle=..%
# Needs wrk and curl; loopback ports 8831 and 8832; servers stopped on exit.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
A_BIN=$1; B_BIN=$2; ROUNDS=${3:-3}; C=${4:-16}; D=${5:-10}
W=$(mktemp -d /tmp/tsbridge-ab-XXXXXX)
CLEAN_ENV=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp LANG=C.UTF-8)
start() { # BIN PORT NAME
  local url="sqlite://$W/$3/bench.db"
  local edit=(-e 's/^$//')
  [ "$3" = b ] && [ -n "${B_URL:-}" ] && url=$B_URL
  [ "$3" = b ] && [ -n "${B_SED:-}" ] && edit=(-e "$B_SED")
  mkdir -p "$W/$3"
  sed -e "s|^bind = .*|bind = \"127.0.0.1:$2\"|" -e "s|^url = .*|url = \"$url\"|" \
    -e "s|^root = \".\"|root = \"$HERE\"|" "${edit[@]}" "$HERE/bench.toml" > "$W/$3/cfg.toml"
  "${CLEAN_ENV[@]}" "$1" serve --config "$W/$3/cfg.toml" > "$W/$3/log" 2>&1 &
  echo $!
}
PA=$(start "$A_BIN" 8831 a); PB=$(start "$B_BIN" 8832 b)
trap 'kill $PA $PB 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
for p in 8831 8832; do
  for _ in $(seq 240); do curl -sf "http://127.0.0.1:$p/readyz" >/dev/null && break; sleep 0.5; done
done
if [ -n "${B_NICE:-}" ]; then
  # The pool workers' host script lives in a TMPDIR named after the server's pid.
  for q in $(pgrep -f "tsbridge-$PB\\."); do renice -n "$B_NICE" -p "$q" >/dev/null; done
fi
U() { echo "http://127.0.0.1:$1/workflow/video-generation-pool/execute"; }
for p in 8831 8832; do wrk -t1 -c16 -d3s -s "$HERE/post.lua" "$(U $p)" > /dev/null; done
# shellcheck source=proc-cpu.sh
. "$HERE/proc-cpu.sh"
one() { # NAME PID PORT
  local name=$1 pid=$2 port=$3
  read -r _ u1 n1 s1 i1 w1 _ < /proc/stat
  local s0 k0; s0=$(ticks "$pid"); k0=$(kids "$pid")
  wrk -t1 -c"$C" -d"${D}s" --latency -s "$HERE/post.lua" "$(U "$port")" > "$W/wrk"
  read -r _ u2 n2 s2 i2 w2 _ < /proc/stat
  local s1_ k1; s1_=$(ticks "$pid"); k1=$(kids "$pid")
  local n; n=$(grep -o "[0-9]* requests in" "$W/wrk" | awk '{print $1}')
  local tk=$((1000000 / $(getconf CLK_TCK)))
  printf "%-4s c=%s rps=%s p99=%s server=%d workers=%d us/req idle=%d%%\n" "$name" "$C" \
    "$(awk '/Requests\/sec/ {print $2}' "$W/wrk")" "$(awk '$1 == "99%" {print $2}' "$W/wrk")" \
    $(( (s1_-s0)*tk/n )) $(( (k1-k0)*tk/n )) \
    $(( (i2-i1)*100/((u2+n2+s2+i2+w2)-(u1+n1+s1+i1+w1)) ))
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then one A "$PA" 8831; one B "$PB" 8832; else one B "$PB" 8832; one A "$PA" 8831; fi
done
