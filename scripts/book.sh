#!/usr/bin/env bash
# Builds the user guide (book/) with mdBook into target/book and fails on a broken link.
#
# mdBook comes from crates.io: if `mdbook` is not on PATH it is installed with
# `cargo install --locked` (a few minutes on 2 cores; later runs reuse it). The samples in the
# chapters are compiled and run by `cargo test --doc` (src/lib.rs includes every chapter), not
# here.
#
# The link check reads the rendered HTML: every relative link must name a file that exists
# and, if it has a #fragment, an element with that id in that file. External links (http:,
# https:, mailto:) are not followed. A chapter listed in SUMMARY.md but missing fails the build
# itself (create-missing = false in book.toml).
#
# Usage: scripts/book.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mdbook_version="0.5.4"
out="$repo/target/book"

log() { echo "book: $*" >&2; }

if ! command -v mdbook >/dev/null 2>&1; then
  log "mdbook not on PATH: installing mdbook $mdbook_version from crates.io"
  (cd "$repo" && cargo install mdbook --locked --version "$mdbook_version" \
    --no-default-features --features search)
fi
log "using $(mdbook --version)"

rm -rf "$out"
mdbook build "$repo/book"

# ids_cache[FILE]: every id="..." of FILE, one per line. Filled in this shell, not in a
# subshell, so it is computed once per file.
declare -A ids_cache=()
load_ids() {
  local file="$1"
  if [[ -z "${ids_cache[$file]+set}" ]]; then
    ids_cache[$file]="$(grep -o ' id="[^"]*"' "$file" | sed 's/^ id="//; s/"$//' || true)"
  fi
}

broken=0
checked=0
while IFS= read -r -d '' page; do
  rel_page="${page#"$out"/}"
  # 404.html resolves its links against the site's root URL, not its own location.
  [[ "$rel_page" == "404.html" ]] && continue
  dir="$(dirname "$page")"
  while IFS= read -r href; do
    case "$href" in
      http:* | https:* | mailto:* | javascript:* | data:*) continue ;;
    esac
    target_path="${href%%#*}"
    target_path="${target_path%%\?*}"
    fragment=""
    [[ "$href" == *#* ]] && fragment="${href#*#}"
    if [[ -z "$target_path" ]]; then
      target="$page"
    else
      target="$dir/$target_path"
    fi
    checked=$((checked + 1))
    if [[ -d "$target" ]]; then
      target="$target/index.html"
    fi
    if [[ ! -f "$target" ]]; then
      log "broken link in $rel_page: $href (no such file)"
      broken=$((broken + 1))
      continue
    fi
    if [[ -n "$fragment" && "$target" == *.html ]]; then
      load_ids "$target"
      if ! grep -qxF -- "$fragment" <<<"${ids_cache[$target]}"; then
        log "broken link in $rel_page: $href (no element with id \"$fragment\")"
        broken=$((broken + 1))
      fi
    fi
  done < <(grep -o 'href="[^"]*"' "$page" | sed 's/^href="//; s/"$//' | sed 's/&amp;/\&/g')
done < <(find "$out" -name '*.html' -print0)

if ((broken > 0)); then
  log "$broken broken link(s) out of $checked checked"
  exit 1
fi
log "built $out; $checked links checked, none broken"
