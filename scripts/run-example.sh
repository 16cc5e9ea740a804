#!/usr/bin/env bash
# Runs an example against a fresh server of its own (scripts/examples.sh runs them all against
# one server).
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

# shellcheck source=scripts/example-server.sh
source "$repo/scripts/example-server.sh"
start_server_in_target asdlc-example
log "server $server on $REDIS_URL"

status=0
cargo run "${profile[@]}" --example "$example" -- "$@" || status=$?
exit "$status"
