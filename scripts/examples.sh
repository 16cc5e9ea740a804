#!/usr/bin/env bash
# Runs every runnable example, each against a fresh server, and fails if any fails.
# CI runs it with ASDLC_EXAMPLE_PROFILE=dev to reuse the test build.
#
# Usage: scripts/examples.sh [NAME...]   (default: quickstart multi_tenant crash_recovery dead_letters)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
examples=("$@")
if ((${#examples[@]} == 0)); then
  examples=(quickstart multi_tenant crash_recovery dead_letters)
fi
for example in "${examples[@]}"; do
  echo "==> example $example"
  timeout 300 "$repo/scripts/run-example.sh" "$example"
done
