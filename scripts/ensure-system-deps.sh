#!/usr/bin/env bash
# Make sure the PostgreSQL server/client binaries and zstd exist (Debian/Ubuntu), and Chromium where it
# can be installed; no-op when present.
set -euo pipefail
need=()
command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] || need+=(postgresql postgresql-contrib)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
# the report's browser test renders report.html in headless Chromium (Debian's package); without it
# that one test is skipped and says so, so Chromium alone never stops a machine from testing
want=()
command -v chromium >/dev/null 2>&1 || want+=(chromium)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ $((${#need[@]} + ${#want[@]})) -gt 0 ]; then
  echo "installing ${need[*]} ${want[*]} ..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  if [ ${#want[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null || \
      echo "could not install ${want[*]}: the browser test of report.html will be skipped" >&2
  fi
  # Debian starts a cluster on install; migsafe starts its own throw-away clusters
  command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | \
    while read -r v c; do pg_ctlcluster "$v" "$c" stop || true; done
  exit 0
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "missing system packages: ${need[*]} (install them: apt-get install ${need[*]})" >&2
  exit 1
fi
if [ ${#want[@]} -gt 0 ]; then
  echo "chromium is missing: the browser test of report.html will be skipped (apt-get install chromium)" >&2
fi
