#!/usr/bin/env bash
# Checks the operator files in server/deploy/ as far as this machine can: the alert
# rules (promtool check + unit tests), the dashboard (valid JSON; that it names only
# exported metrics is server/tests/deploy.rs), the systemd unit (systemd-analyze verify,
# with ExecStart pointed at the built binary), and the example configuration. The
# Containerfile cannot be built here (no container runtime): it is kept to a plain
# multi-stage build to check by eye.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian's prometheus)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else sudo apt-get update -qq >/dev/null && sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; fi
fi
promtool check rules tern-alerts.yml
promtool test rules tern-alerts.test.yml
python3 -m json.tool tern-dashboard.json >/dev/null && echo "tern-dashboard.json: valid JSON"
bin=$root/target/debug/tern-server
[ -x "$bin" ] || (cd "$root" && cargo build -p tern-server --quiet)
"$bin" --config ../tern.example.toml config check >/dev/null
echo "tern.example.toml: valid"
if command -v systemd-analyze >/dev/null 2>&1; then
  unit=$(mktemp -d)/tern.service
  sed "s|/usr/local/bin/tern-server|$bin|g" tern.service > "$unit"
  # Only the unit's own problems: the user `tern` need not exist on this machine.
  out=$(systemd-analyze verify "$unit" 2>&1 | grep -v -e "Failed to resolve user" -e "User and group" -e "is not executable" || true)
  if [ -n "$out" ]; then echo "$out"; echo "tern.service: systemd-analyze found problems" >&2; exit 1; fi
  echo "tern.service: systemd-analyze verify passed"
fi
