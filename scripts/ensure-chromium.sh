#!/usr/bin/env bash
# Makes sure headless Chromium and its WebDriver (chromedriver) are available and prints the
# chromedriver's path (the only thing printed on stdout; progress goes to stderr). The dashboard's
# browser test (asdlc-cli/tests/browser.rs) starts its own chromedriver on a free loopback port
# with it; nothing here starts a browser.
#
# Order:
#   1. $ASDLC_CHROMEDRIVER, if it names an executable (its browser: $ASDLC_CHROMIUM or
#      chromium on PATH);
#   2. chromedriver and chromium on PATH (/usr/bin from Debian's packages);
#   3. as root with apt-get: install Debian's `chromium` and `chromium-driver`;
#   4. otherwise: say what to install, and exit 1.
#
# Usage: driver="$(scripts/ensure-chromium.sh)"
set -euo pipefail

log() { echo "ensure-chromium: $*" >&2; }

# A binary counts only if it runs: a broken install or a leftover symlink does not.
usable() {
  [[ -n "$1" && -f "$1" && -x "$1" ]] && "$1" --version >/dev/null 2>&1
}

browser() {
  local path
  for path in "${ASDLC_CHROMIUM:-}" "$(command -v chromium 2>/dev/null || true)" /usr/bin/chromium; do
    if usable "$path"; then
      echo "$path"
      return 0
    fi
  done
  return 1
}

found() {
  local chromium
  chromium="$(browser)" || return 1
  log "using $1 ($("$1" --version 2>/dev/null | head -n 1)) with $chromium ($("$chromium" --version 2>/dev/null | head -n 1))"
  echo "$1"
  exit 0
}

if [[ -n "${ASDLC_CHROMEDRIVER:-}" ]]; then
  if usable "$ASDLC_CHROMEDRIVER"; then
    found "$ASDLC_CHROMEDRIVER" || log "ASDLC_CHROMEDRIVER is set but no chromium runs (set ASDLC_CHROMIUM)"
  else
    log "ASDLC_CHROMEDRIVER=$ASDLC_CHROMEDRIVER is not a runnable chromedriver; looking elsewhere"
  fi
fi

for path in "$(command -v chromedriver 2>/dev/null || true)" /usr/bin/chromedriver; do
  if usable "$path"; then
    found "$path" || true
  fi
done

if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  log "installing chromium and chromium-driver with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || log "apt-get update failed; trying the install anyway"
  if apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2; then
    for path in "$(command -v chromedriver 2>/dev/null || true)" /usr/bin/chromedriver; do
      if usable "$path"; then
        found "$path" || true
      fi
    done
  fi
  log "apt-get did not provide a runnable chromedriver and chromium"
fi

log "no chromedriver with a chromium beside it. Install Debian's packages (as root:"
log "apt-get install chromium chromium-driver), or set ASDLC_CHROMEDRIVER (and ASDLC_CHROMIUM)"
log "to the paths of a chromedriver and a matching Chromium."
exit 1
