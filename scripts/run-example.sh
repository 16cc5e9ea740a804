#!/usr/bin/env bash
# Runs an example against a fresh server of its own.
#
# Usage: scripts/run-example.sh [NAME [ARGS...]]   (NAME defaults to quickstart)
#
# Gets a server binary (scripts/ensure-redis.sh), builds the example, starts the server on a free
# loopback port in a temporary directory under target/, runs
# `cargo run --release --example NAME -- ARGS...` with REDIS_URL pointing at it, stops the
# server on exit and exits with the example's status.
#
# ASDLC_EXAMPLE_PROFILE=dev builds and runs the example unoptimised instead (CI uses it to reuse
# the test build rather than compile everything again in release mode).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
example="${1:-quickstart}"
if (($#)); then shift; fi

log() { echo "run-example: $*" >&2; }

server="$("$repo/scripts/ensure-redis.sh")"

profile=(--release)
if [[ "${ASDLC_EXAMPLE_PROFILE:-release}" == "dev" ]]; then
  profile=()
fi

cd "$repo"
# Build before starting the server, so it does not sit idle through a long compile.
cargo build "${profile[@]}" --example "$example"

mkdir -p "$repo/target"
workdir="$(mktemp -d "$repo/target/asdlc-example.XXXXXX")"
server_pid=""

stop_server() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  stop_server
  rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Answers +PONG only once the server is up and has loaded its data (it answers -LOADING before).
# A subshell, so the descriptor is closed whatever happens.
ping_server() (
  exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
  printf 'PING\r\n' >&3
  reply=""
  read -r -t 1 reply <&3 || true
  [[ "$reply" == +PONG* ]]
) 2>/dev/null

port_in_use() ( exec 3<>"/dev/tcp/127.0.0.1/$1" ) 2>/dev/null

# Ports below the kernel's ephemeral range (32768 and up by default) are never taken by
# outgoing connections; one that is busy anyway makes the server exit, and another is tried.
start_server() {
  local attempt port
  for attempt in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 12000))
    if port_in_use "$port"; then
      continue
    fi
    "$server" --port "$port" --bind 127.0.0.1 --protected-mode no --daemonize no \
      --save "" --appendonly no --dir "$workdir" --logfile "$workdir/server.log" \
      >"$workdir/server.console" 2>&1 </dev/null &
    server_pid=$!
    for _ in $(seq 1000); do
      if ping_server "$port"; then
        REDIS_URL="redis://127.0.0.1:$port"
        return 0
      fi
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.01
    done
    log "the server did not start on port $port (attempt $attempt):"
    tail -n 20 "$workdir/server.console" "$workdir/server.log" >&2 2>/dev/null || true
    stop_server
  done
  log "could not start $server"
  return 1
}

start_server
export REDIS_URL
log "server $server on $REDIS_URL"

status=0
cargo run "${profile[@]}" --example "$example" -- "$@" || status=$?
exit "$status"
