#!/usr/bin/env bash
# deps.sh - installs the Debian packages the build, the tests and `make run` need, skipping
# those already present. Runs as root on a fresh Debian 12 (no sudo, no systemd needed).
set -euo pipefail

PKGS=(
    build-essential clang libclang-rt-14-dev pkg-config
    libmicrohttpd-dev libjansson-dev libsqlite3-dev sqlite3 libpq-dev libcurl4-openssl-dev
    libssl-dev libcmocka-dev libargon2-dev liboath-dev libcrypt-dev
    postgresql postgresql-client
    python3 python3-jwt python3-cryptography python3-prometheus-client
    python3-pyotp python3-passlib python3-bcrypt python3-yaml
    libnats-dev nats-server libhiredis-dev redis-server prometheus slowhttptest
    wrk nginx curl procps docker-compose
)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/gravity-apt.log 2>&1; then
        apt-get update >>/tmp/gravity-apt.log 2>&1
        apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/gravity-apt.log 2>&1 ||
            { echo "deps: apt-get failed, see /tmp/gravity-apt.log" >&2; tail -20 /tmp/gravity-apt.log >&2; exit 1; }
    fi
    echo "deps: done" >&2
fi

# node and npm (test doubles from npm, e.g. oauth2-mock-server): Debian's, unless a node with
# npm is already there (any origin).
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "deps: installing nodejs npm" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends nodejs npm >>/tmp/gravity-apt.log 2>&1 ||
        { apt-get update >>/tmp/gravity-apt.log 2>&1 &&
          apt-get install -y --no-install-recommends nodejs npm >>/tmp/gravity-apt.log 2>&1; } ||
        { echo "deps: apt-get failed for nodejs npm, see /tmp/gravity-apt.log" >&2; exit 1; }
fi
