#!/usr/bin/env bash
# Installs the servers the tests start themselves: redis-server (apt) and checks PostgreSQL.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (apt)..."
  if ! as_root apt-get install -y -qq redis-server >/dev/null 2>&1; then
    as_root apt-get update -qq >/dev/null 2>&1 || true
    as_root apt-get install -y -qq redis-server >/dev/null 2>&1 || {
      echo "could not install redis-server: install it with 'apt-get install redis-server'" >&2
      exit 1
    }
  fi
fi

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "installing postgresql (apt)..."
  as_root apt-get install -y -qq postgresql >/dev/null 2>&1 || {
    echo "PostgreSQL is missing: install it with 'apt-get install postgresql'" >&2
    exit 1
  }
fi
