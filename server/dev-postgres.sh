#!/usr/bin/env bash
# Starts a local PostgreSQL for Tern (Debian's `postgresql`, started with pg_ctlcluster),
# installing it first if it is missing, and makes a role and a database `tern` that may
# create databases (the tests make a scratch database each). Prints the store URL.
#
#   bash server/dev-postgres.sh          # then: tern-server --dev --store "$(that URL)"
#   bash server/dev-postgres.sh stop     # stops the cluster again
#   bash server/dev-postgres.sh clean    # drops the tests' scratch databases (tern_t_*, tern_py_*, tern_kt_*)
#   bash server/dev-postgres.sh scratch tern_kt   # a new empty database tern_kt_<random>; prints its URL
#
# Runs as root or with sudo (installing and starting a cluster needs it).
set -euo pipefail
# Only the URL goes to standard output (callers capture it with $(...)); everything the
# installer, pg_ctlcluster or psql print goes to standard error.
exec 3>&1 1>&2
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -c "$1"; else sudo -u postgres sh -c "$1"; fi; }

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "== installing PostgreSQL (Debian's postgresql)" >&2
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 3>&-
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main"; then
  as_root pg_createcluster "$version" main 3>&-
fi
if [ "${1:-start}" = clean ]; then
  port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
  for db in $(as_postgres "psql -p $port -qtAc \"SELECT datname FROM pg_database WHERE datname ~ '^tern_(t|py|kt)_[0-9a-f]+\$'\""); do
    as_postgres "psql -p $port -qc 'DROP DATABASE $db'"
    echo "dropped $db" >&3
  done
  exit 0
fi
if [ "${1:-start}" = scratch ]; then
  port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
  db=${2:-tern_t}_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  as_postgres "createdb -p $port -O tern $db"
  echo "postgres://tern:tern@127.0.0.1:$port/$db?sslmode=disable" >&3
  exit 0
fi
if [ "${1:-start}" = stop ]; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main stop
  exit 0
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}' | grep -qx online; then
  # 3>&-: the server must not inherit the caller's capture pipe, or $(...) never ends.
  # -t 300: after an unclean stop the server first syncs its whole data directory, which
  # took longer than pg_ctl's default minute on a machine with many scratch databases.
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start -- -t 300 3>&-
fi
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 0.2
done
as_postgres "psql -p $port -qtAc \"SELECT 1 FROM pg_roles WHERE rolname = 'tern'\"" | grep -qx 1 ||
  as_postgres "psql -p $port -qc \"CREATE ROLE tern LOGIN CREATEDB PASSWORD 'tern'\""
as_postgres "psql -p $port -qtAc \"SELECT 1 FROM pg_database WHERE datname = 'tern'\"" | grep -qx 1 ||
  as_postgres "createdb -p $port -O tern tern"
echo "postgres://tern:tern@127.0.0.1:$port/tern?sslmode=disable" >&3
