#!/usr/bin/env bash
# Runs every runnable example, one after another, against ONE server it starts, and fails if any
# fails: the examples must not collide on a shared server, as they would for a user with one
# local Redis. Each example keeps to a stream base of its own (`examples:<name>`) and starts it
# clean, so the whole list is run twice in a row on the same server, which proves that too.
# CI runs it with ASDLC_EXAMPLE_PROFILE=dev to reuse the test build.
#
# Usage: scripts/examples.sh [NAME...]   (default: quickstart multi_tenant crash_recovery dead_letters approval_gates)
#
# The other examples start servers of their own (bench, cluster_bench, soak: long, not run
# here) or run until stopped (chaos_worker).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
examples=("$@")
if ((${#examples[@]} == 0)); then
  examples=(quickstart multi_tenant crash_recovery dead_letters approval_gates)
fi

log() { echo "examples: $*" >&2; }

server="$("$repo/scripts/ensure-redis.sh")"

profile=(--release)
target_dir="$repo/target/release/examples"
if [[ "${ASDLC_EXAMPLE_PROFILE:-release}" == "dev" ]]; then
  profile=()
  target_dir="$repo/target/debug/examples"
fi

cd "$repo"
# Build all of them before starting the server, so it does not sit idle through a long compile.
build=()
for example in "${examples[@]}"; do
  build+=(--example "$example")
done
cargo build "${profile[@]}" "${build[@]}"

# shellcheck source=scripts/example-server.sh
source "$repo/scripts/example-server.sh"
start_server_in_target asdlc-examples
log "server $server on $REDIS_URL, for every example"

failed=()
for round in 1 2; do
  for example in "${examples[@]}"; do
    echo "==> example $example (round $round of 2, server $REDIS_URL)"
    if ! timeout 300 "$target_dir/$example"; then
      failed+=("$example (round $round)")
    fi
  done
done
if ((${#failed[@]})); then
  log "failed: ${failed[*]}"
  exit 1
fi
log "all ${#examples[@]} examples passed twice, one after another, against one server"
