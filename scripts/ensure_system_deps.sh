#!/usr/bin/env bash
# Installs the servers the tests start themselves (apt): redis-server (with redis-cli, for
# Redis Cluster), pgbouncer, and checks PostgreSQL.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

apt_install() {
  local package=$1
  echo "installing $package (apt)..."
  if ! as_root apt-get install -y -qq "$package" >/dev/null 2>&1; then
    as_root apt-get update -qq >/dev/null 2>&1 || true
    as_root apt-get install -y -qq "$package" >/dev/null 2>&1 || {
      echo "could not install $package: install it with 'apt-get install $package'" >&2
      exit 1
    }
  fi
}

command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 \
  || apt_install redis-server
# Debian's package has no binary in PATH for users: it lives in /usr/sbin.
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || apt_install pgbouncer

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "installing postgresql (apt)..."
  as_root apt-get install -y -qq postgresql >/dev/null 2>&1 || {
    echo "PostgreSQL is missing: install it with 'apt-get install postgresql'" >&2
    exit 1
  }
fi
