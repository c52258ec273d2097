#!/usr/bin/env bash
# Make sure the PostgreSQL server/client binaries, zstd and chromium exist (Debian/Ubuntu); no-op when present.
set -euo pipefail
need=()
command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] || need+=(postgresql postgresql-contrib)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
# the report's browser test renders report.html in headless Chromium (Debian's package)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} ..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    # Debian starts a cluster on install; migsafe starts its own throw-away clusters
    command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | \
      while read -r v c; do pg_ctlcluster "$v" "$c" stop || true; done
  else
    echo "missing system packages: ${need[*]} (install them: apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
