# Sourced by the bench scripts: CPU clock ticks from /proc (multiply by
# 1000000 / $(getconf CLK_TCK) for microseconds).

# A process's own user + system ticks (0 if it is gone).
ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Its children's ticks, and what the children they reaped used.
kids() {
  local s=0 k
  for k in $(ps -o pid= --ppid "$1"); do
    s=$((s + $(awk '{print $14+$15+$16+$17}' "/proc/$k/stat" 2>/dev/null || echo 0)))
  done
  echo $s
}
