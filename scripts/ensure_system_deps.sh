#!/usr/bin/env bash
# Installs what the tests start themselves (apt): redis-server (with redis-cli, for Redis
# Cluster), pgbouncer, PostgreSQL, prometheus (with promtool: `make observe`, `make lint`,
# the Prometheus tests), and for the browser tests (tests/web) Debian's chromium, its
# chromedriver and a CJK font.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

apt_install() {
  local package=$1
  shift
  echo "installing $package (apt)..."
  if ! as_root apt-get install -y -qq "$@" "$package" >/dev/null 2>&1; then
    as_root apt-get update -qq >/dev/null 2>&1 || true
    as_root apt-get install -y -qq "$@" "$package" >/dev/null 2>&1 || {
      echo "could not install $package: install it with 'apt-get install $package'" >&2
      exit 1
    }
  fi
}

command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 \
  || apt_install redis-server
# Debian's package has no binary in PATH for users: it lives in /usr/sbin.
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || apt_install pgbouncer
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
  || apt_install prometheus --no-install-recommends  # not its node exporter, smartmontools...

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "installing postgresql (apt)..."
  as_root apt-get install -y -qq postgresql >/dev/null 2>&1 || {
    echo "PostgreSQL is missing: install it with 'apt-get install postgresql'" >&2
    exit 1
  }
fi

# tests/web: headless chromium driven by Selenium; without a CJK font the Chinese pages
# render as boxes in the screenshots.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
fc-list 2>/dev/null | grep -qi "wqy\|noto sans cjk" || missing+=(fonts-wqy-microhei)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]} (apt)..."
  if ! as_root apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    as_root apt-get update -qq >/dev/null 2>&1 || true
    as_root apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
      echo "could not install ${missing[*]}: install them with apt-get" >&2
      exit 1
    }
  fi
fi
