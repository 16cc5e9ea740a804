#!/usr/bin/env bash
# Runs every test of the workspace (`cargo test --workspace --all-features`) against real servers.
#
# Usage: scripts/test.sh [CARGO TEST ARGS...]   e.g. scripts/test.sh -p asdlc-runtime -- recovery
#
# Gets a server binary (scripts/ensure-redis.sh) and exports it as ASDLC_REDIS_SERVER; each test
# then starts its own server on a free loopback port (asdlc_testing::TestServer).
# Gets headless Chromium and chromedriver (scripts/ensure-chromium.sh) and exports the driver as
# ASDLC_CHROMEDRIVER for the dashboard's browser test (asdlc-cli/tests/browser.rs), which starts
# its own chromedriver on a free loopback port.
# Nothing needs to be running beforehand, and nothing is left running afterwards.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ASDLC_REDIS_SERVER="$("$repo/scripts/ensure-redis.sh")"
export ASDLC_REDIS_SERVER
ASDLC_CHROMEDRIVER="$("$repo/scripts/ensure-chromium.sh")"
export ASDLC_CHROMEDRIVER

cd "$repo"
# --no-fail-fast: one failing test binary should not hide the results of the others.
exec cargo test --workspace --all-features --no-fail-fast "$@"
