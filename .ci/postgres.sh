#!/usr/bin/env bash
# Install (Debian's packages), start on 127.0.0.1 and prepare a PostgreSQL server for the store's
# tests; prints the SQLAlchemy URL for AIVH_TEST_PG_URL on its last line. Safe to run again.
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v pg_lsclusters >/dev/null || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main"; then
  $SUDO pg_createcluster "$version" main >&2
fi
port=$(pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $3}')
pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -q online \
  || $SUDO pg_ctlcluster "$version" main start -o "-c listen_addresses=127.0.0.1" >&2
AS_PG="sudo -u postgres"; [ "$(id -u)" -ne 0 ] || AS_PG="runuser -u postgres --"
psql_() { $AS_PG psql -p "$port" -v ON_ERROR_STOP=1 -qtAc "$1"; }
[ "$(psql_ "SELECT 1 FROM pg_roles WHERE rolname='aivh'")" = 1 ] \
  || psql_ "CREATE ROLE aivh LOGIN PASSWORD 'aivh' CREATEDB"
[ "$(psql_ "SELECT 1 FROM pg_database WHERE datname='aivh_test'")" = 1 ] \
  || psql_ "CREATE DATABASE aivh_test OWNER aivh"
echo "postgresql+psycopg://aivh:aivh@127.0.0.1:$port/aivh_test"
