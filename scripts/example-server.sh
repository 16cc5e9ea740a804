# Sourced by run-example.sh and examples.sh: starts and stops the one server the examples run
# against. Not a command of its own.
#
# Set `repo` (the checkout), `server` (the binary, from ensure-redis.sh) and a `log` function,
# then call `start_server_in_target NAME`: it makes `workdir`, a fresh directory under target/
# for the server's files, sets traps that stop the server and remove `workdir` on exit or on a
# signal, and starts the server. `start_server` sets `server_pid` and exports `REDIS_URL`;
# `stop_server` stops it (SIGTERM, then SIGKILL after 5 s).

server_pid=""
workdir=""

start_server_in_target() {
  mkdir -p "$repo/target"
  workdir="$(mktemp -d "$repo/target/$1.XXXXXX")"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  start_server
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  stop_server
  if [[ -n "$workdir" ]]; then
    rm -rf "$workdir"
  fi
}

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
        export REDIS_URL
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
