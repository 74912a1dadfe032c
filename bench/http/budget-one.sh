# Sourced by cpu-budget.sh and raw-limit.sh: one 10 s wrk run against a
# server, and where the machine's CPU went per request.
# Needs $W (a scratch directory) and $HERE (bench/http); sources proc-cpu.sh.
#
# one NAME PID URL CONNS prints
#   NAME c=CONNS rps=.. p50=.. p99=.. server=.. workers=.. wrk=.. machine_busy=.. us/req idle=..% iowait=..% load=..
# server = the process PID, workers = its children (and what they reaped),
# wrk = wrk's own user+system time, machine_busy = /proc/stat all but idle
# and iowait; all in CPU microseconds per request. load = the 1-minute load
# average at the end of the run.

# shellcheck source=proc-cpu.sh
. "$HERE/proc-cpu.sh"

one() { # NAME PID URL CONNS
  local name=$1 pid=$2 url=$3 c=$4
  read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ < /proc/stat
  local s0 k0; s0=$(ticks "$pid"); k0=$(kids "$pid")
  /usr/bin/time -f "%U %S" -o "$W/time" wrk -t1 -c"$c" -d10s --latency -s "$HERE/post.lua" "$url" > "$W/wrk"
  read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ < /proc/stat
  local s1_ k1; s1_=$(ticks "$pid"); k1=$(kids "$pid")
  local n; n=$(grep -o "[0-9]* requests in" "$W/wrk" | awk '{print $1}')
  local tk=$((1000000 / $(getconf CLK_TCK)))
  local wt; wt=$(awk '{printf "%d", ($1 + $2) * 1000000}' "$W/time")   # µs
  local tot=$(( (u2+n2+s2+i2+w2+q2+sq2+st2) - (u1+n1+s1+i1+w1+q1+sq1+st1) ))
  local busy=$(( tot - (i2-i1) - (w2-w1) ))
  printf "%-10s c=%s rps=%s p50=%s p99=%s server=%d workers=%d wrk=%d machine_busy=%d us/req idle=%d%% iowait=%d%% load=%s\n" \
    "$name" "$c" "$(awk '/Requests\/sec/ {print $2}' "$W/wrk")" \
    "$(awk '$1 == "50%" {print $2}' "$W/wrk")" "$(awk '$1 == "99%" {print $2}' "$W/wrk")" \
    $(( (s1_-s0)*tk/n )) $(( (k1-k0)*tk/n )) $(( wt/n )) $(( busy*tk/n )) \
    $(( (i2-i1)*100/tot )) $(( (w2-w1)*100/tot )) "$(cut -d' ' -f1 /proc/loadavg)"
  if grep -q "Non-2xx\|Socket errors" "$W/wrk"; then grep "Non-2xx\|Socket errors" "$W/wrk" | sed "s/^/  $name: /"; fi
}
